"""Public tests of module 10 (FlashAttention's tiling). Run: pytest exercises/10_flash_attention

These check the essentials quickly, against attention computed the textbook way in float64; the grader's
hidden tests check more (every dtype, gradients, any split of the keys, and, watching every tensor your
code creates, that no full score matrix exists and that causal tiles above the diagonal are skipped).
Read docs/10_flash_attention.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, expect


def attention_float64(q, k, v, causal=False, scale=None):
    """(out, lse) the textbook way in float64: the whole score matrix, its softmax and its logsumexp."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v, torch.logsumexp(scores, dim=-1)


def fresh(rows, d):
    return torch.full((rows,), float("-inf")), torch.zeros(rows), torch.zeros(rows, d)


def test_online_softmax_two_blocks_equal_one_softmax(impl):
    """Folding 10 keys as blocks of 4 and 6 with online_softmax_update gives softmax(scores) @ v and logsumexp(scores)."""
    scores, v = torch.randn(3, 10) * 4, torch.randn(10, 5)
    m, l, acc = fresh(3, 5)
    m, l, acc = impl.online_softmax_update(m, l, acc, scores[:, :4], v[:4])
    m, l, acc = impl.online_softmax_update(m, l, acc, scores[:, 4:], v[4:])
    exact = scores.double().softmax(-1) @ v.double()
    # What the common mistakes give: the old terms kept against the old max (no exp(m_old - m_new) rescaling).
    m1 = scores[:, :4].amax(-1, keepdim=True)
    m2 = torch.maximum(m1, scores[:, 4:].amax(-1, keepdim=True))
    p1, p2, alpha = (scores[:, :4] - m1).exp(), (scores[:, 4:] - m2).exp(), (m1 - m2).exp()
    acc1, acc2, l1, l2 = p1 @ v[:4], p2 @ v[4:], p1.sum(-1, keepdim=True), p2.sum(-1, keepdim=True)
    mistakes = {
        "neither l nor acc is rescaled by exp(m_old - m_new) when the running max grows": (acc1 + acc2) / (l1 + l2),
        "l is not rescaled by exp(m_old - m_new) when the running max grows (acc is)": (alpha * acc1 + acc2) / (l1 + l2),
        "acc is not rescaled by exp(m_old - m_new) when the running max grows (l is)": (acc1 + acc2) / (alpha * l1 + l2),
    }
    assert_close(acc / l[:, None], exact, what="acc / l after two blocks", dtype=torch.float32, mistakes=mistakes)
    assert_close(m + torch.log(l), torch.logsumexp(scores.double(), -1), what="m + log(l) after two blocks", dtype=torch.float32)


def test_online_softmax_fully_masked_row(impl):
    """A block whose scores are all -inf for a fresh row leaves it at m = -inf, l = 0, acc = 0: no NaN."""
    m, l, acc = fresh(2, 3)
    scores = torch.tensor([[0.5, -1.0], [float("-inf"), float("-inf")]])
    m, l, acc = impl.online_softmax_update(m, l, acc, scores, torch.randn(2, 3))
    expect(not bool(torch.isnan(l).any() | torch.isnan(acc).any()),
           f"a fully masked row gave NaN (l = {l.tolist()}): -inf - (-inf) is NaN; where the running max is still -inf, subtract 0 instead")
    expect(m[1].item() == float("-inf") and l[1].item() == 0.0 and bool((acc[1] == 0).all()),
           f"a fully masked row should keep m = -inf, l = 0, acc = 0; got m = {m[1].item()}, l = {l[1].item()}, acc = {acc[1].tolist()}")


