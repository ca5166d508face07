"""Hidden suite of module 02 (RoPE): transformers' LlamaRotaryEmbedding and apply_rotary_pos_emb are the
oracle, the formulas in float64 the truth.

Run: pytest grader/hidden/02_rope --impl solutions   (or --impl path/to/submission)

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call, so nothing the learner's code could find in memory holds the answer yet.
"""

import math

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, tolerance_for
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BASES = [10000.0, 500000.0, 1000000.0]  # Llama 2, Llama 3, Qwen 2
U = 2.0**-24  # unit roundoff of float32


# ---------------------------------------------------------------------------------------------------
# Truths, oracles, and the error a correct float32 implementation may make


def inv_freq_truth(head_dim, base):
    """base ** (-2i / head_dim) in float64."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def angles_truth(positions, head_dim, base):
    """The angles positions * inv_freq in float64, repeated twice along the last dimension (rotate-half layout)."""
    angles = positions.detach().cpu().double()[..., None] * inv_freq_truth(head_dim, base)
    return torch.cat([angles, angles], dim=-1)


def angle_error_bound(angles, base):
    """How far a *correct* float32 computation of each angle may be from the float64 truth, in radians.

    Derivation (u = 2**-24, one float32 rounding). Computing inv_freq[i] = base**(-x), x = 2i/d:
    rounding x (error x*u) moves the power by the factor exp(ln(base) * x * u), a relative error of at most
    ln(base)*u; an implementation that goes through exp(-x * ln(base)) also rounds ln(base) and the product,
    for up to 3*ln(base)*u in all; the power or exp itself and a reciprocal (1 / base**x, as transformers
    does) add a few u, say 4u. The angle p * inv_freq is rounded once more: u. So every angle is within
    |angle| * (3 ln(base) + 5) u of the truth: the last-bit differences of inv_freq grow with the position
    (about 0.02 rad at position 100000 with base 500000). cos and sin are 1-Lipschitz, so the tables carry
    that error too; a rotated vector (a, b) carries it times its length sqrt(a**2 + b**2).
    """
    return angles.abs() * (3 * math.log(base) + 5) * U


def assert_close_with_slack(actual, expected, slack, *, what, dtype, mistakes=None):
    """Like assert_close, but each element may also differ from `expected` by its own `slack` (a derived bound).

    `expected` is moved towards `actual` by at most `slack` before the ordinary dtype tolerance applies, so a
    failure reports the nearest value that would have been accepted.
    """
    assert_shape(actual, tuple(expected.shape), what=what)
    expected = expected.detach().cpu().double()
    got = actual.detach().cpu().double()
    slack = slack.cpu().double().expand_as(expected)
    allowed = expected + torch.maximum(torch.minimum(torch.nan_to_num(got - expected), slack), -slack)
    assert_close(actual, allowed.to(actual.device), what=what, dtype=dtype, mistakes=mistakes)


def llama_rotary_embedding(head_dim, base, device):
    """transformers' LlamaRotaryEmbedding for a tiny config (random model weights are never built)."""
    config = LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    return LlamaRotaryEmbedding(config).to(device)


def llama_cos_sin(positions, head_dim, base, dtype=torch.float32):
    """LlamaRotaryEmbedding's (cos, sin) for `positions` of shape (seq,) or (batch, seq), cast to `dtype` as it does."""
    rope = llama_rotary_embedding(head_dim, base, positions.device)
    probe = torch.empty(0, dtype=dtype, device=positions.device)  # forward only reads its dtype and device
    if positions.dim() == 1:
        cos, sin = rope(probe, positions[None])
        return cos[0], sin[0]
    return rope(probe, positions)


