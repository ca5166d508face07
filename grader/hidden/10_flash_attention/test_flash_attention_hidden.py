"""Hidden suite of module 10 (FlashAttention's tiling): `F.scaled_dot_product_attention` in float64 is the truth
(output and gradients), `torch.logsumexp` of the scaled scores the truth of `lse`.

The tiling itself is proven, not assumed: a `TorchDispatchMode` sees every tensor that any ATen operation
produces, in the forward and the backward, and the suite checks that none holds as many elements as one
head's `q_len x kv_len` score matrix; the same mode counts the multiply-adds of every matrix product, so
under `causal` the tiles above the diagonal must not be computed at all (counting work, not function calls,
accepts any way of writing the loops).

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call.

Run: pytest grader/hidden/10_flash_attention --impl solutions   (or --impl path/to/submission)
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from grader.harness.checks import assert_close, assert_raises, assert_shape

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (q_len, kv_len, block_q, block_k): ragged lengths, unequal blocks, blocks larger than the sequence
SHAPES = [(257, 257, 64, 64), (100, 100, 32, 16), (70, 70, 16, 48), (9, 9, 64, 64)]
SHAPE_IDS = ["257_by_64", "100_blocks_32x16", "70_blocks_16x48", "9_one_block"]

HYPOTHESIS = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------------------
# Truths


def causal_mask(q_len, kv_len, device="cpu"):
    """True where query i may see key j: SDPA's is_causal (j <= i)."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril()


def truth(q, k, v, causal=False, scale=None):
    """(out, lse) in float64: SDPA, and the logsumexp of each query's scaled, masked scores."""
    q64, k64, v64 = q.detach().double(), k.detach().double(), v.detach().double()
    out = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q64 @ k64.transpose(-2, -1)) * scale
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return out, torch.logsumexp(scores, dim=-1)


def qkv(batch, heads, q_len, kv_len, head_dim, dtype, device):
    make = lambda n: torch.randn(batch, heads, n, head_dim).to(device=device, dtype=dtype)  # noqa: E731
    return make(q_len), make(kv_len), make(kv_len)


def lse_mistakes(q, k, v, causal, lse_truth):
    """lse values of known mistakes."""
    out, _ = truth(q, k, v, causal)
    scale = q.shape[-1] ** -0.5
    scores = (q.detach().double() @ k.detach().double().transpose(-2, -1)) * scale
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    row_max = scores.amax(-1)
    return {
        "lse is log(l) without m: the normaliser l is relative to the running max, so lse = m + log(l)": lse_truth - row_max,
        "lse is the running max m alone: add log(l)": row_max,
    }


# ---------------------------------------------------------------------------------------------------
# online_softmax_update on its own


def fresh_state(rows, d, device="cpu"):
    return (torch.full((rows,), float("-inf"), device=device), torch.zeros(rows, device=device), torch.zeros(rows, d, device=device))


def fold(impl, scores, v, cuts):
    """Fold the keys into a fresh state in the blocks that `cuts` delimit; return (out, lse, m, l, acc)."""
    m, l, acc = fresh_state(scores.shape[0], v.shape[-1], scores.device)
    bounds = [0, *cuts, scores.shape[-1]]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        m, l, acc = impl.online_softmax_update(m.clone(), l.clone(), acc.clone(), scores[:, start:stop].clone(), v[start:stop].clone())
    return acc / l[:, None], m + torch.log(l), m, l, acc


@pytest.mark.points(5)
@HYPOTHESIS
@given(kv_len=st.integers(1, 48), rows=st.integers(1, 6), spread=st.sampled_from([1.0, 10.0, 80.0]),
       masked=st.sampled_from([0.0, 0.3, 0.7]), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_any_split_of_the_keys_gives_one_softmax(impl, kv_len, rows, spread, masked, seed, data):
    """online_softmax_update folded over any split of the keys into blocks, of any sizes, gives softmax(scores) @ v and logsumexp(scores)."""
    cuts = sorted(data.draw(st.sets(st.integers(1, kv_len - 1), max_size=kv_len - 1), label="cuts")) if kv_len > 1 else []
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, kv_len, generator=generator) * spread
    hide = torch.rand(rows, kv_len, generator=generator) < masked
    hide[torch.arange(rows), torch.randint(kv_len, (rows,), generator=generator)] = False  # one real key per row
    scores = scores.masked_fill(hide, float("-inf"))
    v = torch.randn(kv_len, 8, generator=generator)
    out, lse, *_ = fold(impl, scores, v, cuts)
    blocks = f"the keys split at {cuts} (kv_len {kv_len}, scores ~ {spread} x N(0, 1), {masked:.0%} masked)"
    probs = scores.double().softmax(-1)
    exact_out, exact_lse = probs @ v.double(), torch.logsumexp(scores.double(), -1)
    assert_close(out, exact_out, what=f"acc / l after folding {blocks}", dtype=torch.float32, mistakes={
        "a NaN: -inf - (-inf) where a row has seen only masked scores; subtract 0 there instead of m_new": lambda o: bool(torch.isnan(o).any()),
    })
    assert_close(lse, exact_lse, what=f"m + log(l) after folding {blocks}", dtype=torch.float32)


