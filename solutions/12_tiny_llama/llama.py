"""Module 12 (the capstone): a Llama, assembled from the pieces you built in this course.

    model = TinyLlama(config)                                  # a transformers.LlamaConfig
    model.load_state_dict(LlamaForCausalLM(config).state_dict())   # strict: the same names and shapes
    logits = model(input_ids, padding_mask)                    # (batch, seq, vocab), as LlamaForCausalLM
    tokens = model.generate(input_ids, max_new_tokens=20)      # greedy, with a KV cache

The file has two parts. First the pieces of earlier modules: RMSNorm (01), RoPE (02), the KV cache (06)
and grouped-query attention (09). Paste your own implementations into them (adapting the names where
yours differ) or write them again; the public tests check each one on its own. Then the new parts:
`SwiGLU`, `DecoderLayer` and `TinyLlama`. Only `SwiGLU` and `TinyLlama` are graded by the hidden tests,
against transformers' `LlamaMLP` and `LlamaForCausalLM`. Read docs/12_tiny_llama.md first.

Shapes: `batch` sequences of `seq` tokens; `hidden` = config.hidden_size; `heads` query heads and
`kv_heads` key/value heads of `head_dim` each.
"""

import torch
import torch.nn.functional as F
from torch import nn

# ================================================================================================
# Pieces from earlier modules: paste your own implementation here.
# ================================================================================================


