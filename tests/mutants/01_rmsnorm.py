"""Mutants of module 01 (RMSNorm): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

STATS = "mean_square = x32.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)"
NORMALISE = "normalised = (x32 * torch.rsqrt(mean_square + eps)).to(input_dtype)"

MUTANTS = [
    Mutant("mean_subtracted", "subtracts the mean first (LayerNorm without bias)",
           [("x32 = x.to(torch.float32)", "x32 = x.to(torch.float32)\n    x32 = x32 - x32.mean(dim=-1, keepdim=True)")]),
    Mutant("eps_outside_sqrt", "adds eps after the square root",
           [(NORMALISE, "normalised = (x32 / (torch.sqrt(mean_square) + eps)).to(input_dtype)")]),
    Mutant("no_float32_upcast", "computes the statistics in the input dtype (float16 squares overflow)",
           [("x32 = x.to(torch.float32)", "x32 = x")]),
    Mutant("weight_before_cast", "multiplies by the weight in float32 and casts last (wrong dtype with a float32 weight)",
           [("    if weight is None:\n        return normalised\n    return weight * normalised",
             "    if weight is None:\n        return normalised\n    return (weight * (x32 * torch.rsqrt(mean_square + eps))).to(input_dtype)")]),
    Mutant("wrong_reduction_dim", "reduces over the first dimension instead of the last",
           [(STATS, "mean_square = x32.pow(2).mean(dim=0, keepdim=True)")]),
    Mutant("mean_abs", "uses the mean of |x| instead of the root mean square",
           [(NORMALISE, "normalised = (x32 / (x32.abs().mean(dim=-1, keepdim=True) + eps)).to(input_dtype)")]),
    Mutant("sum_of_squares", "sums the squares instead of averaging them",
           [(STATS, "mean_square = x32.pow(2).sum(dim=-1, keepdim=True)")]),
    Mutant("no_sqrt", "divides by mean(x**2) without the square root",
           [(NORMALISE, "normalised = (x32 / (mean_square + eps)).to(input_dtype)")]),
    Mutant("unbiased_variance", "uses x.var() (centred, Bessel-corrected) as the mean square",
           [(STATS, "mean_square = x32.var(dim=-1, keepdim=True)")]),
    Mutant("weight_ignored", "never applies the weight",
           [("    return weight * normalised\n", "    return normalised\n")]),
    Mutant("gemma_one_plus_weight", "scales by (1 + weight), Gemma's convention",
           [("    return weight * normalised\n", "    return (1 + weight) * normalised\n")]),
    Mutant("no_cast_back", "returns float32 whatever the input dtype",
           [(NORMALISE, "normalised = x32 * torch.rsqrt(mean_square + eps)")]),
    Mutant("eps_ignored", "leaves eps out (all-zero rows give NaN)",
           [(NORMALISE, "normalised = (x32 * torch.rsqrt(mean_square)).to(input_dtype)")]),
    Mutant("layer_weight_random", "initialises the layer's weight randomly instead of with ones",
           [("self.weight = nn.Parameter(torch.ones(dim))", "self.weight = nn.Parameter(torch.randn(dim))")]),
    Mutant("layer_ignores_eps", "the layer's forward uses the default eps instead of its own",
           [("return rms_norm(x, self.weight, self.eps)", "return rms_norm(x, self.weight)")]),
    Mutant("layer_accepts_any_dim", "the layer accepts dim <= 0",
           [("        if dim <= 0:\n            raise ValueError", "        if dim < 0:\n            raise ValueError")]),
    Mutant("layer_no_shape_check", "the layer does not check the input's last dimension",
           [("        if x.shape[-1] != self.weight.shape[0]:\n", "        if False:\n")]),
    Mutant("layer_weight_not_parameter", "stores the weight as a plain tensor (not learnable, not in the state dict)",
           [("self.weight = nn.Parameter(torch.ones(dim))", "self.register_buffer('weight', torch.ones(dim))")]),
    # Well-known implementations that break the contract, named with the reason
    Mutant("torch_rms_norm_on_x", "calls torch.nn.functional.rms_norm(x, ..., weight) on x itself: its output keeps x's dtype, so a "
           "float16 x with a float32 weight gives float16 where the contract (LlamaRMSNorm, weight * y) gives float32",
           [(NORMALISE + "\n    if weight is None:\n        return normalised\n    return weight * normalised",
             "return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)")]),
    Mutant("t5_casts_to_the_weight_dtype", "transformers' T5LayerNorm: casts the float32 normalised x to a half-precision weight's "
           "dtype, so float32 x with a bfloat16 weight gives bfloat16 where the contract gives float32 (torch's promotion)",
           [(NORMALISE + "\n    if weight is None:\n        return normalised\n    return weight * normalised",
             "normalised = x32 * torch.rsqrt(mean_square + eps)\n"
             "    if weight is None:\n        return normalised.to(input_dtype)\n"
             "    if weight.dtype in (torch.float16, torch.bfloat16):\n        normalised = normalised.to(weight.dtype)\n"
             "    return weight * normalised")]),
    Mutant("litgpt_casts_to_the_input_dtype", "litgpt's RMSNorm: (x_normed * weight.float()).to(x.dtype), so a bfloat16 x with a "
           "float32 weight gives bfloat16 where the contract gives float32",
           [("    return weight * normalised\n", "    return (x32 * torch.rsqrt(mean_square + eps) * weight.float()).to(input_dtype)\n")]),
]

ALTERNATIVES = [
    Mutant("torch_functional_rms_norm", "uses torch.nn.functional.rms_norm on the float32 copy",
           [(NORMALISE, "normalised = torch.nn.functional.rms_norm(x32, (x32.shape[-1],), eps=eps).to(input_dtype)")]),
    Mutant("divide_by_sqrt", "divides by sqrt(mean + eps) instead of multiplying by rsqrt",
           [(NORMALISE, "normalised = (x32 / torch.sqrt(mean_square + eps)).to(input_dtype)")]),
    Mutant("vector_norm", "computes the mean square from the 2-norm",
           [(STATS, "mean_square = torch.linalg.vector_norm(x32, dim=-1, keepdim=True) ** 2 / x32.shape[-1]")]),
    # Conventions of public code bases (written here from their description)
    Mutant("float32_until_the_end", "stays in float32 until the end, as transformers' T5LayerNorm, and casts once to the "
           "promoted dtype of x and weight",
           [(NORMALISE + "\n    if weight is None:\n        return normalised\n    return weight * normalised",
             "normalised = x32 * torch.rsqrt(mean_square + eps)  # float32 to the end\n"
             "    if weight is None:\n        return normalised.to(input_dtype)\n"
             "    return (weight.to(torch.float32) * normalised).to(torch.promote_types(input_dtype, weight.dtype))")]),
    Mutant("meta_llama_type_as", "as Meta's LLaMA: _norm(x.float()).type_as(x), then output * weight",
           [("    x32 = x.to(torch.float32)\n", "    x32 = x.float()\n"),
            (NORMALISE, "normalised = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)")]),
    Mutant("llama2c_sum_then_divide", "as llama2.c's rmsnorm: the sum of x*x divided by the size, plus eps, then 1 / sqrt, "
           "times x (the weight multiplies last)",
           [(STATS, "mean_square = (x32 * x32).sum(dim=-1, keepdim=True) / x32.shape[-1]"),
            (NORMALISE, "normalised = ((1.0 / torch.sqrt(mean_square + eps)) * x32).to(input_dtype)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "t5_casts_to_the_weight_dtype": "it differs only for a weight stored in a lower precision than x (a float16 weight on float32 x), a pairing the fast public tests do not use; the hidden suite's type-promotion cases catch it",
}
