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

# ------------------------------------------------------------------------------------------------
# From module 02: paste your own implementation here (the public tests check it again).


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Module 02's tables: paste your own implementation here.

    `positions` integer `(seq,)` or `(batch, seq)` -> `(cos, sin)`, each `positions.shape + (head_dim,)`,
    float32: the angles `positions * base ** (-2i / head_dim)` repeated twice along the last dimension
    (`cat([f, f])`, the rotate-half layout of transformers' Llama).
    """
    ### BEGIN SOLUTION
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions[..., None].to(torch.float32) * inv_freq  # (..., seq, head_dim // 2)
    angles = torch.cat([angles, angles], dim=-1)  # pair j is columns j and j + head_dim // 2
    return angles.cos(), angles.sin()
    ### END SOLUTION


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Module 02's rotation: paste your own implementation here.

    `x` `(batch, heads, seq, head_dim)`, `cos`/`sin` `(seq, head_dim)` or `(batch, seq, head_dim)` ->
    `x * cos + rotate_half(x) * sin` in `x.dtype`, where `rotate_half` maps the halves `(x1, x2)` of the
    last dimension to `(-x2, x1)`.
    """
    ### BEGIN SOLUTION
    if cos.dim() == 3:  # (batch, seq, head_dim) -> (batch, 1, seq, head_dim): shared by the heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
    ### END SOLUTION


# ------------------------------------------------------------------------------------------------
# This module.


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head `n_rep` times, consecutively, so that every query head has one.

    `(batch, kv_heads, seq, head_dim)` -> `(batch, kv_heads * n_rep, seq, head_dim)`: heads
    `[a, b]` with `n_rep=2` become `[a, a, b, b]` (query heads 0 and 1 share kv head `a`), as in
    transformers' `repeat_kv`; not `[a, b, a, b]`. `n_rep < 1` -> ValueError.
    """
    ### BEGIN SOLUTION
    if n_rep < 1:
        raise ValueError(f"n_rep must be at least 1, got {n_rep}")
    return x.repeat_interleave(n_rep, dim=1)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    batch, heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if heads % kv_heads != 0:
        raise ValueError(f"the {heads} query heads must split into groups over the {kv_heads} key/value heads")
    if scale is None:
        scale = head_dim ** -0.5
    k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)  # (batch, heads, kv_len, head_dim)

    compute = torch.promote_types(q.dtype, torch.float32)  # float32 for fp16/bf16, float64 stays float64
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale  # (batch, heads, q_len, kv_len)

    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)
    if causal:  # the new queries are the last q_len positions: query i sits at key index i + kv_len - q_len
        allowed = allowed.tril(diagonal=kv_len - q_len)
    if padding_mask is not None:  # (batch, kv_len) -> (batch, 1, 1, kv_len): the same for every head and query
        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))

    probs = scores.softmax(dim=-1)  # over the keys
    return (probs @ v.to(compute)).to(q.dtype)
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)
        ### END SOLUTION

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
        ### BEGIN SOLUTION
        batch, seq, _ = hidden_states.shape
        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        q = self.q_proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)

        past = cache.get_seq_length(layer_idx) if cache is not None else 0
        if position_ids is None:  # the new tokens come after the cached ones
            position_ids = torch.arange(past, past + seq, device=hidden_states.device)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:  # store the new keys and values, attend over all of them
            k, v = cache.update(k, v, layer_idx)  # (batch, kv_heads, past + seq, head_dim)

        out = attention(q, k, v, causal=True, padding_mask=padding_mask)  # (batch, heads, seq, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))
        ### END SOLUTION


def kv_cache_saving(num_heads: int, num_kv_heads: int) -> float:
    """How many times smaller the KV cache of GQA is than MHA's: `num_heads / num_kv_heads`.

    Llama-2-70B (64 query heads, 8 kv heads): 8.0. MQA (`num_kv_heads == 1`) saves `num_heads` times.
    """
    ### BEGIN SOLUTION
    return num_heads / num_kv_heads
    ### END SOLUTION
