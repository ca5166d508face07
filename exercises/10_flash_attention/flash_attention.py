"""Module 10: FlashAttention's tiling and online softmax, in plain PyTorch.

Attention's textbook form builds the whole `(q_len, kv_len)` matrix of scores, then its softmax, then
multiplies by the values. For long sequences that matrix dominates the memory and, on a GPU, the time:
it is written to and read back from slow memory several times. FlashAttention never forms it. It walks
over `block_q x block_k` tiles of scores, small enough to stay in fast on-chip memory, and keeps for each
query a running maximum, a running normaliser and an unnormalised output, corrected as each new block of
keys arrives: the *online softmax*. The result is exact, not an approximation. Read
docs/10_flash_attention.md first.

Shapes: `q` `(batch, heads, q_len, head_dim)`, `k`/`v` `(batch, heads, kv_len, head_dim)`; the running
state of a block of queries is `m` `(..., q)`, `l` `(..., q)`, `acc` `(..., q, head_dim)`, all float32.

You write: `online_softmax_update`, `flash_attention`, `attention_memory_bytes`.
"""

import torch
from grader import NotImplementedYet


def online_softmax_update(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, scores: torch.Tensor,
                          v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold one block of scores and values into the running softmax state of each query.

    With `m_new = max(m, max_j scores_j)`, every earlier term was exponentiated against `m`, so it is
    rescaled by `exp(m - m_new)` before the block's own terms are added:

        l_new   = exp(m - m_new) * l   + sum_j exp(scores_j - m_new)
        acc_new = exp(m - m_new) * acc + sum_j exp(scores_j - m_new) * v_j

    Start from `m = -inf`, `l = 0`, `acc = 0`. After the last block, `acc / l[..., None]` is the softmax
    attention output and `m + log(l)` the logsumexp of all the scores.

    Args:
        m, l: `(..., q)` running maximum and normaliser, float32.
        acc: `(..., q, d)` unnormalised output, float32.
        scores: `(..., q, kb)` this block's scores (already scaled), float32; masked scores are `-inf`.
        v: `(..., kb, d)` this block's values, float32.

    Returns:
        `(m_new, l_new, acc_new)`, same shapes. A row whose scores are all `-inf` keeps its state
        unchanged, with no NaN, even while its `m` is still `-inf` (`-inf - -inf` is NaN: avoid it).
    """
    raise NotImplementedYet("online_softmax_update")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, block_q: int = 64,
                    block_k: int = 64, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention, `softmax(q @ k^T * scale) @ v`, one `block_q x block_k` tile of scores at a time.

    For each block of `block_q` queries, start a fresh state (`m = -inf`, `l = 0`, `acc = 0`), fold in
    the blocks of `block_k` keys one after the other with `online_softmax_update`, then normalise. No
    tensor of `q_len x kv_len` scores ever exists, in the forward or in the backward. The last block of
    queries or keys may be shorter (e.g. 257 tokens with blocks of 64: four blocks of 64 and one of 1).

    Args:
        q, k, v: `(batch, heads, seq, head_dim)`, the same number of heads; any floating dtype.
        causal: query `i` sees keys `j <= i` (SDPA's `is_causal`; used with `q_len == kv_len`). Tiles
            entirely above the diagonal are skipped, never computed; tiles on the diagonal are masked.
        block_q, block_k: tile sizes, at least 1 (else ValueError).
        scale: multiplies the scores (default `head_dim ** -0.5`).

    Returns:
        `(out, lse)`: `out` `(batch, heads, q_len, head_dim)` in `q.dtype`, equal to
        `F.scaled_dot_product_attention`; `lse` `(batch, heads, q_len)` float32, the logsumexp of each
        query's scaled scores (what FlashAttention keeps for its backward pass). Gradients flow through
        `out` (autograd through the tiles is enough).
    """
    raise NotImplementedYet("flash_attention")


def attention_memory_bytes(seq_len: int, head_dim: int, block_q: int, block_k: int,
                           bytes_per_element: int = 4) -> tuple[int, int]:
    """Bytes of scores one (batch, head) holds: naive attention against one tile of FlashAttention.

        naive = seq_len ** 2 * bytes_per_element                              (the whole score matrix)
        tiled = (block_q * block_k + block_q * (head_dim + 2)) * bytes_per_element
                 (one tile of scores, plus the running acc, m and l of its block of queries)

    Returns `(naive, tiled)` as ints. At 4096 tokens, head_dim 128 and blocks of 64 in float32: 64 MiB
    against 48.5 KiB.
    """
    raise NotImplementedYet("attention_memory_bytes")