def test_flash_attention_matches_attention(impl):
    """flash_attention on 100 tokens with blocks of 32 (a ragged last block of 4) equals attention: out and lse."""
    q, k, v = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16), torch.randn(1, 2, 100, 16)
    out, lse = impl.flash_attention(q, k, v, block_q=32, block_k=32)
    want_out, want_lse = attention_float64(q, k, v)
    assert_close(out, want_out, what="out of flash_attention (100 tokens, blocks of 32)", dtype=torch.float32,
                 mistakes={"the ragged last block of keys was dropped": attention_float64(q, k[..., :96, :], v[..., :96, :])[0]})
    assert_shape(lse, (1, 2, 100), what="lse of flash_attention")
    assert_close(lse, want_lse, what="lse of flash_attention", dtype=torch.float32,
                 mistakes={"lse = log(l) without m: add the running max, lse = m + log(l)": want_lse - (q.double() @ k.double().transpose(-2, -1) / 4).amax(-1)})


def test_flash_attention_causal(impl):
    """flash_attention(causal=True) with blocks of 16 and 32 equals causal attention (query i sees keys j <= i)."""
    q, k, v = torch.randn(2, 1, 70, 8), torch.randn(2, 1, 70, 8), torch.randn(2, 1, 70, 8)
    out, lse = impl.flash_attention(q, k, v, causal=True, block_q=16, block_k=32)
    want_out, want_lse = attention_float64(q, k, v, causal=True)
    assert_close(out, want_out, what="out of flash_attention(causal=True, block_q=16, block_k=32)", dtype=torch.float32,
                 mistakes={"the causal mask is missing": attention_float64(q, k, v)[0]})
    assert_close(lse, want_lse, what="lse of flash_attention(causal=True)", dtype=torch.float32)


def test_flash_attention_causal_skips_tiles_above_the_diagonal(impl, monkeypatch):
    """Under causal, no tile whose scores are all masked reaches online_softmax_update: tiles above the diagonal are skipped."""
    tiles = []
    update = impl.online_softmax_update

    def watched(m, l, acc, scores, v):
        tiles.append(bool(torch.isneginf(scores).all()))
        return update(m, l, acc, scores, v)

    monkeypatch.setattr(impl, "online_softmax_update", watched)
    q = torch.randn(1, 1, 64, 8)
    impl.flash_attention(q, q, q, causal=True, block_q=16, block_k=16)
    expect(not any(tiles), f"{sum(tiles)} of the {len(tiles)} tiles folded in under causal=True were entirely masked: a key block "
           "that starts after the last query of the block (k_start > q_end - 1) lies above the diagonal; stop the key loop there "
           "instead of computing and masking it")


def test_flash_attention_keeps_the_dtype(impl):
    """bfloat16 inputs give a bfloat16 out and a float32 lse."""
    q, k, v = (torch.randn(1, 1, 20, 8).to(torch.bfloat16) for _ in range(3))
    out, lse = impl.flash_attention(q, k, v, block_q=8, block_k=8)
    expect(out.dtype == torch.bfloat16, f"out has dtype {out.dtype} for bfloat16 inputs: cast it back to q.dtype")
    expect(lse.dtype == torch.float32, f"lse has dtype {lse.dtype}: keep it in float32")


def test_flash_attention_rejects_empty_blocks(impl):
    """block_q=0 or block_k=0 raises ValueError."""
    q = torch.randn(1, 1, 4, 4)
    assert_raises(ValueError, impl.flash_attention, q, q, q, block_q=0, when="for block_q=0")
    assert_raises(ValueError, impl.flash_attention, q, q, q, block_k=0, when="for block_k=0")


def test_attention_memory_bytes(impl):
    """At 4096 tokens, head_dim 128, blocks of 64, float32: 64 MiB of scores naively, 48.5 KiB for a tile and its state."""
    naive, tiled = impl.attention_memory_bytes(4096, 128, 64, 64)
    expect(naive == 4096 * 4096 * 4, f"naive is {naive}, expected 4096 ** 2 * 4 = {4096 * 4096 * 4}"
           + (": that is in elements, multiply by bytes_per_element" if naive == 4096 * 4096 else ""))
    expect(tiled == (64 * 64 + 64 * 130) * 4,
           f"tiled is {tiled}, expected (64 * 64 + 64 * (128 + 2)) * 4 = {(64 * 64 + 64 * 130) * 4}: one tile of scores, "
           "plus the acc (head_dim), m and l (2) of each of the block's queries")
