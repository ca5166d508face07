"""Mutants of module 02 (RoPE): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

EXPONENTS = "exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim"
INV_FREQ_RETURN = "    return base ** (-exponents)\n"
ANGLES = "angles = positions[..., None].to(torch.float32) * inv_freq"
REPEAT = "angles = torch.cat([angles, angles], dim=-1)"
ROTATE = "    x1, x2 = x.chunk(2, dim=-1)\n    return torch.cat([-x2, x1], dim=-1)\n"
UNSQUEEZE = "        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)\n"
ROTATED = "rotated = x * cos + rotate_half(x) * sin"

MUTANTS = [
    Mutant("gptj_interleaved_layout", "pairs neighbouring coordinates (GPT-J / RoFormer layout) where rotate-half is asked",
           [(REPEAT, "angles = angles.repeat_interleave(2, dim=-1)"),
            (ROTATE, "    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)\n")]),
    Mutant("interleaved_rotation_only", "rotates neighbouring pairs but keeps the rotate-half tables",
           [(ROTATE, "    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)\n")]),
    Mutant("interleaved_tables_only", "repeats each frequency in place (f0 f0 f1 f1 ...) instead of cat([f, f])",
           [(REPEAT, "angles = angles.repeat_interleave(2, dim=-1)")]),
    Mutant("frequencies_not_repeated", "forgets to repeat the angles: tables of width head_dim // 2",
           [(REPEAT, "angles = angles")]),
    Mutant("rotate_half_sign_flipped", "puts the minus on the first half: cat([x2, -x1]) (rotates backwards)",
           [(ROTATE, "    x1, x2 = x.chunk(2, dim=-1)\n    return torch.cat([x2, -x1], dim=-1)\n")]),
    Mutant("exponent_i_over_d", "uses i / head_dim instead of 2i / head_dim",
           [(EXPONENTS, "exponents = torch.arange(0, head_dim // 2, dtype=torch.float32) / head_dim")]),
    Mutant("exponent_positive", "forgets the minus: base ** (2i / d) grows instead of falling",
           [(INV_FREQ_RETURN, "    return base ** exponents\n")]),
    Mutant("cos_sin_swapped", "returns (sin, cos)",
           [("    return angles.cos(), angles.sin()\n", "    return angles.sin(), angles.cos()\n")]),
    Mutant("positions_off_by_one", "counts positions from 1",
           [(ANGLES, "angles = (positions[..., None] + 1).to(torch.float32) * inv_freq")]),
    Mutant("positions_ignored", "uses 0, 1, 2, ... instead of the given positions",
           [(ANGLES, "angles = torch.arange(positions.shape[-1], device=positions.device).expand(positions.shape)[..., None].to(torch.float32) * inv_freq")]),
    Mutant("half_precision_angles", "computes the angles in float16: long positions drift by whole radians",
           [(ANGLES, "angles = (positions[..., None].to(torch.float16) * inv_freq.to(torch.float16)).to(torch.float32)")]),
    Mutant("bfloat16_positions", "casts the positions to bfloat16 (positions above 256 are rounded)",
           [(ANGLES, "angles = positions[..., None].to(torch.bfloat16) * inv_freq")]),
    Mutant("half_precision_inv_freq", "rounds inv_freq to float16: angles drift in proportion to the position",
           [(INV_FREQ_RETURN, "    return (base ** (-exponents)).to(torch.float16).to(torch.float32)\n")]),
    Mutant("odd_head_dim_accepted", "does not reject an odd head_dim",
           [("    if head_dim <= 0 or head_dim % 2 != 0:\n", "    if head_dim <= 0:\n")]),
    Mutant("base_ignored", "always uses base 10000",
           [(INV_FREQ_RETURN, "    return 10000.0 ** (-exponents)\n")]),
    Mutant("inv_freq_float64", "returns inv_freq in float64",
           [(INV_FREQ_RETURN, "    return base ** (-exponents.double())\n"),
            (ANGLES, "angles = positions[..., None].to(torch.float32) * inv_freq.float()")]),
    Mutant("tables_not_unsqueezed", "does not give batched tables a heads dimension",
           [(UNSQUEEZE, "        pass\n")]),
    Mutant("no_cast_back", "returns float32 for float16 and bfloat16 inputs",
           [("    return rotated.to(x.dtype)\n", "    return rotated\n")]),
    Mutant("only_cos", "forgets the rotate_half term: x * cos",
           [(ROTATED, "rotated = x * cos + 0 * sin")]),
    Mutant("detached", "detaches x (no gradient flows back)",
           [(ROTATED, "rotated = x.detach() * cos + rotate_half(x.detach()) * sin")]),
]

ALTERNATIVES = [
    Mutant("inv_freq_like_transformers", "computes inv_freq as 1 / base ** (2i / d), like transformers",
           [(INV_FREQ_RETURN, "    return 1.0 / (base ** exponents)\n")]),
    Mutant("inv_freq_exp_log", "computes inv_freq as exp(-(2i / d) * ln(base)) in float32",
           [(INV_FREQ_RETURN, "    return torch.exp(exponents * -torch.log(torch.tensor(base, dtype=torch.float32)))\n")]),
    Mutant("inv_freq_float64_rounded", "computes inv_freq in float64 and rounds it to float32 once",
           [(EXPONENTS, "exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim"),
            (INV_FREQ_RETURN, "    return (base ** (-exponents)).to(torch.float32)\n")]),
    Mutant("angles_in_float64", "computes the angles and their cos/sin in float64, returns float32",
           [(ANGLES, "angles = positions[..., None].to(torch.float64) * inv_freq.to(torch.float64)"),
            ("    return angles.cos(), angles.sin()\n", "    return angles.cos().float(), angles.sin().float()\n")]),
    Mutant("angles_by_einsum", "builds the angles with an outer product (einsum)",
           [(ANGLES, "angles = torch.einsum('...s,f->...sf', positions.to(torch.float32), inv_freq)")]),
    Mutant("tables_cast_to_x_dtype", "casts the tables to x.dtype first, as transformers does",
           [(ROTATED, "cos, sin = cos.to(x.dtype), sin.to(x.dtype)\n    rotated = x * cos + rotate_half(x) * sin")]),
    Mutant("rotate_half_by_slicing", "writes rotate_half with slices, as transformers does",
           [(ROTATE, "    half = x.shape[-1] // 2\n    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)\n")]),
    Mutant("complex_numbers", "rotates with complex multiplication: (x1 + i x2) * (cos + i sin)",
           [(ROTATED, "half = x.shape[-1] // 2\n"
                      "    z = torch.complex(x[..., :half].float(), x[..., half:].float())\n"
                      "    turned = z * torch.complex(cos[..., :half].float(), sin[..., :half].float())\n"
                      "    rotated = torch.cat([turned.real, turned.imag], dim=-1)")]),
    Mutant("explicit_pairs", "rotates each pair with the 2x2 formula (a cos - b sin, b cos + a sin)",
           [(ROTATED, "a, b = x.chunk(2, dim=-1)\n"
                      "    c, s = cos.chunk(2, dim=-1)[0], sin.chunk(2, dim=-1)[0]\n"
                      "    rotated = torch.cat([a * c - b * s, b * c + a * s], dim=-1)")]),
    # Conventions of public code bases (written here from their description)
    Mutant("meta_llama_complex_permuted", "as Meta's LLaMA: the tables from torch.polar, x viewed as complex numbers on "
           "interleaved pairs (view_as_complex), each pair (x[j], x[j + d/2]) permuted next to each other first and back after",
           [("    return angles.cos(), angles.sin()\n",
             "    freqs_cis = torch.polar(torch.ones_like(angles), angles)  # e^(i * angle)\n"
             "    return freqs_cis.real, freqs_cis.imag\n"),
            (ROTATED, "half = x.shape[-1] // 2\n"
                      "    # (..., d) -> (..., d/2, 2): pair j is (x[j], x[j + d/2]), interleaved as Meta's code expects\n"
                      "    pairs = x.float().unflatten(-1, (2, half)).transpose(-1, -2).contiguous()\n"
                      "    freqs_cis = torch.complex(cos[..., :half].float(), sin[..., :half].float())\n"
                      "    turned = torch.view_as_real(torch.view_as_complex(pairs) * freqs_cis)  # (..., d/2, 2)\n"
                      "    rotated = turned.transpose(-1, -2).flatten(-2)  # back to the rotate-half layout")]),
    Mutant("litgpt_outer_repeat", "as litgpt's build_rope_cache and apply_rope: theta = 1 / base ** (arange(0, d, 2) / d), the "
           "angles repeated with .repeat(..., 2), the sum computed in float32 and cast with .to(dtype=x.dtype)",
           [(INV_FREQ_RETURN, "    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))\n"),
            (REPEAT, "angles = angles.repeat(*([1] * (angles.dim() - 1)), 2)"),
            ("    return rotated.to(x.dtype)\n", "    return rotated.to(dtype=x.dtype)\n")]),
    Mutant("transformers_matmul_angles", "as transformers' LlamaRotaryEmbedding.forward: the angles as a float32 matmul "
           "inv_freq[:, None] @ positions[None, :], transposed, and the tables cast to x.dtype before the rotation",
           [(ANGLES, "angles = (inv_freq[:, None] @ positions.reshape(-1)[None, :].to(torch.float32)).T\n"
                     "    angles = angles.reshape(*positions.shape, -1)"),
            (ROTATED, "cos, sin = cos.to(x.dtype), sin.to(x.dtype)\n    rotated = x * cos + rotate_half(x) * sin")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