def llama_apply(x, cos, sin):
    """apply_rotary_pos_emb on x (as the query), tables (seq, d) or (batch, seq, d) in x's dtype, as Llama calls it."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    out, _ = apply_rotary_pos_emb(x, x, cos.to(x.dtype), sin.to(x.dtype))
    return out


def rotate_truth(x, angles, sign=1.0, layout="half"):
    """x rotated by `angles` (float64 truth, rotate-half layout); sign=-1 rotates backwards; layout="pairs" pairs neighbours."""
    x = x.detach().cpu().double()
    if angles.dim() == 3:
        angles = angles[:, None]
    cos, sin = angles.cos(), sign * angles.sin()
    if layout == "half":
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
    else:
        rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def pair_norms(x):
    """Length of each rotate-half pair (x[j], x[j + d/2]), repeated on both coordinates of the pair: (..., d)."""
    x1, x2 = x.detach().cpu().double().chunk(2, dim=-1)
    norms = (x1**2 + x2**2).sqrt()
    return torch.cat([norms, norms], dim=-1)


def table_mistakes(positions, head_dim, base):
    """Tables that known mistakes produce, to name them when a result matches one."""
    p = positions.detach().cpu().double()[..., None]
    f = inv_freq_truth(head_dim, base)
    good = torch.cat([p * f, p * f], dim=-1)
    return {
        "the angles are interleaved (repeat_interleave, f0 f0 f1 f1 ...): that is the GPT-J layout; "
        "the rotate-half layout repeats the whole block, cat([angles, angles])": (p * f).repeat_interleave(2, dim=-1).cos(),
        "cos and sin are swapped": good.sin(),
        "the positions are off by one": torch.cat([(p + 1) * f, (p + 1) * f], dim=-1).cos(),
        "the exponent is i/head_dim; it should be 2i/head_dim (i counts pairs)": torch.cat([p * base ** (-torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)] * 2, dim=-1).cos(),
        "the tables ignore the position values (you used 0, 1, 2, ... instead of `positions`)": torch.cat(
            [torch.arange(p.shape[-2], dtype=torch.float64)[:, None] * f] * 2, dim=-1
        ).expand_as(good).cos(),
        "the angles were computed in float16 or bfloat16: long positions drift by whole radians; compute them in float32": lambda out: False,
    }


def rotation_mistakes(x, angles):
    """Outputs of apply_rope mistakes, to name them when a result matches one."""
    return {
        "the pairs are neighbours (x[2j], x[2j+1]), GPT-J's interleaved layout; here pair j is (x[j], x[j + d/2])": rotate_truth(x, angles, layout="pairs"),
        "the rotation goes the wrong way: rotate_half(x) is cat([-x2, x1]), with the minus on the second half": rotate_truth(x, angles, sign=-1.0),
        "cos and sin are swapped: x * cos + rotate_half(x) * sin": rotate_truth(x, math.pi / 2 - angles),
    }


def random_positions(shape, start, device):
    """Increasing positions from `start` (batched: each row has its own start, as with left padding or decoding)."""
    seq = shape[-1]
    positions = torch.arange(seq) + start
    if len(shape) == 2:
        positions = positions + torch.randint(0, 50, (shape[0], 1))
    return positions.to(device)


# ---------------------------------------------------------------------------------------------------
# rope_inv_freq


@pytest.mark.points(2)
@pytest.mark.parametrize("base", BASES, ids=lambda b: f"base{b:g}")
@pytest.mark.parametrize("head_dim", [2, 16, 48, 64, 128, 256])
def test_inv_freq_matches_llama(impl, head_dim, base):
    """rope_inv_freq(head_dim, base) is base ** (-2i/head_dim), float32, as LlamaRotaryEmbedding's inv_freq, for several sizes and bases."""
    inv_freq = impl.rope_inv_freq(head_dim, base)
    what = f"rope_inv_freq({head_dim}, base={base:g})"
    truth = inv_freq_truth(head_dim, base)
    mistakes = {
        "the exponent is i/head_dim; it should be 2i/head_dim (i counts pairs)": base ** (-torch.arange(head_dim // 2, dtype=torch.float64) / head_dim),
        "the exponent has the wrong sign: frequencies must fall from 1 towards 1/base": base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim),
        "inv_freq was computed in half precision; use float32": lambda out: bool(((out - truth) / truth).abs().max() > 1e-4),
    }
    assert_close(inv_freq, truth, what=what, dtype=torch.float32, mistakes=mistakes)
    assert_close(inv_freq, llama_rotary_embedding(head_dim, base, "cpu").inv_freq, what=f"{what} against LlamaRotaryEmbedding.inv_freq")


@pytest.mark.points(1)
def test_inv_freq_default_base_is_10000(impl):
    """Called without base, rope_inv_freq uses 10000 (the original Transformer's and Llama 2's)."""
    inv_freq = impl.rope_inv_freq(64)
    assert_close(inv_freq, inv_freq_truth(64, 10000.0), what="rope_inv_freq(64)", dtype=torch.float32)


@pytest.mark.points(2)
@pytest.mark.parametrize("head_dim", [1, 7, 63])
def test_odd_head_dim_is_rejected(impl, head_dim):
    """An odd head_dim raises ValueError in rope_inv_freq and in rope_cos_sin: coordinates come in pairs."""
    assert_raises(ValueError, impl.rope_inv_freq, head_dim, when=f"for rope_inv_freq({head_dim})")
    assert_raises(ValueError, impl.rope_cos_sin, torch.arange(4), head_dim, when=f"for rope_cos_sin(positions, {head_dim})")


# ---------------------------------------------------------------------------------------------------
# rope_cos_sin


POSITION_CASES = {
    "from0": ((12,), 0),
    "from37": ((9,), 37),  # decoding: the new tokens sit after the cache
    "batched": ((3, 7), 5),  # each row starts elsewhere
}


@pytest.mark.points(4)
@pytest.mark.parametrize("case", list(POSITION_CASES))
@pytest.mark.parametrize("base", [10000.0, 500000.0], ids=lambda b: f"base{b:g}")
@pytest.mark.parametrize("head_dim", [16, 64, 96, 128])
def test_cos_sin_match_llama_rotary_embedding(impl, device, head_dim, base, case):
    """rope_cos_sin equals LlamaRotaryEmbedding's (cos, sin) for positions from 0, from an offset, and batched."""
    shape, start = POSITION_CASES[case]
    positions = random_positions(shape, start, device)
    cos, sin = impl.rope_cos_sin(positions.clone(), head_dim, base)
    angles = angles_truth(positions, head_dim, base)
    slack = angle_error_bound(angles, base)
    what = f"rope_cos_sin(positions of shape {shape}, head_dim={head_dim}, base={base:g})"
    mistakes = table_mistakes(positions, head_dim, base)
    assert_close_with_slack(cos, angles.cos(), slack, what=f"cos of {what}", dtype=torch.float32, mistakes=mistakes)
    assert_close_with_slack(sin, angles.sin(), slack, what=f"sin of {what}", dtype=torch.float32)
    llama_cos, llama_sin = llama_cos_sin(positions, head_dim, base)
    assert_close_with_slack(cos, llama_cos, 2 * slack, what=f"cos of {what} against LlamaRotaryEmbedding", dtype=torch.float32)
    assert_close_with_slack(sin, llama_sin, 2 * slack, what=f"sin of {what} against LlamaRotaryEmbedding", dtype=torch.float32)


@pytest.mark.points(3)
@pytest.mark.parametrize("base", [10000.0, 500000.0], ids=lambda b: f"base{b:g}")
def test_cos_sin_at_long_positions(impl, device, base):
    """At positions up to 131071 (long contexts) the tables stay within float32 rounding of the angles: no drift."""
    positions = torch.tensor([0, 1, 255, 256, 257, 1000, 2047, 2049, 4095, 8191, 32767, 65537, 131071], device=device)
    cos, sin = impl.rope_cos_sin(positions.clone(), 128, base)
    angles = angles_truth(positions, 128, base)
    slack = angle_error_bound(angles, base)
    mistakes = table_mistakes(positions, 128, base)
    assert_close_with_slack(cos, angles.cos(), slack, what=f"cos of rope_cos_sin at long positions (base={base:g})", dtype=torch.float32, mistakes=mistakes)
    assert_close_with_slack(sin, angles.sin(), slack, what=f"sin of rope_cos_sin at long positions (base={base:g})", dtype=torch.float32, mistakes=mistakes)
    llama_cos, llama_sin = llama_cos_sin(positions, 128, base)
    assert_close_with_slack(cos, llama_cos, 2 * slack, what="cos at long positions against LlamaRotaryEmbedding", dtype=torch.float32)
    assert_close_with_slack(sin, llama_sin, 2 * slack, what="sin at long positions against LlamaRotaryEmbedding", dtype=torch.float32)


@pytest.mark.points(1)
@pytest.mark.parametrize("int_dtype", [torch.int32, torch.int64], ids=str)
def test_cos_sin_shape_dtype_and_device(impl, device, int_dtype):
    """Tables have shape positions.shape + (head_dim,), dtype float32, and live on the positions' device."""
    for shape in [(6,), (2, 6)]:
        positions = torch.arange(6, dtype=int_dtype, device=device).expand(shape).contiguous()
        cos, sin = impl.rope_cos_sin(positions.clone(), 32)
        angles = angles_truth(positions, 32, 10000.0)
        for name, table, truth in (("cos", cos, angles.cos()), ("sin", sin, angles.sin())):
            assert table.device.type == device.type, f"{name} is on {table.device} but positions are on {device}: build inv_freq on positions.device"
            assert_close(table, truth, what=f"{name} of rope_cos_sin for {int_dtype} positions of shape {shape}", dtype=torch.float32)


@pytest.mark.points(1)
def test_cos_sin_default_base_is_10000(impl, device):
    """Called without base, rope_cos_sin uses 10000."""
    positions = torch.arange(20, device=device)
    cos, _ = impl.rope_cos_sin(positions.clone(), 32)
    assert_close(cos, angles_truth(positions, 32, 10000.0).cos(), what="cos of rope_cos_sin(positions, 32)", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# apply_rope


@pytest.mark.points(4)
@pytest.mark.parametrize("batched", [False, True], ids=["tables2d", "tables3d"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [32, 128])
def test_apply_rope_matches_llama(impl, device, head_dim, dtype, batched):
    """apply_rope(x, cos, sin) equals apply_rotary_pos_emb with LlamaRotaryEmbedding's tables, in x's dtype."""
    batch, heads, seq, base = 2, 3, 10, 500000.0
    positions = random_positions((batch, seq) if batched else (seq,), 17, device)
    x = torch.randn(batch, heads, seq, head_dim).to(device=device, dtype=dtype)
    cos, sin = llama_cos_sin(positions, head_dim, base)  # float32 tables, laid out as rope_cos_sin makes them
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    angles = angles_truth(positions, head_dim, base)
    what = f"apply_rope for {dtype} x of shape {tuple(x.shape)} and tables of shape {tuple(cos.shape)}"
    slack = pair_norms(x) * angle_error_bound(angles if not batched else angles[:, None], base)
    assert_close_with_slack(out, llama_apply(x, cos, sin), 2 * slack, what=what, dtype=dtype, mistakes=rotation_mistakes(x, angles))
    assert_close_with_slack(out, rotate_truth(x, angles), slack, what=f"{what} against the float64 rotation", dtype=dtype)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_end_to_end_matches_llama(impl, device, dtype):
    """rope_cos_sin then apply_rope gives Llama's rotated queries, positions starting mid-sequence."""
    head_dim, base = 64, 500000.0
    positions = torch.arange(300, 316, device=device)
    x = torch.randn(1, 4, 16, head_dim).to(device=device, dtype=dtype)
    cos, sin = impl.rope_cos_sin(positions.clone(), head_dim, base)
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    angles = angles_truth(positions, head_dim, base)
    slack = pair_norms(x) * angle_error_bound(angles, base)
    llama_cos, llama_sin = llama_cos_sin(positions, head_dim, base, dtype)
    assert_close_with_slack(out, llama_apply(x, llama_cos, llama_sin), 2 * slack, what=f"apply_rope(x, *rope_cos_sin(...)) for {dtype} x", dtype=dtype, mistakes=rotation_mistakes(x, angles))


@pytest.mark.points(2)
def test_batched_tables_broadcast_over_heads(impl, device):
    """Tables of shape (batch, seq, head_dim) apply to every head of their own batch row (here batch == heads)."""
    batch = heads = 3
    positions = torch.stack([torch.arange(8) + start for start in (0, 40, 900)]).to(device)
    x = torch.randn(batch, heads, 8, 64, device=device)
    cos, sin = llama_cos_sin(positions, 64, 10000.0)  # the inputs: tables laid out as rope_cos_sin makes them
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    angles = angles_truth(positions, 64, 10000.0)
    slack = pair_norms(x) * angle_error_bound(angles[:, None], 10000.0)
    # without the heads dimension, (batch, seq, d) broadcasts as (1, batch, seq, d): head h gets batch row h's angles
    mistakes = {
        "the batched tables were not given a heads dimension: (batch, seq, d) must become (batch, 1, seq, d) "
        "before they broadcast against (batch, heads, seq, d)": rotate_truth(x, angles[None]),
    }
    assert_close_with_slack(out, rotate_truth(x, angles), slack, what="apply_rope with batched tables, batch == heads", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(1)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_position_zero_is_the_identity(impl, device, dtype):
    """At position 0 every angle is 0: apply_rope returns x unchanged (cos = 1, sin = 0)."""
    x = torch.randn(2, 2, 1, 64).to(device=device, dtype=dtype)
    cos, sin = impl.rope_cos_sin(torch.zeros(1, dtype=torch.long, device=device), 64)
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    assert_close(cos, torch.ones(1, 64), what="cos at position 0", dtype=torch.float32)
    assert_close(sin, torch.zeros(1, 64), what="sin at position 0", dtype=torch.float32)
    assert_close(out, x.detach().cpu().double(), what=f"apply_rope at position 0 for {dtype} x", dtype=dtype)


@pytest.mark.points(1)
def test_rotation_keeps_the_length_of_every_pair(impl, device):
    """Each pair (x[j], x[j + d/2]) keeps its length after apply_rope: RoPE rotates, it never scales."""
    positions = torch.arange(0, 4000, 125, device=device)
    x = torch.randn(2, 3, positions.numel(), 64, device=device)
    cos, sin = impl.rope_cos_sin(positions.clone(), 64)
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    assert_close(pair_norms(out), pair_norms(x), what="the length of each (x[j], x[j + d/2]) pair after apply_rope", dtype=torch.float64, tol=tolerance_for(torch.float32, device))


@pytest.mark.points(3)
def test_scores_depend_only_on_the_distance(impl, device):
    """The dot product of a rotated query at m and a rotated key at n depends on m - n only: shifting both changes nothing."""
    head_dim, seq = 64, 12
    q = torch.randn(1, 2, seq, head_dim, device=device)
    k = torch.randn(1, 2, seq, head_dim, device=device)
    base_positions = torch.arange(seq, device=device)

    def scores(shift):
        cos, sin = impl.rope_cos_sin(base_positions + shift, head_dim)
        return impl.apply_rope(q.clone(), cos.clone(), sin.clone()) @ impl.apply_rope(k.clone(), cos.clone(), sin.clone()).transpose(-1, -2)

    shifts = (0, 1, 7, 250, 1000)
    got = {shift: scores(shift) for shift in shifts}
    reference = rotate_truth(q, angles_truth(base_positions, head_dim, 10000.0)) @ rotate_truth(k, angles_truth(base_positions, head_dim, 10000.0)).transpose(-1, -2)
    for shift in shifts:
        # each score is a sum of products of pair lengths times the cosine of an angle difference; both angles
        # may carry the float32 error bound, so the score may move by |q| |k| times twice that bound
        max_angle = angles_truth(base_positions + shift, head_dim, 10000.0).abs().max()
        slack = (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :]).cpu().double() * 2 * angle_error_bound(max_angle, 10000.0)
        assert_close_with_slack(
            got[shift], reference, slack, what=f"q.k scores with both positions shifted by {shift}", dtype=torch.float32
        )


@pytest.mark.points(2)
def test_decoding_one_token_matches_the_full_sequence(impl, device):
    """Rotating one new token with the tables of its position alone gives the same row as rotating the whole sequence."""
    head_dim, seq = 64, 24
    x = torch.randn(2, 4, seq, head_dim, device=device)
    full = impl.apply_rope(x.clone(), *impl.rope_cos_sin(torch.arange(seq, device=device), head_dim))
    for p in (0, 13, seq - 1):
        one = impl.apply_rope(x[:, :, p : p + 1].clone(), *impl.rope_cos_sin(torch.tensor([p], device=device), head_dim))
        assert_close(one, full[:, :, p : p + 1].detach(), what=f"apply_rope of the single token at position {p}")


@pytest.mark.points(1)
def test_gradient_is_the_inverse_rotation(impl, device):
    """The gradient of apply_rope with respect to x is the upstream gradient rotated back (by minus the angle)."""
    positions = torch.arange(5, 15, device=device)
    x = torch.randn(2, 2, 10, 32, device=device, requires_grad=True)
    grad_out = torch.randn(2, 2, 10, 32, device=device)
    cos, sin = impl.rope_cos_sin(positions.clone(), 32)
    impl.apply_rope(x, cos, sin).backward(grad_out.clone())
    expected = rotate_truth(grad_out, angles_truth(positions, 32, 10000.0), sign=-1.0)
    assert x.grad is not None, "apply_rope gave no gradient for x: do not detach x or leave autograd"
    assert_close(x.grad, expected, what="the gradient of apply_rope with respect to x", dtype=torch.float32)


@pytest.mark.points(1)
def test_non_contiguous_input(impl, device):
    """x given as a transposed view (batch, seq, heads, d).transpose(1, 2), as attention layers make it, is rotated correctly."""
    positions = torch.arange(3, 11, device=device)
    x = torch.randn(2, 8, 4, 32, device=device).transpose(1, 2)  # (batch, heads, seq, d), not contiguous
    assert not x.is_contiguous()
    cos, sin = llama_cos_sin(positions, 32, 10000.0)  # the inputs: tables laid out as rope_cos_sin makes them
    out = impl.apply_rope(x.clone(), cos.clone(), sin.clone())
    angles = angles_truth(positions, 32, 10000.0)
    assert_close(out, rotate_truth(x, angles), what="apply_rope of a transposed (non-contiguous) x", dtype=torch.float32, mistakes=rotation_mistakes(x, angles))
