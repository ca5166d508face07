"""Public tests of module 02 (RoPE). Run: pytest exercises/02_rope

These check the essentials quickly; the grader's hidden tests check more (head sizes, bases, dtypes,
long positions, transformers' LlamaRotaryEmbedding as the oracle). Read docs/02_rope.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, expect, tolerance_for


def angles_float64(positions, head_dim, base=10000.0):
    """positions * base ** (-2i / head_dim) in float64, repeated twice: cat([angles, angles])."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.double()[..., None] * inv_freq
    return torch.cat([angles, angles], dim=-1)


def rotate_float64(x, angles):
    """Each pair (x[j], x[j + d/2]) turned by its angle, in float64: (a cos - b sin, b cos + a sin)."""
    x = x.double()
    a, b = x.chunk(2, dim=-1)
    t = angles.chunk(2, dim=-1)[0]
    return torch.cat([a * t.cos() - b * t.sin(), b * t.cos() + a * t.sin()], dim=-1)


def test_inv_freq_values(impl):
    """rope_inv_freq(8) is 10000 ** (-2i/8) for i = 0..3, i.e. [1, 0.1, 0.01, 0.001], in float32."""
    mistakes = {
        "the exponent is i/head_dim; it should be 2i/head_dim (i counts pairs)": 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 8),
        "the exponent has the wrong sign": 10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8),
    }
    expected = torch.tensor([1.0, 0.1, 0.01, 0.001], dtype=torch.float64)
    assert_close(impl.rope_inv_freq(8), expected, what="rope_inv_freq(8)", dtype=torch.float32, mistakes=mistakes)
    assert_close(impl.rope_inv_freq(4, base=100.0), torch.tensor([1.0, 0.1], dtype=torch.float64), what="rope_inv_freq(4, base=100)", dtype=torch.float32)


def test_odd_head_dim_is_rejected(impl):
    """rope_inv_freq(7) raises ValueError: RoPE rotates pairs of coordinates."""
    assert_raises(ValueError, impl.rope_inv_freq, 7, when="for rope_inv_freq(7)")


def test_cos_sin_tables(impl):
    """rope_cos_sin gives cos and sin of positions * inv_freq, laid out as cat([angles, angles])."""
    positions = torch.arange(6)
    cos, sin = impl.rope_cos_sin(positions, 8)
    angles = angles_float64(positions, 8)
    mistakes = {
        "the angles are interleaved (f0 f0 f1 f1 ...), the GPT-J layout: use cat([angles, angles])": angles_float64(positions, 8)[:, :4].repeat_interleave(2, -1).cos(),
        "cos and sin are swapped": angles.sin(),
    }
    assert_close(cos, angles.cos(), what="cos of rope_cos_sin(arange(6), 8)", dtype=torch.float32, mistakes=mistakes)
    assert_close(sin, angles.sin(), what="sin of rope_cos_sin(arange(6), 8)", dtype=torch.float32)


def test_cos_sin_use_the_given_positions(impl):
    """Positions need not start at 0, and may be batched (batch, seq): tables follow positions.shape + (head_dim,)."""
    positions = torch.tensor([[5, 6, 7], [40, 41, 42]])
    cos, sin = impl.rope_cos_sin(positions, 16, base=500000.0)
    angles = angles_float64(positions, 16, base=500000.0)
    mistakes = {"the positions are off by one": angles_float64(positions + 1, 16, 500000.0).cos()}
    assert_close(cos, angles.cos(), what="cos of rope_cos_sin for batched positions", dtype=torch.float32, mistakes=mistakes)
    assert_close(sin, angles.sin(), what="sin of rope_cos_sin for batched positions", dtype=torch.float32)