class RMSNorm(nn.Module):
    """Module 01: `x / sqrt(mean(x**2) + eps) * weight` over the last dimension (paste your own implementation here).

    Statistics in float32, cast back to `x.dtype` before the weight, as `LlamaRMSNorm`. A parameter
    `weight` of shape `(dim,)`, initialised to ones.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        ### BEGIN SOLUTION
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x32 = x.to(torch.float32)
        normalised = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normalised.to(x.dtype)
        ### END SOLUTION


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Module 02: the rotary tables for integer `positions` `(seq,)` or `(batch, seq)` (paste your own implementation here).

    Returns `(cos, sin)`, each `positions.shape + (head_dim,)`, float32: the angles
    `positions * base ** (-2i / head_dim)` for i < head_dim / 2, repeated twice (`cat([f, f])`).
    """
    ### BEGIN SOLUTION
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., seq, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()
    ### END SOLUTION


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Module 02: rotate `x` `(batch, heads, seq, head_dim)` by `cos`/`sin` `(seq, head_dim)` or `(batch, seq, head_dim)` (paste your own implementation here).

    The rotate-half layout of transformers' Llama: `x * cos + rotate_half(x) * sin`, where
    `rotate_half(x) = cat([-x2, x1])` for the halves `x1, x2` of the last dimension. Result in `x.dtype`.
    """
    ### BEGIN SOLUTION
    if cos.dim() == 3:  # one table per sequence, shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.to(torch.float32) * cos + rotated.to(torch.float32) * sin).to(x.dtype)
    ### END SOLUTION


class KVCache:
    """Module 06: the keys and values of every layer so far, like `DynamicCache` (paste your own implementation here).

    `update(key_states, value_states, layer_idx)` appends `(batch, kv_heads, new, head_dim)` states
    along dim -2 and returns the layer's whole cache; `get_seq_length(layer_idx=0)` counts its tokens.
    """

    def __init__(self):
        ### BEGIN SOLUTION
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        ### END SOLUTION

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        ### BEGIN SOLUTION
        if layer_idx == len(self.keys):  # the layer's first update
            self.keys.append(key_states)
            self.values.append(value_states)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]
        ### END SOLUTION

    def get_seq_length(self, layer_idx: int = 0) -> int:
        ### BEGIN SOLUTION
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0
        ### END SOLUTION


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Module 09: `(batch, kv_heads, seq, head_dim)` -> `(batch, kv_heads * n_rep, seq, head_dim)` (paste your own implementation here).

    Each key/value head repeated `n_rep` times consecutively (heads 0, 0, 1, 1, ... for n_rep = 2),
    so that query head h uses key/value head `h // n_rep`, as transformers' `repeat_kv`.
    """
    ### BEGIN SOLUTION
    return x.repeat_interleave(n_rep, dim=1)
    ### END SOLUTION


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              padding_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Module 09: softmax attention with GQA, a causal mask and a key padding mask (paste your own implementation here).

    `q` `(batch, heads, q_len, head_dim)`, `k`/`v` `(batch, kv_heads, kv_len, head_dim)`; scores
    `q @ k^T * scale` (default `head_dim ** -0.5`), softmax in float32, output `(batch, heads, q_len,
    head_dim)` in `q.dtype`. `causal`: query i (of the last q_len positions) sees keys
    `j <= i + kv_len - q_len`. `padding_mask` `(batch, kv_len)`, True = a real token.

    New here: with left padding, a pad *query* sees no real key at all. Its row must still give finite
    numbers (no NaN): a NaN there would reach the real tokens of the next layer through `0 * NaN`.
    Mask with the dtype's most negative finite value instead of `-inf`, as transformers' eager attention.
    """
    ### BEGIN SOLUTION
    heads, kv_heads = q.shape[1], k.shape[1]
    k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)
    q_len, kv_len = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.to(torch.float32) @ k.to(torch.float32).transpose(-2, -1)) * scale  # (batch, heads, q_len, kv_len)
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(diagonal=kv_len - q_len)
    if padding_mask is not None:
        allowed = allowed & padding_mask.bool()[:, None, None, :]  # (batch, 1, q_len, kv_len)
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return (scores.softmax(dim=-1) @ v.to(torch.float32)).to(q.dtype)
    ### END SOLUTION


class GroupedQueryAttention(nn.Module):
    """Module 09: Llama's attention layer, `q_proj`, `k_proj`, `v_proj`, `o_proj` without bias (paste your own implementation here).

    `forward(hidden_states, position_ids=None, padding_mask=None, cache=None, layer_idx=0)`:
    `hidden_states` `(batch, seq, hidden)` -> `(batch, seq, hidden)`. Project to queries, keys and
    values, rotate queries and keys by RoPE at `position_ids` (`(seq,)` or `(batch, seq)`; default
    `arange(seq)` after what `cache` holds), store keys and values in `cache` (`cache.update(k, v,
    layer_idx)`), attend causally over everything cached, project out. `padding_mask` `(batch, past +
    seq)` covers the cached and the new tokens.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int | None = None,
                 rope_theta: float = 10000.0):
        super().__init__()
        ### BEGIN SOLUTION
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)
        ### END SOLUTION

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, cache=None, layer_idx: int = 0) -> torch.Tensor:
        ### BEGIN SOLUTION
        batch, seq, _ = hidden_states.shape
        if position_ids is None:
            past = cache.get_seq_length(layer_idx) if cache is not None else 0
            position_ids = torch.arange(past, past + seq, device=hidden_states.device)
        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        q = self.q_proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)  # (batch, kv_heads, past + seq, head_dim)
        out = attention(q, k, v, causal=True, padding_mask=padding_mask)  # (batch, heads, seq, head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))
        ### END SOLUTION


# ================================================================================================
# New in this module: the MLP, the block, the model.
# ================================================================================================


class SwiGLU(nn.Module):
    """Llama's feed-forward block: `down_proj(silu(gate_proj(x)) * up_proj(x))`, as transformers' `LlamaMLP`.

    Three linears without bias: `gate_proj` and `up_proj` `hidden_size -> intermediate_size`,
    `down_proj` `intermediate_size -> hidden_size`. `x` `(..., hidden_size)` -> `(..., hidden_size)`.
    The SiLU (`x * sigmoid(x)`) goes on the gate branch only; the up branch stays linear.
    """

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        ### END SOLUTION


