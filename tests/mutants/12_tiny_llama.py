"""Mutants of module 12 (the capstone, a tiny Llama): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

MLP = "return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))"
ATTN_RESIDUAL = "hidden_states = hidden_states + attended  # residual around attention"
MLP_RESIDUAL = "return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))  # residual around the MLP"
HEAD = "return self.lm_head(self.model.norm(hidden))"
ROTATE = "rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)"
ANGLES = "angles = torch.cat([angles, angles], dim=-1)"
POSITIONS_NO_MASK = "positions = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)"
POSITIONS_MASK = "positions = (padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -seq:]  # (batch, seq)"
TIE = "            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two names\n"
MASK_PADDING = "allowed = allowed & padding_mask.bool()[:, None, None, :]  # (batch, 1, q_len, kv_len)"

MUTANTS = [
    # SwiGLU
    Mutant("gate_and_up_swapped", "puts the SiLU on up_proj and keeps gate_proj linear",
           [(MLP, "return self.down_proj(F.silu(self.up_proj(x)) * self.gate_proj(x))")]),
    Mutant("silu_on_the_product", "applies the SiLU to gate * up instead of to the gate branch alone",
           [(MLP, "return self.down_proj(F.silu(self.gate_proj(x) * self.up_proj(x)))")]),
    Mutant("gelu_instead_of_silu", "uses GELU as the gate's activation (GPT-2's MLP) instead of SiLU",
           [(MLP, "return self.down_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))")]),
    # the block and the model
    Mutant("attention_residual_missing", "drops the residual connection around attention",
           [(ATTN_RESIDUAL, "hidden_states = attended")]),
    Mutant("mlp_residual_missing", "drops the residual connection around the MLP",
           [(MLP_RESIDUAL, "return self.mlp(self.post_attention_layernorm(hidden_states))")]),
    Mutant("post_norm", "normalises after the residual sums (post-norm, the original Transformer) instead of before",
           [("attended = self.self_attn(self.input_layernorm(hidden_states), position_ids, padding_mask, cache, self.layer_idx)",
             "attended = self.self_attn(hidden_states, position_ids, padding_mask, cache, self.layer_idx)"),
            (ATTN_RESIDUAL, "hidden_states = self.input_layernorm(hidden_states + attended)"),
            (MLP_RESIDUAL, "return self.post_attention_layernorm(hidden_states + self.mlp(hidden_states))")]),
    Mutant("final_norm_missing", "feeds the last hidden states to lm_head without the final RMSNorm",
           [(HEAD, "return self.lm_head(hidden)")]),
    Mutant("rms_eps_ignored", "builds the RMSNorms with the default eps instead of config.rms_norm_eps",
           [("self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)", "self.input_layernorm = RMSNorm(config.hidden_size)"),
            ("self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)", "self.post_attention_layernorm = RMSNorm(config.hidden_size)"),
            ("self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)", "self.model.norm = RMSNorm(config.hidden_size)")]),
    Mutant("tied_embeddings_ignored", "gives lm_head its own weight even when tie_word_embeddings is set",
           [(TIE, "            pass\n")]),
    Mutant("head_dim_from_hidden_size", "takes head_dim = hidden_size // num_attention_heads, ignoring config.head_dim",
           [('head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads',
             "head_dim = config.hidden_size // config.num_attention_heads")]),
    # RoPE
    Mutant("interleaved_rope", "rotates interleaved pairs (2i, 2i+1), Meta's original layout, instead of transformers' rotate-half",
           [(ANGLES, "angles = angles.repeat_interleave(2, dim=-1)"),
            (ROTATE, "rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)")]),
    Mutant("rope_theta_ignored", "uses RoPE's default base 10000 whatever config.rope_parameters says",
           [("cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)", "cos, sin = rope_cos_sin(position_ids, self.head_dim)")]),
    Mutant("rope_on_values", "rotates the values too, not only queries and keys",
           [("q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)",
             "q, k, v = apply_rope(q, cos, sin), apply_rope(k, cos, sin), apply_rope(v, cos, sin)")]),
    # attention
    Mutant("gqa_heads_tiled", "repeats the key/value heads as a block (0, 1, 0, 1) instead of each head in turn (0, 0, 1, 1)",
           [("return x.repeat_interleave(n_rep, dim=1)", "return x.repeat(1, n_rep, 1, 1)")]),
    Mutant("scale_by_head_dim", "scales the scores by 1 / head_dim instead of 1 / sqrt(head_dim)",
           [("scale = q.shape[-1] ** -0.5 if scale is None else scale", "scale = q.shape[-1] ** -1.0 if scale is None else scale")]),
    Mutant("causal_mask_ignores_the_cache", "aligns the causal mask to the first key, so a cached step sees only the first tokens",
           [("allowed = allowed.tril(diagonal=kv_len - q_len)", "allowed = allowed.tril()")]),
    Mutant("padding_mask_ignored", "never masks the pad keys: real tokens attend to the padding",
           [(MASK_PADDING, "pass")]),
    Mutant("pad_rows_give_nan", "masks with -inf, so a pad query that sees no key gives NaN, which leaks into real tokens",
           [("scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)", "scores = scores.masked_fill(~allowed, float(\"-inf\"))")]),
    # positions and the cache
    Mutant("cache_positions_restart_at_zero", "places the new tokens at positions 0, 1, ... instead of after the cached ones",
           [(POSITIONS_NO_MASK, "positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)")]),
    Mutant("left_padding_not_in_decode_positions", "counts the pads in the positions of generated tokens (past + i) while the prompt counts real tokens only",
           [(POSITIONS_MASK, "positions = (padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -seq:]\n"
                             "            if past > 0:  # decoding: counts every cached column, pads included\n"
                             "                positions = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)")]),
    Mutant("padding_mask_not_extended", "does not extend the padding mask while generating: the new tokens are treated as pads",
           [("                mask = torch.cat([mask, torch.ones_like(new, dtype=torch.bool)], dim=1)",
             "                mask = torch.cat([mask, torch.zeros_like(new, dtype=torch.bool)], dim=1)")]),
    Mutant("generate_without_cache_refeeds", "feeds the whole sequence every step into the same cache (the cache fills with duplicates)",
           [("            logits = self(new, mask, cache)", "            logits = self(tokens, mask, cache) if mask is None else self(new, mask, cache)")]),
    Mutant("generate_one_token_short", "stops one token early (range(max_new_tokens - 1))",
           [("        for _ in range(max_new_tokens):\n            logits = self(new, mask, cache)",
             "        for _ in range(max_new_tokens - 1):\n            logits = self(new, mask, cache)")]),
]

ALTERNATIVES = [
    Mutant("repeat_kv_expand_like_transformers", "repeat_kv with expand and reshape, as transformers' repeat_kv",
           [("return x.repeat_interleave(n_rep, dim=1)",
             "batch, kv_heads, seq, head_dim = x.shape\n"
             "    return x[:, :, None].expand(batch, kv_heads, n_rep, seq, head_dim).reshape(batch, kv_heads * n_rep, seq, head_dim)")]),
    Mutant("sdpa_with_additive_mask", "attention through F.scaled_dot_product_attention with an additive float mask, as transformers' sdpa path",
           [("    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)\n"
             "    return (scores.softmax(dim=-1) @ v.to(torch.float32)).to(q.dtype)",
             "    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=q.device).masked_fill(~allowed, torch.finfo(torch.float32).min)\n"
             "    out = F.scaled_dot_product_attention(q.to(torch.float32), k.to(torch.float32), v.to(torch.float32), attn_mask=bias, scale=scale)\n"
             "    return out.to(q.dtype)")]),
    Mutant("positions_from_the_first_column", "positions counted from the first column (pads included) everywhere: RoPE sees only differences",
           [(POSITIONS_MASK, "positions = torch.arange(past, past + seq, device=input_ids.device).expand(batch, seq)")]),
    Mutant("rope_tables_in_input_dtype", "casts the cos/sin tables to x's dtype before rotating, as transformers does",
           [("return (x.to(torch.float32) * cos + rotated.to(torch.float32) * sin).to(x.dtype)",
             "return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)")]),
    Mutant("swiglu_functional", "SwiGLU through F.linear on the three weights",
           [(MLP, "return F.linear(F.silu(F.linear(x, self.gate_proj.weight)) * F.linear(x, self.up_proj.weight), self.down_proj.weight)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