@pytest.mark.points(2)
def test_a_fully_masked_row_keeps_its_state(impl, device):
    """A row whose scores are all -inf leaves (m, l, acc) unchanged with no NaN, both fresh (m = -inf) and after real scores."""
    m, l, acc = fresh_state(3, 4, device)
    scores = torch.randn(3, 5, device=device)
    scores[1] = float("-inf")  # row 1 sees nothing in this block, while its m is still -inf
    v = torch.randn(5, 4, device=device)
    m, l, acc = impl.online_softmax_update(m, l, acc, scores.clone(), v.clone())
    for name, value, fresh in (("m", m[1], float("-inf")), ("l", l[1], 0.0), ("acc", acc[1], 0.0)):
        ok = bool(torch.all(value == fresh))
        assert ok, (f"after a block of all -inf scores, row 1's {name} is {value.tolist()}, expected {fresh} (unchanged): "
                    "-inf - (-inf) is NaN; where the new max is still -inf, subtract 0 (or anything finite) instead")
    assert_close(acc[0] / l[0], (scores[0].double().softmax(-1) @ v.double()), what="row 0's acc / l after one block", dtype=torch.float32)
    before = (m.clone(), l.clone(), acc.clone())
    masked = torch.full((3, 2), float("-inf"), device=device)
    m2, l2, acc2 = impl.online_softmax_update(m, l, acc, masked, torch.randn(2, 4, device=device))
    for name, after, old in (("m", m2, before[0]), ("l", l2, before[1]), ("acc", acc2, before[2])):
        assert torch.equal(torch.nan_to_num(after, neginf=-1e30), torch.nan_to_num(old, neginf=-1e30)), (
            f"a block of all -inf scores changed {name}: from {old.tolist()} to {after.tolist()}; it must leave the state as it was"
        )


# ---------------------------------------------------------------------------------------------------
# flash_attention against SDPA


@pytest.mark.points(6)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_sdpa(impl, device, shape, causal):
    """flash_attention's out equals float64 SDPA and its lse the logsumexp of the scaled scores, for ragged lengths and any blocks."""
    q_len, kv_len, block_q, block_k = shape
    q, k, v = qkv(1, 2, q_len, kv_len, 16, torch.float32, device)
    out, lse = impl.flash_attention(q.clone(), k.clone(), v.clone(), causal=causal, block_q=block_q, block_k=block_k)
    want_out, want_lse = truth(q, k, v, causal)
    what = f"flash_attention(causal={causal}, block_q={block_q}, block_k={block_k}) for {q_len} tokens"
    assert_close(out, want_out.to(device), what=f"out of {what}", dtype=torch.float32)
    assert_shape(lse, tuple(want_lse.shape), what=f"lse of {what}")
    assert_close(lse, want_lse.to(device), what=f"lse of {what}", dtype=torch.float32, mistakes=lse_mistakes(q, k, v, causal, want_lse))


@pytest.mark.points(2)
@pytest.mark.parametrize("lengths", [(40, 257), (257, 33)], ids=["short_queries", "short_keys"])
def test_queries_and_keys_of_different_lengths(impl, device, lengths):
    """Without causal, q_len and kv_len may differ (ragged both ways)."""
    q, k, v = qkv(2, 2, *lengths, 16, torch.float32, device)
    out, lse = impl.flash_attention(q.clone(), k.clone(), v.clone(), block_q=32, block_k=64)
    want_out, want_lse = truth(q, k, v)
    assert_close(out, want_out.to(device), what=f"out of flash_attention for q_len {lengths[0]}, kv_len {lengths[1]}", dtype=torch.float32)
    assert_close(lse, want_lse.to(device), what=f"lse of flash_attention for q_len {lengths[0]}, kv_len {lengths[1]}", dtype=torch.float32)


@pytest.mark.points(3)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_dtype(impl, device, dtype, causal):
    """out has q's dtype and lse is float32, both close to the float64 truth of the same (rounded) inputs."""
    q, k, v = qkv(2, 2, 97, 97, 32, dtype, device)
    out, lse = impl.flash_attention(q.clone(), k.clone(), v.clone(), causal=causal, block_q=32, block_k=32)
    want_out, want_lse = truth(q, k, v, causal)
    assert_close(out, want_out.to(device), what=f"out of flash_attention for {dtype} inputs", dtype=dtype)
    assert_close(lse, want_lse.to(device), what=f"lse of flash_attention for {dtype} inputs", dtype=torch.float32)


