"""Public tests of module 09 (attention: MHA, MQA, GQA). Run: pytest exercises/09_attention

These check the essentials quickly, against the formulas in float64; the grader's hidden tests check more
(float16 and bfloat16, gradients, PyTorch's SDPA, and transformers' LlamaAttention with its DynamicCache).
Read docs/09_attention.md.
"""

import math

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, expect, tolerance_for


def attention_float64(q, k, v, causal=True, padding_mask=None, scale=None):
    """softmax(q @ k^T * scale + mask) @ v in float64, each kv head repeated for its group of query heads."""
    q, k, v = q.double(), k.double(), v.double()
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    q_len, kv_len = scores.shape[-2:]
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(diagonal=kv_len - q_len)  # query i sits at key index i + kv_len - q_len
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def rope_float64(x, positions, base=10000.0):
    """Rotate-half RoPE in float64: pair (x[j], x[j + d/2]) turned by positions * base ** (-2j / d)."""
    d = x.shape[-1]
    angles = positions.double()[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.double()[..., : d // 2], x.double()[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def test_pasted_rope_rotates_half_pairs(impl):
    """The RoPE you pasted from module 02 (rope_cos_sin, apply_rope) rotates pairs (j, j + head_dim/2) by position * inv_freq."""
    x = torch.randn(2, 3, 7, 16)
    positions = torch.arange(7)
    cos, sin = impl.rope_cos_sin(positions, 16)
    assert_shape(cos, (7, 16), what="cos from rope_cos_sin(arange(7), 16)")
    halves = rope_float64(torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1), positions)  # pairs (2i, 2i+1), rotated
    interleaved = torch.stack([halves[..., :8], halves[..., 8:]], dim=-1).flatten(-2)
    mistakes = {"you rotated neighbouring pairs (2i, 2i+1) (GPT-J's layout); Llama pairs j with j + head_dim // 2": interleaved}
    assert_close(impl.apply_rope(x, cos, sin), rope_float64(x, positions), what="apply_rope(x, *rope_cos_sin(arange(7), 16))",
                 dtype=torch.float32, mistakes=mistakes)


def test_repeat_kv_repeats_each_head_consecutively(impl):
    """repeat_kv turns kv heads [a, b] into [a, a, b, b] for n_rep=2, and rejects n_rep < 1."""
    x = torch.randn(1, 2, 3, 4)
    mistakes = {"heads tiled [a, b, a, b]: repeat each one consecutively (repeat_interleave on dim 1)": x.repeat(1, 2, 1, 1)}
    assert_close(impl.repeat_kv(x, 2), torch.cat([x[:, :1], x[:, :1], x[:, 1:], x[:, 1:]], dim=1), what="repeat_kv(x, 2)",
                 mistakes=mistakes)
    assert_raises(ValueError, impl.repeat_kv, x, 0, when="for repeat_kv(x, 0)")


def test_attention_without_mask(impl):
    """attention(q, k, v, causal=False) is softmax(q @ k^T / sqrt(head_dim)) @ v over the keys, with grouped kv heads."""
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mistakes = {
        "the scores are scaled by 1/head_dim; the scale is 1/sqrt(head_dim)": attention_float64(q, k, v, False, scale=1 / 8),
        "kv heads tiled [a, b, a, b]: repeat each one for its group [a, a, b, b]": attention_float64(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1), False),
    }
    assert_close(impl.attention(q, k, v, causal=False), attention_float64(q, k, v, False), what="attention(q, k, v, causal=False)",
                 dtype=torch.float32, mistakes=mistakes)


def test_attention_uses_the_scale_argument(impl):
    """attention(..., scale=0.3) multiplies the scores by 0.3, not by the default 1/sqrt(head_dim)."""
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mistakes = {"the scale argument is ignored: use it when given, head_dim ** -0.5 only when it is None": attention_float64(q, k, v, False)}
    assert_close(impl.attention(q, k, v, causal=False, scale=0.3), attention_float64(q, k, v, False, scale=0.3),
                 what="attention(q, k, v, causal=False, scale=0.3)", dtype=torch.float32, mistakes=mistakes)