def test_apply_rope_rotates_pairs(impl):
    """apply_rope turns each pair (x[j], x[j + d/2]) by its angle: x * cos + rotate_half(x) * sin."""
    positions = torch.arange(3, 8)
    x = torch.randn(2, 3, 5, 8)
    angles = angles_float64(positions, 8)
    cos, sin = angles.cos().float(), angles.sin().float()
    x64 = x.double()
    mistakes = {
        "the rotation goes backwards: rotate_half(x) is cat([-x2, x1]), the minus on the second half": rotate_float64(x, -angles),
        "the pairs are neighbours (x[2j], x[2j+1]), GPT-J's layout; here pair j is (x[j], x[j + d/2])": x64 * angles.cos()
        + torch.stack([-x64[..., 1::2], x64[..., ::2]], dim=-1).flatten(-2) * angles.sin(),
    }
    assert_close(impl.apply_rope(x, cos, sin), rotate_float64(x, angles), what="apply_rope(x, cos, sin)", dtype=torch.float32, mistakes=mistakes)


def test_position_zero_changes_nothing(impl):
    """At position 0 all angles are 0, so apply_rope returns x unchanged."""
    x = torch.randn(1, 2, 1, 16)
    cos, sin = impl.rope_cos_sin(torch.zeros(1, dtype=torch.long), 16)
    assert_close(impl.apply_rope(x, cos, sin), x, what="apply_rope at position 0")


def test_scores_depend_on_distance_only(impl):
    """q.k after RoPE is the same for positions (m, n) and (m + 20, n + 20): only m - n matters."""
    q, k = torch.randn(1, 1, 4, 32), torch.randn(1, 1, 4, 32)

    def scores(start):
        cos, sin = impl.rope_cos_sin(torch.arange(start, start + 4), 32)
        return impl.apply_rope(q, cos, sin) @ impl.apply_rope(k, cos, sin).transpose(-1, -2)

    # A small shift: float32 rounds an angle near p radians by up to p * 2**-24, so far larger shifts would
    # need a tolerance of their own (the hidden suite derives one).
    assert_close(scores(20), scores(0).double(), what="rotated q.k scores at positions 20..23 against 0..3", dtype=torch.float32)


def test_keeps_the_input_dtype(impl):
    """A bfloat16 x comes back bfloat16 (the float32 tables must not promote the result), with batched tables."""
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    x = torch.randn(2, 4, 4, 16).to(torch.bfloat16)
    cos, sin = impl.rope_cos_sin(positions, 16)
    angles = angles_float64(positions, 16)[:, None]  # (batch, 1, seq, d): one table per batch row, shared by the heads
    assert_close(impl.apply_rope(x, cos, sin), rotate_float64(x, angles), what="apply_rope of bfloat16 x", dtype=torch.bfloat16)


def test_long_positions_keep_their_precision(impl):
    """At positions in the thousands the tables still match float64: positions are not rounded to a low precision."""
    positions = torch.tensor([1000, 2047, 4093])
    cos, sin = impl.rope_cos_sin(positions, 8)
    angles = angles_float64(positions, 8)
    # A float32 angle of about 4000 radians is only known to 4000 float32 steps: the tolerance grows with it.
    tol = tolerance_for(torch.float32).scaled(4093)
    bf16 = angles_float64(positions.to(torch.bfloat16), 8)
    assert_close(cos, angles.cos(), what="cos at positions 1000, 2047, 4093", dtype=torch.float32, tol=tol,
                 mistakes={"the positions were cast to bfloat16 (integers above 256 get rounded): keep them in float32": bf16.cos()})
    assert_close(sin, angles.sin(), what="sin at positions 1000, 2047, 4093", dtype=torch.float32, tol=tol)


def test_gradient_flows_back_to_x(impl):
    """apply_rope is differentiable in x: the gradient of sum(apply_rope(x) * g) is the inverse rotation of g."""
    x = torch.randn(1, 2, 4, 8, requires_grad=True)
    positions = torch.arange(4)
    cos, sin = impl.rope_cos_sin(positions, 8)
    g = torch.randn(1, 2, 4, 8)
    out = impl.apply_rope(x, cos, sin)
    expect(out.requires_grad, "apply_rope(x) does not require grad although x does: did you detach x (or use .data)?")
    out.backward(g)
    expect(x.grad is not None, "no gradient reached x through apply_rope: did you detach x?")
    assert_close(x.grad, rotate_float64(g, -angles_float64(positions, 8)), what="the gradient of apply_rope with respect to x", dtype=torch.float32)