@pytest.mark.points(4)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradients_match_sdpa(impl, device, dtype, causal):
    """Gradients through out (to q, k, v) equal those of float64 SDPA, for a ragged length (130 tokens, blocks of 32)."""
    originals = qkv(1, 2, 130, 130, 16, dtype, device)
    q, k, v = (t.clone().requires_grad_() for t in originals)  # the learner's leaves
    grad_out = torch.randn(1, 2, 130, 16, device=device).to(dtype)
    out, _ = impl.flash_attention(q, k, v, causal=causal, block_q=32, block_k=32)
    out.backward(grad_out.clone())
    q64, k64, v64 = (t.double().requires_grad_() for t in originals)
    F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal).backward(grad_out.double())
    for name, mine, want in (("q", q, q64), ("k", k, k64), ("v", v, v64)):
        assert mine.grad is not None, f"no gradient reached {name}: keep the tiles inside autograd (or write a backward)"
        assert_close(mine.grad, want.grad, what=f"the gradient of flash_attention's out with respect to {name} ({dtype})", dtype=dtype)


@pytest.mark.points(1)
@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_custom_scale(impl, device, scale):
    """flash_attention(..., scale=s) multiplies the scores by s (and lse is the logsumexp of those scores)."""
    q, k, v = qkv(1, 2, 50, 50, 16, torch.float32, device)
    out, lse = impl.flash_attention(q.clone(), k.clone(), v.clone(), block_q=16, block_k=16, scale=scale)
    want_out, want_lse = truth(q, k, v, scale=scale)
    assert_close(out, want_out.to(device), what=f"out of flash_attention(scale={scale})", dtype=torch.float32)
    assert_close(lse, want_lse.to(device), what=f"lse of flash_attention(scale={scale})", dtype=torch.float32)


@pytest.mark.points(1)
def test_float64_inputs(impl, device):
    """float64 inputs give a float64 out (graded at float32 tolerance) and a float32 lse."""
    q, k, v = qkv(1, 2, 40, 40, 16, torch.float64, device)
    out, lse = impl.flash_attention(q.clone(), k.clone(), v.clone(), causal=True, block_q=16, block_k=16)
    want_out, want_lse = truth(q, k, v, True)
    assert out.dtype == torch.float64, f"flash_attention returned out in {out.dtype} for float64 inputs: return q.dtype"
    assert_close(out.float(), want_out.to(device), what="out of flash_attention for float64 inputs", dtype=torch.float32)
    assert_close(lse, want_lse.to(device), what="lse of flash_attention for float64 inputs", dtype=torch.float32)


@pytest.mark.points(1)
@pytest.mark.parametrize("blocks", [(0, 64), (64, 0), (-1, 8)], ids=str)
def test_rejects_blocks_below_one(impl, blocks):
    """block_q or block_k below 1 raises ValueError."""
    q, k, v = qkv(1, 1, 8, 8, 4, torch.float32, "cpu")
    assert_raises(ValueError, impl.flash_attention, q, k, v, block_q=blocks[0], block_k=blocks[1],
                  when=f"for block_q={blocks[0]}, block_k={blocks[1]}")


# ---------------------------------------------------------------------------------------------------
# The tiling itself, watched below autograd


MATMULS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "dot", "vdot"}


class Watch(TorchDispatchMode):
    """Records the largest tensor any ATen operation produces, and the multiply-adds of every matrix product."""

    def __init__(self):
        super().__init__()
        self.largest, self.largest_op, self.macs = 0, "", 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.largest_op = t.numel(), f"{name} -> {tuple(t.shape)}"
        if name in MATMULS:
            a, b = [x for x in args if isinstance(x, torch.Tensor)][-2:]
            self.macs += a.numel() * (b.shape[-1] if b.dim() > 1 else 1)
        return out


