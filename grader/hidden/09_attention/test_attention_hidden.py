"""Hidden suite of module 09 (attention: MHA, MQA, GQA): `F.scaled_dot_product_attention` in float64 is the
truth; transformers' `repeat_kv`, eager attention and `LlamaAttention` (with `DynamicCache`) are the oracles.

Low-precision results are compared with the float64 truth of the same (rounded) inputs at the dtype's
tolerance, widened to what transformers' eager attention needs on those inputs (`tolerance_as_good_as`):
the contract asks for the softmax in float32 but lets the matmuls run in the input dtype, so a correct
implementation may round the scores (once or twice: `q @ k^T`, then `* scale`) and the probabilities
(`softmax(dtype=float32).to(q.dtype)`) as transformers does.

The learner's code gets copies of the inputs (and of LlamaAttention's weights) and runs first: expected values
come from the originals, computed after the learner's call.

Run: pytest grader/hidden/09_attention --impl solutions   (or --impl path/to/submission)
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from grader.harness.checks import assert_close, assert_raises, assert_shape, tolerance_as_good_as, tolerance_for
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers import DynamicCache, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding, eager_attention_forward, repeat_kv

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOW = [torch.float16, torch.bfloat16]
# (heads, kv_heads): multi-head, grouped-query and multi-query attention
HEADS = [(4, 4), (8, 2), (6, 1)]
HEAD_IDS = ["mha", "gqa", "mqa"]


# ---------------------------------------------------------------------------------------------------
# Truths and oracles


def allowed_mask(q_len, kv_len, causal, padding_mask=None, device="cpu"):
    """Bool (batch or 1, 1, q_len, kv_len): True where a query may attend a key (decode-aligned causal mask)."""
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril(diagonal=kv_len - q_len)
    allowed = allowed[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :].to(device)
    return allowed


def truth(q, k, v, allowed, scale=None):
    """SDPA in float64 with kv heads repeated by transformers' repeat_kv: the exact result of the inputs given."""
    n_rep = q.shape[1] // k.shape[1]
    k64, v64 = repeat_kv(k.detach().double(), n_rep), repeat_kv(v.detach().double(), n_rep)
    return F.scaled_dot_product_attention(q.detach().double(), k64, v64, attn_mask=allowed.to(q.device), scale=scale)


class _Groups(torch.nn.Module):
    """What transformers' eager_attention_forward reads from its module: the group size and training."""

    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups


