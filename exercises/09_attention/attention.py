"""Module 09: attention with shared key/value heads: multi-head (MHA), multi-query (MQA) and grouped-query (GQA).

Every query head of multi-head attention has its own key and value head. Multi-query attention keeps
one key/value head for all of them, grouped-query attention one per *group* of query heads: the KV
cache shrinks by the group size, and quality stays close to MHA's. Llama 2 70B, Llama 3, Mistral and
Qwen use GQA. Read docs/09_attention.md first.

Shapes: `batch`, `heads` query heads, `kv_heads` key/value heads (`heads % kv_heads == 0`), `q_len`
new tokens, `kv_len` keys (the cached ones and the new ones), `head_dim` per head.

You write: `rope_cos_sin` and `apply_rope` (paste them from module 02), `repeat_kv`, `attention`,
`GroupedQueryAttention` and `kv_cache_saving`.
"""

import torch
from torch import nn
from grader import NotImplementedYet

# ------------------------------------------------------------------------------------------------
# From module 02: paste your own implementation here (the public tests check it again).


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Module 02's tables: paste your own implementation here.

    `positions` integer `(seq,)` or `(batch, seq)` -> `(cos, sin)`, each `positions.shape + (head_dim,)`,
    float32: the angles `positions * base ** (-2i / head_dim)` repeated twice along the last dimension
    (`cat([f, f])`, the rotate-half layout of transformers' Llama).
    """
    raise NotImplementedYet("rope_cos_sin")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Module 02's rotation: paste your own implementation here.

    `x` `(batch, heads, seq, head_dim)`, `cos`/`sin` `(seq, head_dim)` or `(batch, seq, head_dim)` ->
    `x * cos + rotate_half(x) * sin` in `x.dtype`, where `rotate_half` maps the halves `(x1, x2)` of the
    last dimension to `(-x2, x1)`.
    """
    raise NotImplementedYet("apply_rope")


# ------------------------------------------------------------------------------------------------
# This module.


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head `n_rep` times, consecutively, so that every query head has one.

    `(batch, kv_heads, seq, head_dim)` -> `(batch, kv_heads * n_rep, seq, head_dim)`: heads
    `[a, b]` with `n_rep=2` become `[a, a, b, b]` (query heads 0 and 1 share kv head `a`), as in
    transformers' `repeat_kv`; not `[a, b, a, b]`. `n_rep < 1` -> ValueError.
    """
    raise NotImplementedYet("repeat_kv")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              padding_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention, with `heads // kv_heads` query heads sharing each key/value head.

        out = softmax(q @ k^T * scale + mask) @ v,      scale = head_dim ** -0.5 by default

    Args:
        q: `(batch, heads, q_len, head_dim)`.
        k, v: `(batch, kv_heads, kv_len, head_dim)`; `heads % kv_heads != 0` -> ValueError.
        causal: query `i` (of the last `q_len` positions) sees keys `j <= i + kv_len - q_len`. With
            `q_len == kv_len` this is the usual lower triangle; in a decode step (`q_len` new tokens
            after `kv_len - q_len` cached ones) every new token sees the whole cache.
        padding_mask: bool `(batch, kv_len)`, True for a real token: no query attends to a False key.
        scale: multiplies the scores (default `head_dim ** -0.5`).

    Returns:
        `(batch, heads, q_len, head_dim)` in `q.dtype`. The softmax is computed in float32 whatever the
        input dtype (float64 inputs may stay in float64).
    """
    raise NotImplementedYet("attention")


class GroupedQueryAttention(nn.Module):
    """Llama's self-attention block: project, rotate (RoPE), attend causally over the cache, project out.

    The linears are named and shaped as transformers' `LlamaAttention`'s, so its `state_dict` loads
    strictly: `q_proj` `(num_heads * head_dim, hidden)`, `k_proj` and `v_proj` `(num_kv_heads * head_dim,
    hidden)`, `o_proj` `(hidden, num_heads * head_dim)`, all without bias.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int | None = None,
                 rope_theta: float = 10000.0):
        """`head_dim` defaults to `hidden_size // num_heads`. `num_heads % num_kv_heads != 0` -> ValueError."""
        super().__init__()
        raise NotImplementedYet("GroupedQueryAttention.__init__")

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, cache=None, layer_idx: int = 0) -> torch.Tensor:
        """`hidden_states` `(batch, seq, hidden)` -> `(batch, seq, hidden)`.

        Args:
            position_ids: `(seq,)` or `(batch, seq)`; default `arange(past, past + seq)`, where `past` is
                what `cache` already holds for `layer_idx` (0 without a cache).
            padding_mask: bool `(batch, past + seq)`, True for a real token: it covers the cached tokens
                and the new ones (transformers' `attention_mask` during generation).
            cache: None, or an object with `update(k, v, layer_idx) -> (keys, values)` and
                `get_seq_length(layer_idx)`: module 06's `KVCache`, transformers' `DynamicCache`. The new
                keys (after RoPE) and values go in; attention runs over everything it returns.
        """
        raise NotImplementedYet("GroupedQueryAttention.forward")


def kv_cache_saving(num_heads: int, num_kv_heads: int) -> float:
    """How many times smaller the KV cache of GQA is than MHA's: `num_heads / num_kv_heads`.

    Llama-2-70B (64 query heads, 8 kv heads): 8.0. MQA (`num_kv_heads == 1`) saves `num_heads` times.
    """
    raise NotImplementedYet("kv_cache_saving")
