"""Module 06: the KV cache, and greedy generation with and without it.

A decoder predicts one token at a time. Without a cache, every step runs the model over the whole
sequence again, recomputing the keys and values of tokens it has already seen; they never change,
because attention is causal. The cache keeps them: after a *prefill* over the prompt, each step
feeds only the newest token and appends its key and value. Read docs/06_kv_cache.md first.

Given code (read it, do not change it): `TinyDecoder`, a small Llama-style causal decoder (RMSNorm,
rotary position embeddings, grouped-query attention, SwiGLU MLP), with parameter names that match
transformers' `LlamaForCausalLM` (without its `model.` prefix).

    model = TinyDecoder(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2)
    logits = model(input_ids, position_ids, cache=None)      # (batch, seq, vocab)

- `input_ids`: `(batch, seq)` token ids, the *new* tokens only.
- `position_ids`: `(seq,)` or `(batch, seq)`, the absolute position of each new token. The model does
  not guess positions: whoever calls it with a cache must say where the new tokens sit, i.e. after the
  `cache.get_seq_length()` tokens the cache already holds.
- `cache`: `None` (attend only to `input_ids`), or an object with `update(key_states, value_states,
  layer_idx) -> (keys, values)`, called once per layer and per forward with that layer's new keys
  and values `(batch, num_kv_heads, seq, head_dim)` (after RoPE). Your `KVCache`, or transformers'
  `DynamicCache`. The causal mask lets new token i see every cached token and the new tokens up to i.

You write: `KVCache.__init__`, `KVCache.update`, `KVCache.get_seq_length`, `kv_cache_bytes`, `generate`.
"""

import math

import torch
from torch import nn
from grader import NotImplementedYet

# ------------------------------------------------------------------------------------------------
# Given code: a tiny Llama-style decoder. Its attention calls `cache.update(...)` once per layer.


class RMSNorm(nn.Module):
    """Module 01's RMSNorm: statistics in float32, cast back, then the weight (as LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """Module 02's tables: `position_ids` `(seq,)` or `(batch, seq)` -> cos, sin `(..., seq, head_dim)`."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    angles = position_ids[..., None].to(torch.float32) * inv_freq  # (..., seq, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `(batch, heads, seq, head_dim)` by the angles of its positions (rotate-half layout)."""
    if cos.dim() == 3:  # (batch, seq, head_dim): one table per sequence, shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal self-attention with `num_kv_heads` key/value heads shared by `num_heads` query heads (GQA)."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, layer_idx: int, rope_base: float):
        super().__init__()
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"dim ({dim}) must divide by num_heads ({num_heads}), and num_heads by num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.layer_idx = layer_idx  # which slot of the cache is this layer's
        self.rope_base = rope_base
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, cache=None) -> torch.Tensor:
        batch, seq, _ = x.shape
        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_base, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is not None:
            # Store the new keys and values; get back every key and value of this layer so far.
            k, v = cache.update(k, v, self.layer_idx)  # (batch, kv_heads, past + seq, head_dim)

        # GQA: each key/value head serves num_heads / num_kv_heads query heads.
        repeats = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)

        # New token i sits at key index past + i: it sees keys 0 .. past + i.
        total = k.shape[-2]
        allowed = torch.ones(seq, total, dtype=torch.bool, device=x.device).tril(diagonal=total - seq)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (batch, heads, seq, total)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (batch, heads, seq, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    """Llama's SwiGLU feed-forward block."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, hidden: int, layer_idx: int, rope_base: float, eps: float):
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = Attention(dim, num_heads, num_kv_heads, layer_idx, rope_base)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_ids, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyDecoder(nn.Module):
    """A small Llama-style causal language model (given code): `forward(input_ids, position_ids, cache=None)`.

    Its state dict is a `LlamaForCausalLM`'s with the `model.` prefix removed (same shapes for
    `LlamaConfig(vocab_size, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=num_layers,
    num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, rope_theta=rope_base,
    rms_norm_eps=eps)`), so it computes what that model computes.
    """

    def __init__(self, vocab_size: int, dim: int, num_layers: int, num_heads: int, num_kv_heads: int | None = None,
                 hidden: int | None = None, rope_base: float = 10000.0, eps: float = 1e-6):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, dim // num_heads
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, num_heads, num_kv_heads, hidden or 2 * dim, i, rope_base, eps) for i in range(num_layers)
        )
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """`input_ids` `(batch, seq)`, `position_ids` `(seq,)` or `(batch, seq)` -> logits `(batch, seq, vocab)`."""
        if position_ids.shape[-1] != input_ids.shape[-1]:
            raise ValueError(f"position_ids {tuple(position_ids.shape)} must give one position per token of input_ids {tuple(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, cache)
        return self.lm_head(self.norm(x))


# ------------------------------------------------------------------------------------------------
# Your part: the cache, its size, and generation.


class KVCache:
    """The keys and values of every layer seen so far, like transformers' `DynamicCache`.

    Each layer's keys and values are tensors `(batch, num_kv_heads, seq, head_dim)` that grow along
    the sequence dimension (-2) with every `update`. Layers are independent: layer 0's cache is not
    layer 1's.
    """

    def __init__(self):
        """An empty cache: no layer holds anything yet.

        How you store the layers is yours to choose; `DynamicCache` keeps one tensor of keys and one
        of values per layer, in lists indexed by `layer_idx`.
        """
        raise NotImplementedYet("KVCache.__init__")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new `key_states`, `value_states` `(batch, kv_heads, new, head_dim)` to layer `layer_idx`.

        Returns the layer's whole cache `(keys, values)`, each `(batch, kv_heads, past + new, head_dim)`:
        the new states concatenated after the old along dim -2. The first update of a layer may store its
        tensors as they are (DynamicCache does) or copy them into a buffer preallocated for more tokens
        (Meta's LLaMA, gpt-fast): either way only the `past + new` filled positions are returned. A later
        update whose batch, heads or head_dim, or dtype, differs from what the layer holds raises
        ValueError (it could only be a bug: concatenating would fail or silently cast).
        """
        raise NotImplementedYet("KVCache.update")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """How many tokens layer `layer_idx` holds: 0 for a layer that holds nothing yet."""
        raise NotImplementedYet("KVCache.get_seq_length")


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, seq_len: int, batch_size: int,
                   bytes_per_element: int = 2) -> int:
    """Bytes a full KV cache holds: keys *and* values, for every layer, head, position and sequence.

        2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * bytes_per_element

    An `int`. Llama-2-7B (32 layers, 32 kv heads, head_dim 128) at 4096 tokens in float16: 2 GiB.
    """
    raise NotImplementedYet("kv_cache_bytes")


@torch.no_grad()
def generate(model: TinyDecoder, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy decoding: append `max_new_tokens` tokens, each the argmax of the last position's logits.

    Args:
        model: a `TinyDecoder` (called as `model(input_ids, position_ids, cache)`).
        input_ids: `(batch, prompt_len)` prompt token ids.
        use_cache: with a cache (a fresh `KVCache`), run the model once over the whole prompt (the
            prefill), then feed only the newest token each step, at position `cache.get_seq_length()`.
            Without, run the model over the whole sequence so far at every step (positions 0, 1, ...).

    Returns:
        `(batch, prompt_len + max_new_tokens)`: the prompt followed by the new tokens. Both ways
        give the same tokens (and the model the same logits at every step).
    """
    raise NotImplementedYet("generate")