def test_attention_rejects_heads_not_a_multiple_of_kv_heads(impl):
    """attention with 3 query heads over 2 kv heads raises ValueError: heads must split into equal groups."""
    q, kv = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8)
    assert_raises(ValueError, impl.attention, q, kv, kv, when="for 3 query heads over 2 kv heads (check heads % kv_heads == 0 first)")


def test_causal_mask_for_a_decode_step(impl):
    """With 3 new queries after 5 cached keys (q_len 3, kv_len 8), query i sees keys 0 .. i + 5."""
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    top_left = attention_float64(q, k[:, :, :3], v[:, :, :3], True)  # what tril() without the offset gives
    mistakes = {"the causal mask is aligned top-left; the queries are the LAST q_len positions: tril(diagonal=kv_len - q_len)": top_left}
    assert_close(impl.attention(q, k, v, causal=True), attention_float64(q, k, v, True), what="attention(q, k, v) with q_len=3, kv_len=8",
                 dtype=torch.float32, mistakes=mistakes)


def test_padding_mask(impl):
    """padding_mask (batch, kv_len) with True for real tokens: padded keys get no attention."""
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    padding = torch.tensor([[True, True, True, True], [True, True, False, False]])
    mistakes = {"the padding mask is ignored": attention_float64(q, k, v, False),
                "the padding mask is inverted: True means a real token": lambda out: bool(torch.isnan(out).any())}
    assert_close(impl.attention(q, k, v, causal=False, padding_mask=padding), attention_float64(q, k, v, False, padding),
                 what="attention(q, k, v, causal=False, padding_mask)", dtype=torch.float32, mistakes=mistakes)


def test_bfloat16_in_bfloat16_out(impl):
    """bfloat16 inputs give a bfloat16 output (softmax in float32 inside)."""
    q, k, v = (torch.randn(1, 2, 4, 8).to(torch.bfloat16) for _ in range(3))
    out = impl.attention(q, k, v)
    expect(out.dtype == torch.bfloat16, f"attention returned {out.dtype} for bfloat16 inputs: cast the result back to q.dtype")


class ListCache:
    """A cache like module 06's KVCache: per layer, keys and values concatenated along the sequence (dim -2)."""

    def __init__(self):
        self.layers = {}

    def update(self, key_states, value_states, layer_idx):
        if layer_idx in self.layers:
            keys, values = self.layers[layer_idx]
            key_states, value_states = torch.cat([keys, key_states], -2), torch.cat([values, value_states], -2)
        self.layers[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx=0):
        return self.layers[layer_idx][0].shape[-2] if layer_idx in self.layers else 0


def test_module_layout_like_llama_attention(impl):
    """GroupedQueryAttention(64, 8, 2) has q_proj, k_proj, v_proj, o_proj without bias, shaped as LlamaAttention's."""
    layer = impl.GroupedQueryAttention(64, 8, 2)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    want = {"q_proj.weight": (64, 64), "k_proj.weight": (16, 64), "v_proj.weight": (16, 64), "o_proj.weight": (64, 64)}
    expect(shapes == want, f"GroupedQueryAttention(64, 8, 2) has parameters {shapes}, expected {want} (no bias)")
    assert_shape(layer(torch.randn(2, 5, 64)), (2, 5, 64), what="GroupedQueryAttention(64, 8, 2)(x) for x of shape (2, 5, 64)")
    assert_raises(ValueError, impl.GroupedQueryAttention, 64, 8, 3, when="for GroupedQueryAttention(64, 8, 3)")