class DecoderLayer(nn.Module):
    """One Llama block (pre-norm): `h = x + attn(norm1(x))`, then `h + mlp(norm2(h))`.

    Submodules named as `LlamaDecoderLayer`'s: `input_layernorm`, `self_attn` (a
    `GroupedQueryAttention`), `post_attention_layernorm`, `mlp` (a `SwiGLU`). `layer_idx` is this
    layer's slot in the KV cache.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        rope_theta = config.rope_parameters["rope_theta"]  # transformers 5 keeps RoPE's base here
        ### BEGIN SOLUTION
        self.layer_idx = layer_idx
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                               head_dim, rope_theta)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        ### END SOLUTION

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                cache=None) -> torch.Tensor:
        """`hidden_states` `(batch, seq, hidden)`, `position_ids` `(batch, seq)` -> `(batch, seq, hidden)`."""
        ### BEGIN SOLUTION
        attended = self.self_attn(self.input_layernorm(hidden_states), position_ids, padding_mask, cache, self.layer_idx)
        hidden_states = hidden_states + attended  # residual around attention
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))  # residual around the MLP
        ### END SOLUTION


class TinyLlama(nn.Module):
    """`LlamaForCausalLM`, built from the course's pieces: the same parameter names, the same logits.

    Parameters (so that `load_state_dict(LlamaForCausalLM(config).state_dict())` is strict):
    `model.embed_tokens` (an `nn.Embedding(vocab_size, hidden_size)`), `model.layers` (an
    `nn.ModuleList` of `DecoderLayer`), `model.norm` (an `RMSNorm`), `lm_head` (an `nn.Linear(hidden_size,
    vocab_size, bias=False)`). With `config.tie_word_embeddings`, `lm_head.weight` *is* the Parameter
    `model.embed_tokens.weight` (one tensor, counted once by `parameters()`).

    The config's fields: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, head_dim (may differ from hidden_size /
    num_attention_heads), rms_norm_eps, tie_word_embeddings, and RoPE's theta, which transformers 5
    keeps in `config.rope_parameters["rope_theta"]` (see `DecoderLayer.__init__`).
    """

    def __init__(self, config):
        super().__init__()
        ### BEGIN SOLUTION
        self.config = config
        self.model = nn.Module()  # a plain container, so that the names start with "model."
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two names
        ### END SOLUTION

    def forward(self, input_ids: torch.Tensor, padding_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Logits `(batch, seq, vocab)` of the new tokens `input_ids` `(batch, seq)`.

        `cache`: None, or an object with `update` and `get_seq_length` (your `KVCache`, transformers'
        `DynamicCache`) holding the earlier tokens; the new ones sit after them. `padding_mask`: bool
        or 0/1 `(batch, past + seq)`, True/1 = a real token, covering the cached and the new tokens;
        with left padding, a sequence's first *real* token is at position 0, as in transformers'
        `generate` (positions are the running count of real tokens, minus one).
        """
        ### BEGIN SOLUTION
        batch, seq = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if padding_mask is None:
            positions = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)
        else:
            padding_mask = padding_mask.bool()
            positions = (padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -seq:]  # (batch, seq)
        hidden = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            hidden = layer(hidden, positions, padding_mask, cache)
        return self.lm_head(self.model.norm(hidden))
        ### END SOLUTION

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding with a KV cache: `(batch, prompt)` -> `(batch, prompt + max_new_tokens)`.

        Prefill the prompt once into a fresh `KVCache`, then feed one token a step (the argmax of the
        last logits), extending `padding_mask` (if any) with a real token each step. Exactly
        `max_new_tokens` new tokens, no early stop: equal to `LlamaForCausalLM.generate(input_ids,
        attention_mask=padding_mask, do_sample=False, max_new_tokens=..., eos_token_id=None)`.
        """
        ### BEGIN SOLUTION
        cache = KVCache()
        tokens, new = input_ids, input_ids
        mask = padding_mask.bool() if padding_mask is not None else None
        for _ in range(max_new_tokens):
            logits = self(new, mask, cache)
            new = logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1)
            tokens = torch.cat([tokens, new], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(new, dtype=torch.bool)], dim=1)
        return tokens
        ### END SOLUTION