def transformers_eager(q, k, v, allowed, scale=None):
    """transformers' eager_attention_forward with its additive mask (0 or the dtype's minimum), (batch, heads, q, d)."""
    additive = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, torch.finfo(q.dtype).min)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, _ = eager_attention_forward(_Groups(q.shape[1] // k.shape[1]).eval(), q, k, v, additive, scaling=scale)
    return out.transpose(1, 2).detach()


def qkv(batch, heads, kv_heads, q_len, kv_len, head_dim, dtype, device):
    q = torch.randn(batch, heads, q_len, head_dim).to(device=device, dtype=dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_dim).to(device=device, dtype=dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim).to(device=device, dtype=dtype)
    return q, k, v


def known_mistakes(q, k, v, allowed, padding_mask=None, causal=True):
    """Outputs of the mistakes learners make, to name them when a result matches one."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    n_rep = q.shape[1] // k.shape[1]
    mistakes = {
        "the scores are scaled by 1/head_dim; the scale is 1/sqrt(head_dim)": truth(q, k, v, allowed, scale=1.0 / q.shape[-1]),
        "the scores are not scaled at all; multiply q @ k^T by head_dim ** -0.5": truth(q, k, v, allowed, scale=1.0),
    }
    if n_rep > 1 and k.shape[1] > 1:
        tiled = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        mistakes["the kv heads are tiled [a, b, a, b]; each must be repeated consecutively [a, a, b, b] (repeat_interleave)"] = truth(q, *tiled, allowed)
    if causal and q_len < kv_len:
        top_left = allowed_mask(q_len, kv_len, True, padding_mask, q.device)
        top_left = top_left & torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril()
        mistakes["the causal mask is aligned top-left (tril()); the new queries are the LAST q_len positions: tril(diagonal=kv_len - q_len)"] = truth(q, k, v, top_left)
    if padding_mask is not None:
        mistakes["the padding mask is ignored: keys where padding_mask is False must get no attention"] = truth(q, k, v, allowed_mask(q_len, kv_len, causal, None, q.device))
    return mistakes


# ---------------------------------------------------------------------------------------------------
# repeat_kv


@pytest.mark.points(2)
@pytest.mark.parametrize("n_rep", [1, 2, 3, 4])
def test_repeat_kv_matches_transformers(impl, device, n_rep):
    """repeat_kv(x, n_rep) equals transformers' repeat_kv: each kv head repeated n_rep times consecutively."""
    x = torch.randn(2, 3, 5, 8, device=device)
    out = impl.repeat_kv(x.clone(), n_rep)
    assert_close(out, repeat_kv(x, n_rep), what=f"repeat_kv(x, {n_rep}) for x of shape (2, 3, 5, 8)",
                 mistakes={"heads tiled [a, b, a, b]; repeat each one consecutively [a, a, b, b]": x.repeat(1, n_rep, 1, 1)})


@pytest.mark.points(1)
@pytest.mark.parametrize("n_rep", [0, -2])
def test_repeat_kv_rejects_n_rep_below_one(impl, n_rep):
    """repeat_kv(x, n_rep) with n_rep < 1 raises ValueError."""
    assert_raises(ValueError, impl.repeat_kv, torch.randn(1, 2, 3, 4), n_rep, when=f"for repeat_kv(x, {n_rep})")


# ---------------------------------------------------------------------------------------------------
# attention against SDPA and transformers' eager attention


@pytest.mark.points(5)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_attention_matches_sdpa_and_eager(impl, device, heads, causal):
    """attention(q, k, v, causal) equals float64 SDPA and transformers' eager attention, for MHA, GQA and MQA."""
    n_heads, n_kv = heads
    q, k, v = qkv(2, n_heads, n_kv, 11, 11, 16, torch.float32, device)
    allowed = allowed_mask(11, 11, causal, device=device)
    out = impl.attention(q.clone(), k.clone(), v.clone(), causal=causal)
    what = f"attention(q, k, v, causal={causal}) with {n_heads} query heads and {n_kv} kv heads"
    assert_close(out, truth(q, k, v, allowed).to(device), what=what, dtype=torch.float32,
                 mistakes=known_mistakes(q, k, v, allowed, causal=causal))
    assert_close(out, transformers_eager(q, k, v, allowed), what=what + ", against transformers' eager attention")


@pytest.mark.points(4)
@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_causal_mask_is_aligned_for_decoding(impl, device, heads, q_len):
    """With q_len < kv_len (a decode step after cached tokens), query i sees keys j <= i + kv_len - q_len."""
    n_heads, n_kv = heads
    q, k, v = qkv(2, n_heads, n_kv, q_len, 13, 16, torch.float32, device)
    allowed = allowed_mask(q_len, 13, True, device=device)
    out = impl.attention(q.clone(), k.clone(), v.clone(), causal=True)
    what = f"attention(q, k, v, causal=True) with q_len={q_len}, kv_len=13"
    assert_close(out, truth(q, k, v, allowed).to(device), what=what, dtype=torch.float32,
                 mistakes=known_mistakes(q, k, v, allowed, causal=True))
    assert_close(out, transformers_eager(q, k, v, allowed), what=what + ", against transformers' eager attention")


def random_padding(batch, kv_len, device):
    """A bool (batch, kv_len) mask with real tokens True; key 0 is always real, so no query loses every key."""
    mask = torch.rand(batch, kv_len) > 0.35
    mask[:, 0] = True
    mask[0, -3:] = False  # a right-padded row, whatever the draw
    return mask.to(device)


@pytest.mark.points(4)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("q_len", [9, 3])
def test_padding_mask(impl, device, causal, q_len):
    """padding_mask (batch, kv_len), True = real token: no query attends to a padded key (with and without causal)."""
    q, k, v = qkv(3, 4, 2, q_len, 9, 16, torch.float32, device)
    padding = random_padding(3, 9, device)
    allowed = allowed_mask(q_len, 9, causal, padding, device)
    out = impl.attention(q.clone(), k.clone(), v.clone(), causal=causal, padding_mask=padding.clone())
    mistakes = known_mistakes(q, k, v, allowed, padding, causal)
    mistakes["the padding mask is inverted: True marks a real token, False a padded one"] = lambda out: bool(torch.isnan(out).any())
    what = f"attention(q, k, v, causal={causal}, padding_mask) with q_len={q_len}, kv_len=9"
    assert_close(out, truth(q, k, v, allowed).to(device), what=what, dtype=torch.float32, mistakes=mistakes)
    assert_close(out, transformers_eager(q, k, v, allowed), what=what + ", against transformers' eager attention")


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_low_precision(impl, device, heads, dtype):
    """float16 and bfloat16 inputs give an output in that dtype, close to the float64 truth of the same inputs."""
    n_heads, n_kv = heads
    q, k, v = qkv(2, n_heads, n_kv, 6, 21, 32, dtype, device)
    padding = random_padding(2, 21, device)
    allowed = allowed_mask(6, 21, True, padding, device)
    out = impl.attention(q.clone(), k.clone(), v.clone(), causal=True, padding_mask=padding.clone())
    expected = truth(q, k, v, allowed)
    # as close as transformers' eager attention comes: its matmuls round the scores and probabilities to `dtype`
    tol = tolerance_as_good_as(transformers_eager(q, k, v, allowed), expected, dtype, device)
    assert_close(out, expected.to(device), what=f"attention for {dtype} q, k, v (q_len 6 after 15 cached keys, padded)",
                 dtype=dtype, tol=tol, mistakes=known_mistakes(q, k, v, allowed, padding))


class SoftmaxDtypes(TorchDispatchMode):
    """Records the input dtype of every softmax and exponential that runs (fused attention kernels excepted)."""

    WATCHED = {"_softmax", "_log_softmax", "exp", "exp_", "logsumexp"}

    def __init__(self):
        super().__init__()
        self.low = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.WATCHED and isinstance(args[0], torch.Tensor) and args[0].dtype in (torch.float16, torch.bfloat16):
            half_to_float = name in ("_softmax", "_log_softmax") and len(args) > 2 and bool(args[2])
            if not half_to_float:
                self.low.append(f"{name} on {args[0].dtype}")
        return func(*args, **kwargs)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_softmax_runs_in_float32(impl, device, dtype):
    """For float16/bfloat16 inputs the softmax runs in float32 (upcast the scores first, or softmax(dtype=torch.float32))."""
    q, k, v = qkv(1, 4, 2, 5, 5, 16, dtype, device)
    with SoftmaxDtypes() as seen:
        out = impl.attention(q, k, v, causal=True)
    assert not seen.low, (
        f"attention for {dtype} inputs ran {seen.low[0]}: compute the softmax in float32 "
        "(scores.float().softmax(-1), or F.softmax(scores, dim=-1, dtype=torch.float32)) and cast the result back"
    )
    assert out.dtype == dtype, f"attention for {dtype} inputs returned {out.dtype}: cast the output back to q.dtype"


@pytest.mark.points(1)
@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_custom_scale(impl, device, scale):
    """attention(..., scale=s) multiplies the scores by s instead of head_dim ** -0.5."""
    q, k, v = qkv(2, 4, 4, 7, 7, 16, torch.float32, device)
    allowed = allowed_mask(7, 7, True, device=device)
    out = impl.attention(q.clone(), k.clone(), v.clone(), causal=True, scale=scale)
    assert_close(out, truth(q, k, v, allowed, scale=scale).to(device), what=f"attention(q, k, v, scale={scale})", dtype=torch.float32,
                 mistakes={"scale was ignored: use it when given, head_dim ** -0.5 only when it is None": truth(q, k, v, allowed)})


@pytest.mark.points(1)
def test_float64_inputs(impl, device):
    """float64 inputs give a float64 output (graded at float32 tolerance)."""
    q, k, v = qkv(2, 4, 2, 5, 8, 16, torch.float64, device)
    allowed = allowed_mask(5, 8, True, device=device)
    out = impl.attention(q.clone(), k.clone(), v.clone())
    assert out.dtype == torch.float64, f"attention for float64 inputs returned {out.dtype}: return q.dtype"
    assert_close(out.float(), truth(q, k, v, allowed).to(device), what="attention for float64 q, k, v", dtype=torch.float32)


@pytest.mark.points(2)
def test_gradients_match_sdpa(impl, device):
    """Gradients through attention (to q, k and v) equal those of float64 SDPA."""
    originals = qkv(2, 4, 2, 6, 10, 8, torch.float32, device)
    q, k, v = (t.clone().requires_grad_() for t in originals)  # the learner's leaves
    padding = random_padding(2, 10, device)
    grad_out = torch.randn(2, 4, 6, 8, device=device)
    impl.attention(q, k, v, causal=True, padding_mask=padding.clone()).backward(grad_out.clone())
    q64, k64, v64 = (t.double().requires_grad_() for t in originals)
    n_rep = 2
    F.scaled_dot_product_attention(q64, repeat_kv(k64, n_rep), repeat_kv(v64, n_rep),
                                   attn_mask=allowed_mask(6, 10, True, padding, device)).backward(grad_out.double())
    for name, mine, want in (("q", q, q64), ("k", k, k64), ("v", v, v64)):
        assert mine.grad is not None, f"attention gave no gradient for {name}: stay inside autograd"
        assert_close(mine.grad, want.grad, what=f"the gradient of attention with respect to {name}", dtype=torch.float32)


@pytest.mark.points(1)
def test_attention_rejects_heads_that_do_not_group(impl):
    """attention with heads not a multiple of kv_heads (6 and 4) raises ValueError."""
    q, k, v = qkv(1, 6, 4, 3, 3, 8, torch.float32, "cpu")
    assert_raises(ValueError, impl.attention, q, k, v, when="for 6 query heads and 4 kv heads")


# ---------------------------------------------------------------------------------------------------
# GroupedQueryAttention against LlamaAttention


def _float32_tol(device):
    """float64 runs are graded at float32's tolerance (the RoPE tables are float32 by the contract)."""
    return tolerance_for(torch.float32, device)


def llama_pair(impl, num_heads, num_kv_heads, hidden=48, head_dim=None, theta=10000.0, dtype=torch.float64, device="cpu"):
    """A random eager LlamaAttention, its rotary embedding, and the learner's module loaded from its state dict."""
    config = LlamaConfig(hidden_size=hidden, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                         head_dim=head_dim or hidden // num_heads, attention_bias=False,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    config._attn_implementation = "eager"
    theirs = LlamaAttention(config, layer_idx=0).eval()
    mine = impl.GroupedQueryAttention(hidden, num_heads, num_kv_heads, head_dim=head_dim, rope_theta=theta)
    mine.load_state_dict({k: v.clone() for k, v in theirs.state_dict().items()}, strict=True)
    rope = LlamaRotaryEmbedding(config).to(device)
    return mine.to(device=device, dtype=dtype).eval(), theirs.to(device=device, dtype=dtype), rope


def llama_forward(llama, rope, x, positions, allowed, cache=None):
    """LlamaAttention's output for x (batch, seq, hidden), positions (batch, seq) and a bool mask (batch, 1, seq, kv)."""
    cos, sin = rope(x, positions)
    additive = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, torch.finfo(x.dtype).min)
    with torch.no_grad():
        out, _ = llama(x, position_embeddings=(cos, sin), attention_mask=additive, cache=cache)
    return out


class ListCache:
    """A cache like module 06's KVCache: per layer, keys and values concatenated along dim -2."""

    def __init__(self):
        self.layers = {}

    def update(self, key_states, value_states, layer_idx):
        if layer_idx in self.layers:
            keys, values = self.layers[layer_idx]
            key_states, value_states = torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
        self.layers[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx=0):
        return self.layers[layer_idx][0].shape[-2] if layer_idx in self.layers else 0


@pytest.mark.points(2)
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_state_dict_of_llama_attention_loads_strictly(impl, heads):
    """GroupedQueryAttention has q_proj, k_proj, v_proj, o_proj shaped as LlamaAttention's, without bias."""
    n_heads, n_kv = heads
    mine = impl.GroupedQueryAttention(48, n_heads, n_kv, head_dim=8)
    got = {name: tuple(t.shape) for name, t in mine.state_dict().items()}
    config = LlamaConfig(hidden_size=48, num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=8)
    theirs = LlamaAttention(config, layer_idx=0)
    want = {name: tuple(t.shape) for name, t in theirs.state_dict().items()}
    assert got == want, f"GroupedQueryAttention(48, {n_heads}, {n_kv}, head_dim=8) has parameters {got}; LlamaAttention has {want}"


@pytest.mark.points(5)
@pytest.mark.parametrize("head_dim", [None, 12], ids=["default_head_dim", "head_dim_12"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_matches_llama_attention(impl, device, heads, head_dim):
    """With LlamaAttention's weights, the output equals LlamaAttention's (eager, causal) for MHA, GQA and MQA."""
    n_heads, n_kv = heads
    mine, theirs, rope = llama_pair(impl, n_heads, n_kv, hidden=48, head_dim=head_dim, device=device)
    x = torch.randn(2, 10, 48, dtype=torch.float64, device=device)
    with torch.no_grad():
        out = mine(x.clone())
    positions = torch.arange(10, device=device).expand(2, 10)
    expected = llama_forward(theirs, rope, x, positions, allowed_mask(10, 10, True, device=device))
    assert_close(out, expected, what=f"GroupedQueryAttention ({n_heads} heads, {n_kv} kv heads) against LlamaAttention",
                 tol=_float32_tol(device))


@pytest.mark.points(2)
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_positions_and_rope_theta(impl, device, theta):
    """Explicit position_ids of shape (batch, seq) and the rope_theta given to __init__ are used (rotate-half RoPE)."""
    mine, theirs, rope = llama_pair(impl, 4, 2, hidden=48, theta=theta, device=device)
    x = torch.randn(2, 6, 48, dtype=torch.float64, device=device)
    positions = torch.stack([torch.arange(6), torch.arange(40, 46)]).to(device)
    with torch.no_grad():
        out = mine(x.clone(), position_ids=positions.clone())
    expected = llama_forward(theirs, rope, x, positions, allowed_mask(6, 6, True, device=device))
    assert_close(out, expected, what=f"GroupedQueryAttention with position_ids (batch, seq) and rope_theta={theta}",
                 tol=_float32_tol(device))


@pytest.mark.points(5)
@pytest.mark.parametrize("cache_kind", ["dynamic_cache", "list_cache"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_incremental_decoding_equals_the_full_pass(impl, device, heads, cache_kind):
    """A prefill then one token at a time through a cache gives the full pass's output, and LlamaAttention's with DynamicCache."""
    n_heads, n_kv = heads
    mine, theirs, rope = llama_pair(impl, n_heads, n_kv, hidden=48, device=device)
    x = torch.randn(2, 9, 48, dtype=torch.float64, device=device)
    chunks = ((0, 5), (5, 6), (6, 7), (7, 9))
    with torch.no_grad():
        full = mine(x.clone())
        cache = DynamicCache() if cache_kind == "dynamic_cache" else ListCache()
        # every chunk through the learner's module first, then LlamaAttention chunk by chunk
        parts = [mine(x[:, start:stop].clone(), cache=cache, layer_idx=0) for start, stop in chunks]
        theirs_cache = DynamicCache()
        for (start, stop), part in zip(chunks, parts):
            positions = torch.arange(start, stop, device=device).expand(2, -1)
            expected = llama_forward(theirs, rope, x[:, start:stop], positions, allowed_mask(stop - start, stop, True, device=device), theirs_cache)
            what = f"GroupedQueryAttention on tokens {start}..{stop - 1} after {start} cached ones ({cache_kind})"
            assert_close(part, expected, what=what + ", against LlamaAttention with DynamicCache", tol=_float32_tol(device),
                         mistakes={"the new tokens were rotated as if they started at position 0: offset the positions by cache.get_seq_length()":
                                   llama_forward(theirs, rope, x[:, start:stop], torch.arange(stop - start, device=device).expand(2, -1),
                                                 allowed_mask(stop - start, stop, True, device=device), None) if start == 0 else full[:, :0]})
            assert_close(part, full[:, start:stop], what=what + ", against the full pass", tol=_float32_tol(device))
    held = cache.get_seq_length(0)
    assert held == 9, f"after 9 tokens the cache holds {held}: call cache.update(k, v, layer_idx) once per forward"


@pytest.mark.points(3)
def test_padding_mask_with_a_cache(impl, device):
    """padding_mask (batch, past + seq) covers the cached and the new tokens, as LlamaAttention's attention_mask does."""
    mine, theirs, rope = llama_pair(impl, 4, 2, hidden=48, device=device)
    x = torch.randn(2, 8, 48, dtype=torch.float64, device=device)
    padding = torch.ones(2, 8, dtype=torch.bool, device=device)
    padding[1, 3:5] = False  # two padded tokens inside the second row's prompt
    padding[0, 6] = False
    chunks = ((0, 5), (5, 6), (6, 8))
    cache, theirs_cache = DynamicCache(), DynamicCache()
    with torch.no_grad():
        parts = [mine(x[:, start:stop].clone(), padding_mask=padding[:, :stop].clone(), cache=cache) for start, stop in chunks]
        for (start, stop), part in zip(chunks, parts):
            positions = torch.arange(start, stop, device=device).expand(2, -1)
            allowed = allowed_mask(stop - start, stop, True, padding[:, :stop], device)
            expected = llama_forward(theirs, rope, x[:, start:stop], positions, allowed, theirs_cache)
            unpadded = llama_forward(theirs, rope, x[:, start:stop], positions, allowed_mask(stop - start, stop, True, device=device), None) if start == 0 else None
            mistakes = {"the padding mask was ignored": unpadded} if unpadded is not None else {}
            assert_close(part, expected, what=f"GroupedQueryAttention with padding_mask on tokens {start}..{stop - 1}",
                         tol=_float32_tol(device), mistakes=mistakes)


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_in_each_dtype(impl, device, dtype):
    """The module cast to float32, float16 or bfloat16 returns that dtype, close to LlamaAttention in float64 (same rounded weights)."""
    mine, theirs, rope = llama_pair(impl, 4, 2, hidden=48, dtype=dtype, device=device)
    x = torch.randn(2, 7, 48, device=device).to(dtype)
    with torch.no_grad():
        out = mine(x.clone())
    theirs = theirs.to(torch.float64)  # llama_pair cast it to dtype with the module: it holds the same rounded weights
    expected = llama_forward(theirs, rope, x.double(), torch.arange(7, device=device).expand(2, -1), allowed_mask(7, 7, True, device=device))
    # Rounding the projections to the dtype moves q and k; the scores move by the same relative amount, and the
    # output by what that does to the softmax: covered by the tolerance's atol on this scale (checked on the
    # reference and on transformers' eager attention in this dtype).
    assert_close(out, expected, what=f"GroupedQueryAttention in {dtype}", dtype=dtype)


@pytest.mark.points(1)
@pytest.mark.parametrize("heads", [(6, 4), (4, 3)], ids=str)
def test_module_rejects_heads_that_do_not_group(impl, heads):
    """GroupedQueryAttention with num_heads not a multiple of num_kv_heads raises ValueError."""
    assert_raises(ValueError, impl.GroupedQueryAttention, 48, *heads, when=f"for GroupedQueryAttention(48, {heads[0]}, {heads[1]})")


# ---------------------------------------------------------------------------------------------------
# kv_cache_saving


@pytest.mark.points(2)
@pytest.mark.parametrize("heads, saving", [((32, 32), 1.0), ((64, 8), 8.0), ((32, 8), 4.0), ((71, 1), 71.0), ((40, 8), 5.0)], ids=str)
def test_kv_cache_saving(impl, heads, saving):
    """kv_cache_saving(num_heads, num_kv_heads) is num_heads / num_kv_heads (Llama-2-70B: 64 / 8 = 8)."""
    got = impl.kv_cache_saving(*heads)
    assert abs(float(got) - saving) <= 1e-12 * saving, (
        f"kv_cache_saving{heads} is {got}, expected {saving}"
        + (": inverted; the saving is num_heads / num_kv_heads (> 1)" if abs(float(got) * saving - 1) < 1e-9 and saving != 1 else "")
    )
