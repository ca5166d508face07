"""Mutants of module 09 (attention: MHA, MQA, GQA): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

SCALE = "        scale = head_dim ** -0.5"
REPEAT = "    k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)  # (batch, heads, kv_len, head_dim)"
COMPUTE = "    compute = torch.promote_types(q.dtype, torch.float32)  # float32 for fp16/bf16, float64 stays float64"
SCORES = "    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale  # (batch, heads, q_len, kv_len)"
CAUSAL = "        allowed = allowed.tril(diagonal=kv_len - q_len)"
PADDING = "        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]"
MASK = '    scores = scores.masked_fill(~allowed, float("-inf"))'
SOFTMAX = "    probs = scores.softmax(dim=-1)  # over the keys"
OUTPUT = "    return (probs @ v.to(compute)).to(q.dtype)"
ROTATE = "    rotated = torch.cat([-x2, x1], dim=-1)"
PAST = "        past = cache.get_seq_length(layer_idx) if cache is not None else 0"
O_PROJ = "        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))"
ATTEND = "        out = attention(q, k, v, causal=True, padding_mask=padding_mask)  # (batch, heads, seq, head_dim)"
ROPE_QK = "        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)"

MUTANTS = [
    Mutant("scale_one_over_d", "scales the scores by 1/head_dim instead of 1/sqrt(head_dim)",
           [(SCALE, "        scale = head_dim ** -1.0")]),
    Mutant("custom_scale_ignored", "always uses head_dim ** -0.5, ignoring the scale argument",
           [("    if scale is None:\n" + SCALE, "    scale = head_dim ** -0.5")]),
    Mutant("softmax_over_queries", "takes the softmax over the queries (dim -2) instead of the keys",
           [(SOFTMAX, "    probs = scores.softmax(dim=-2)")]),
    Mutant("causal_top_left", "aligns the causal mask top-left (tril()), wrong when kv_len > q_len",
           [(CAUSAL, "        allowed = allowed.tril()")]),
    Mutant("causal_ignored", "never applies the causal mask",
           [(CAUSAL, "        pass")]),
    Mutant("kv_heads_tiled", "repeats the kv heads in the wrong order, [a, b, a, b] instead of [a, a, b, b]",
           [("    return x.repeat_interleave(n_rep, dim=1)", "    return x.repeat(1, n_rep, 1, 1)")]),
    Mutant("repeat_kv_accepts_zero", "does not reject n_rep < 1",
           [("    if n_rep < 1:\n        raise ValueError", "    if n_rep < 0:\n        raise ValueError")]),
    Mutant("padding_ignored", "ignores the padding mask",
           [(PADDING, "        pass")]),
    Mutant("padding_inverted", "treats True in the padding mask as padding",
           [(PADDING, "        allowed = allowed & ~padding_mask.to(torch.bool)[:, None, None, :]")]),
    Mutant("softmax_in_half_precision", "computes the scores and the softmax in the input dtype (fp16/bf16)",
           [(COMPUTE, "    compute = q.dtype")]),
    Mutant("output_not_cast_back", "returns float32 for fp16/bf16 inputs",
           [(OUTPUT, "    return probs @ v.to(compute)")]),
    Mutant("masked_with_zero", "sets masked scores to 0 instead of -inf (masked keys still get weight)",
           [(MASK, "    scores = scores.masked_fill(~allowed, 0.0)")]),
    Mutant("heads_not_checked", "does not check that heads is a multiple of kv_heads",
           [("    if heads % kv_heads != 0:\n        raise ValueError", "    if heads < kv_heads:\n        raise ValueError")]),
    Mutant("rope_interleaved", "pastes GPT-J's interleaved RoPE (pairs (2i, 2i+1)) instead of rotate-half",
           [("    x1, x2 = x.chunk(2, dim=-1)\n" + ROTATE,
             "    x1, x2 = x[..., 0::2], x[..., 1::2]\n    rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)\n"
             "    cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)\n"
             "    sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)")]),
    Mutant("rope_sign_flipped", "rotates the wrong way: rotate_half gives (x2, -x1)",
           [(ROTATE, "    rotated = torch.cat([x2, -x1], dim=-1)")]),
    Mutant("positions_not_offset", "starts the positions at 0 whatever the cache holds",
           [(PAST, "        past = 0")]),
    Mutant("rope_on_queries_only", "rotates the queries but not the keys",
           [(ROPE_QK, "        q = apply_rope(q, cos, sin)")]),
    Mutant("o_proj_forgotten", "returns the heads concatenated without the output projection",
           [(O_PROJ, "        return out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)")]),
    Mutant("heads_merged_without_transpose", "reshapes (batch, heads, seq, head_dim) to (batch, seq, -1) without transposing first",
           [(O_PROJ, "        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.head_dim))")]),
    Mutant("module_not_causal", "the module attends to future tokens (causal=False)",
           [(ATTEND, "        out = attention(q, k, v, causal=False, padding_mask=padding_mask)")]),
    Mutant("module_ignores_padding", "the module never passes its padding mask on",
           [(ATTEND, "        out = attention(q, k, v, causal=True)")]),
    Mutant("rope_theta_ignored", "uses base 10000 whatever rope_theta says",
           [("        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta)",
             "        cos, sin = rope_cos_sin(position_ids, self.head_dim)")]),
    Mutant("saving_inverted", "returns num_kv_heads / num_heads",
           [("    return num_heads / num_kv_heads", "    return num_kv_heads / num_heads")]),
    Mutant("module_heads_not_checked", "GroupedQueryAttention accepts num_heads not a multiple of num_kv_heads",
           [("        if num_kv_heads < 1 or num_heads % num_kv_heads != 0:\n            raise ValueError",
             "        if num_kv_heads < 1:\n            raise ValueError")]),
]

ALTERNATIVES = [
    Mutant("sdpa", "masks with a bool attn_mask and calls F.scaled_dot_product_attention on float32 copies (PyTorch's fused path)",
           [(MASK + "\n\n" + SOFTMAX + "\n" + OUTPUT,
             "    out = torch.nn.functional.scaled_dot_product_attention(\n"
             "        q.to(compute), k.to(compute), v.to(compute), attn_mask=allowed, scale=scale)\n"
             "    return out.to(q.dtype)")]),
    Mutant("transformers_eager", "matmuls in the input dtype, an additive mask of finfo.min, softmax(dtype=float32) cast back (transformers' eager attention)",
           [(COMPUTE, "    compute = q.dtype  # the matmuls stay in the input dtype"),
            (MASK, "    scores = scores + torch.zeros_like(scores).masked_fill(~allowed, torch.finfo(scores.dtype).min)"),
            (SOFTMAX, "    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)")]),
    Mutant("grouped_einsum", "never repeats the kv heads: folds the query heads into (kv_heads, group) and uses einsum (as JAX code bases do)",
           [(REPEAT, "    groups = heads // kv_heads"),
            (SCORES, "    qg = q.to(compute).view(batch, kv_heads, groups, q_len, head_dim)\n"
                     "    scores = torch.einsum('bkgqd,bkjd->bkgqj', qg, k.to(compute)).reshape(batch, heads, q_len, kv_len) * scale"),
            (OUTPUT, "    out = torch.einsum('bkgqj,bkjd->bkgqd', probs.view(batch, kv_heads, groups, q_len, kv_len), v.to(compute))\n"
                     "    return out.reshape(batch, heads, q_len, head_dim).to(q.dtype)")]),
    Mutant("expand_reshape_and_functional_linear", "repeats heads with expand + reshape (transformers' repeat_kv) and projects with F.linear on the weights",
           [("    return x.repeat_interleave(n_rep, dim=1)",
             "    batch, kv_heads, seq, head_dim = x.shape\n"
             "    return x[:, :, None].expand(batch, kv_heads, n_rep, seq, head_dim).reshape(batch, kv_heads * n_rep, seq, head_dim)"),
            ("        q = self.q_proj(hidden_states).view(", "        q = torch.nn.functional.linear(hidden_states, self.q_proj.weight).view("),
            (O_PROJ, "        merged = out.permute(0, 2, 1, 3).reshape(batch, seq, -1)\n"
                     "        return torch.nn.functional.linear(merged, self.o_proj.weight)")]),
    Mutant("complex_rope_rotate_half", "RoPE through complex numbers on the (x1, x2) halves, as Meta's reference code rotates (x_{2i}, x_{2i+1})",
           [("    x1, x2 = x.chunk(2, dim=-1)\n" + ROTATE + "\n    return (x * cos + rotated * sin).to(x.dtype)",
             "    half = x.shape[-1] // 2\n"
             "    z = torch.complex(x[..., :half].double(), x[..., half:].double())\n"
             "    turn = torch.complex(cos[..., :half].double(), sin[..., :half].double())\n"
             "    w = z * turn\n"
             "    return torch.cat([w.real, w.imag], dim=-1).to(x.dtype)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "softmax_in_half_precision": "its only difference from transformers' eager path (an accepted alternative: bf16 matmuls, "
                                 "float32 softmax) is the rounding of the probabilities to bf16, within the bf16 tolerance of a CPU "
                                 "check; the hidden suite compares fp16/bf16 outputs against a float32 SDPA oracle at a tighter bound",
}