@pytest.mark.points(5)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_no_full_score_matrix_forward_or_backward(impl, causal):
    """No tensor as large as one head's q_len x kv_len score matrix is ever made, in the forward or the backward (257 tokens, blocks of 64)."""
    originals = qkv(1, 2, 257, 257, 16, torch.float32, "cpu")
    q, k, v = (t.clone().requires_grad_() for t in originals)  # the learner's leaves
    limit = 257 * 257
    with Watch() as forward:
        out, _ = impl.flash_attention(q, k, v, causal=causal, block_q=64, block_k=64)
    assert forward.largest < limit, (
        f"the forward made a tensor of {forward.largest} elements ({forward.largest_op}), as large as the whole "
        f"257 x 257 score matrix of one head: compute the scores one block_q x block_k tile at a time"
    )
    with Watch() as backward:
        out.backward(torch.ones_like(out))
    assert backward.largest < limit, (
        f"the backward made a tensor of {backward.largest} elements ({backward.largest_op}), as large as the whole "
        f"257 x 257 score matrix of one head: autograd through the tiles keeps each tile separate; a custom backward must tile too"
    )
    want, _ = truth(*originals, causal)
    assert_close(out, want, what="out of flash_attention(257 tokens, blocks of 64)", dtype=torch.float32)


def tile_area(q_len, kv_len, block_q, block_k, causal):
    """Scores in the tiles FlashAttention computes: every tile, or under causal those not entirely above the diagonal."""
    area = 0
    for q0 in range(0, q_len, block_q):
        q1 = min(q0 + block_q, q_len)
        for k0 in range(0, kv_len, block_k):
            if causal and k0 > q1 - 1:
                break
            area += (q1 - q0) * (min(k0 + block_k, kv_len) - k0)
    return area


@pytest.mark.points(4)
@pytest.mark.parametrize("blocks", [(64, 64), (32, 64), (64, 16)], ids=str)
def test_causal_skips_the_tiles_above_the_diagonal(impl, blocks):
    """Under causal, the score and value products do no work for tiles entirely above the diagonal (multiply-adds counted)."""
    block_q, block_k = blocks
    batch, heads, n, d = 1, 2, 257, 16
    q, k, v = qkv(batch, heads, n, n, d, torch.float32, "cpu")
    with Watch() as watch:
        out, _ = impl.flash_attention(q.clone(), k.clone(), v.clone(), causal=True, block_q=block_q, block_k=block_k)
    budget = 2 * d * batch * heads * tile_area(n, n, block_q, block_k, causal=True)  # q @ k^T and p @ v on those tiles
    every_tile = 2 * d * batch * heads * n * n
    assert watch.macs <= budget, (
        f"the causal forward did {watch.macs} multiply-adds in matrix products; the tiles on and below the diagonal "
        f"need {budget} (every tile: {every_tile}). Skip a key block when its first key comes after the block's last "
        "query: all its scores are masked"
    )
    want, _ = truth(q, k, v, True)
    assert_close(out, want, what=f"out of flash_attention(causal=True, block_q={block_q}, block_k={block_k})", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# attention_memory_bytes


@pytest.mark.points(2)
@pytest.mark.parametrize("args", [(4096, 128, 64, 64, 4), (1024, 64, 128, 32, 2), (257, 16, 64, 64, 4), (8192, 128, 128, 64, 2)], ids=str)
def test_attention_memory_bytes(impl, args):
    """attention_memory_bytes gives (seq_len**2 * bytes, (block_q * block_k + block_q * (head_dim + 2)) * bytes)."""
    seq_len, head_dim, block_q, block_k, nbytes = args
    naive, tiled = impl.attention_memory_bytes(seq_len, head_dim, block_q, block_k, bytes_per_element=nbytes)
    want_naive = seq_len**2 * nbytes
    want_tiled = (block_q * block_k + block_q * (head_dim + 2)) * nbytes
    assert naive == want_naive, f"naive bytes for seq_len {seq_len} at {nbytes} bytes: got {naive}, expected {want_naive} (seq_len ** 2 * bytes)"
    hint = ""
    if tiled == block_q * block_k * nbytes:
        hint = ": the running acc, m and l of the block's queries count too, block_q * (head_dim + 2)"
    elif tiled == (block_q * block_k + block_q * head_dim) * nbytes:
        hint = ": m and l add 2 numbers per query: block_q * (head_dim + 2)"
    elif tiled == block_q * block_k + block_q * (head_dim + 2):
        hint = ": multiply by bytes_per_element"
    assert tiled == want_tiled, f"tiled bytes for blocks {block_q} x {block_k}, head_dim {head_dim}: got {tiled}, expected {want_tiled}{hint}"


@pytest.mark.points(1)
def test_attention_memory_bytes_default_is_float32(impl):
    """Without bytes_per_element, elements are 4 bytes (float32): 4096 tokens give 64 MiB naive."""
    naive, tiled = impl.attention_memory_bytes(4096, 128, 64, 64)
    assert (naive, tiled) == (4096**2 * 4, (64 * 64 + 64 * 130) * 4), f"attention_memory_bytes(4096, 128, 64, 64) is {(naive, tiled)}"
    assert math.isclose(naive / 2**20, 64.0), "naive attention at 4096 tokens in float32 is 64 MiB per (batch, head)"