def gqa_float64(weights, x, chunks, heads=4, kv_heads=2, restart_positions=False, padding_mask=None, base=10000.0):
    """The layer in float64 from its weights, fed chunk by chunk; `restart_positions` numbers each chunk from 0."""
    w = {name: t.double() for name, t in weights.items()}
    batch, seq, _ = x.shape
    split = lambda t, n: t.view(batch, seq, n, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(x @ w["q_proj.weight"].T, heads), split(x @ w["k_proj.weight"].T, kv_heads), split(x @ w["v_proj.weight"].T, kv_heads)
    outs = []
    for a, b in chunks:
        positions = torch.arange(b - a) if restart_positions else torch.arange(a, b)
        keys = torch.cat([rope_float64(k[:, :, c:d], torch.arange(d - c) if restart_positions else torch.arange(c, d), base) for c, d in chunks if d <= b], dim=2)
        padding = None if padding_mask is None else padding_mask[:, :b]
        out = attention_float64(rope_float64(q[:, :, a:b], positions, base), keys, v[:, :, :b], causal=True, padding_mask=padding)
        outs.append(out.transpose(1, 2).reshape(batch, b - a, -1) @ w["o_proj.weight"].T)
    return torch.cat(outs, dim=1)


def test_module_with_a_cache_equals_the_full_pass(impl):
    """Feeding 4 tokens, then 1, then 1 through a cache gives the outputs of one pass over all 6 tokens."""
    layer = impl.GroupedQueryAttention(32, 4, 2).double()
    weights = {name: t.detach().clone() for name, t in layer.state_dict().items()}
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    chunks = ((0, 4), (4, 5), (5, 6))
    with torch.no_grad():
        full = layer(x.clone())
        cache = ListCache()
        parts = torch.cat([layer(x[:, a:b].clone(), cache=cache) for a, b in chunks], dim=1)
    truth = gqa_float64(weights, x, [(0, 6)])
    float32 = tolerance_for(torch.float32)  # the RoPE tables are float32, whatever the layer's dtype
    assert_close(full, truth, what="GroupedQueryAttention(32, 4, 2) over 6 tokens in one pass", tol=float32)
    mistakes = {"positions restart at 0 after the cache: offset them by cache.get_seq_length(layer_idx)":
                gqa_float64(weights, x, chunks, restart_positions=True)}
    assert_close(parts, truth, what="the outputs fed through a cache (4, then 1, then 1 token)", tol=float32, mistakes=mistakes)


def test_module_passes_its_padding_mask_on(impl):
    """GroupedQueryAttention(32, 4, 2)(x, padding_mask=...) gives no attention to the padded keys (False in the mask)."""
    layer = impl.GroupedQueryAttention(32, 4, 2).double()
    weights = {name: t.detach().clone() for name, t in layer.state_dict().items()}
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    padding = torch.tensor([[True, True, False, True, True, True], [True] * 6])
    with torch.no_grad():
        out = layer(x.clone(), padding_mask=padding)
    mistakes = {"the module ignores padding_mask: pass it on to attention(..., padding_mask=padding_mask)": gqa_float64(weights, x, [(0, 6)])}
    assert_close(out, gqa_float64(weights, x, [(0, 6)], padding_mask=padding), what="GroupedQueryAttention(32, 4, 2) with a padding mask",
                 tol=tolerance_for(torch.float32), mistakes=mistakes)


def test_module_uses_rope_theta(impl):
    """GroupedQueryAttention(32, 4, 2, rope_theta=500.0) rotates with base 500, not the default 10000."""
    layer = impl.GroupedQueryAttention(32, 4, 2, rope_theta=500.0).double()
    weights = {name: t.detach().clone() for name, t in layer.state_dict().items()}
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x.clone())
    mistakes = {"rope_theta is ignored: pass self.rope_theta as the base of rope_cos_sin": gqa_float64(weights, x, [(0, 6)])}
    assert_close(out, gqa_float64(weights, x, [(0, 6)], base=500.0), what="GroupedQueryAttention(32, 4, 2, rope_theta=500.0)",
                 tol=tolerance_for(torch.float32), mistakes=mistakes)


def test_kv_cache_saving(impl):
    """kv_cache_saving(64, 8) is 8.0: GQA with 8 kv heads stores 8 times less than MHA with 64."""
    got = impl.kv_cache_saving(64, 8)
    expect(abs(got - 8.0) < 1e-12, f"kv_cache_saving(64, 8) is {got}, expected 8.0" + (" (inverted: num_heads / num_kv_heads)" if abs(got - 0.125) < 1e-12 else ""))
