"""Module 02: rotary position embeddings (RoPE), the position encoding of Llama, Mistral, Qwen and most recent LLMs.

RoPE encodes a token's position by rotating its query and key vectors: pairs of coordinates turn by an
angle proportional to the position, each pair at its own frequency. The dot product of a rotated query
and a rotated key then depends only on how far apart the two tokens are. Read docs/02_rope.md first.

This module uses the *rotate-half* layout of transformers' Llama: coordinate `j` is paired with
coordinate `j + head_dim // 2` (not with its neighbour `j + 1`, as GPT-J and the RoFormer paper do).
"""

import torch
from grader import NotImplementedYet


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The rotation frequency of each coordinate pair: `inv_freq[i] = base ** (-2i / head_dim)`.

    Pair 0 turns by 1 radian per position, the last pair by almost `1 / base`: frequencies fall
    geometrically from fast to slow, like the hands of a clock.

    Args:
        head_dim: size of one attention head; must be even (the coordinates come in pairs), else ValueError.
        base: the RoPE "theta" (10000 in Llama 2, 500000 in Llama 3).

    Returns:
        `(head_dim // 2,)`, float32.
    """
    raise NotImplementedYet("rope_inv_freq")


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine and sine tables of the rotation angles `positions * inv_freq`, in the rotate-half layout.

    The angle of pair `i` at position `p` is `p * inv_freq[i]`. The tables hold each angle twice,
    `cat([angles, angles])` along the last dimension, so that column `j` and column `j + head_dim // 2`
    (the two coordinates of pair `j`) carry the same angle.

    Args:
        positions: integer tensor `(seq,)` or `(batch, seq)`: each token's position (they need not start
            at 0: when decoding with a KV cache the new token sits at position `past_length`).
        head_dim: even size of one attention head (odd -> ValueError).
        base: as in `rope_inv_freq`.

    Returns:
        `(cos, sin)`, each of shape `positions.shape + (head_dim,)`, float32, on `positions.device`.
        Computed in float32: angles reach tens of thousands of radians at long positions, where
        float16 or bfloat16 would be wrong by whole radians.
    """
    raise NotImplementedYet("rope_cos_sin")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`(x1, x2) -> (-x2, x1)`, where `x1` and `x2` are the first and second halves of the last dimension.

    In each pair `(x1[j], x2[j])` this is the 90-degree rotation `(a, b) -> (-b, a)`, so that
    `x * cos + rotate_half(x) * sin` turns every pair by its angle.

    Args:
        x: `(..., head_dim)`, head_dim even.

    Returns:
        `(..., head_dim)`, same dtype.
    """
    raise NotImplementedYet("rotate_half")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every coordinate pair of `x` by its angle: `x * cos + rotate_half(x) * sin`.

    For the pair `(a, b) = (x[..., j], x[..., j + head_dim // 2])` at angle `t` this gives
    `(a cos t - b sin t, b cos t + a sin t)`: a rotation, so lengths are kept.

    Args:
        x: queries or keys, `(batch, heads, seq, head_dim)`, any floating dtype.
        cos, sin: `(seq, head_dim)` or `(batch, seq, head_dim)`, as `rope_cos_sin` makes them. The
            batched tables need a heads dimension inserted to broadcast against `x`.

    Returns:
        `(batch, heads, seq, head_dim)` in `x.dtype` (computing in float32 and casting once at the end,
        or casting the tables to `x.dtype` first as transformers does: both are fine).
    """
    raise NotImplementedYet("apply_rope")
