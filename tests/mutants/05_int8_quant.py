"""Mutants of module 05 (int8 quantization): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

UPCAST = "x32 = x.to(torch.float32)"
ABSMAX = "absmax = x32.abs().amax(dim=dim, keepdim=True)"
SAFE = "safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)"
SCALE = "q = torch.round(x32 * (127.0 / safe))"
CLAMP = "q = q.clamp(-127, 127).to(torch.int8)"
DEQUANT = "return q.to(torch.float32) * absmax.to(torch.float32) / 127.0"
RESCALE = "out = acc.to(torch.float32) * (ax * aw.T) / (127.0 * 127.0)"
OUTLIER_COLS = "outlier_cols = (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=0)"
REGULAR = "regular = x.masked_fill(outlier_cols, 0)"

MUTANTS = [
    Mutant("scale_255", "maps absmax to 255 (the uint8 range) and saturates", [(SCALE, "q = torch.round(x32 * (255.0 / safe))")]),
    Mutant("scale_128_no_clamp", "maps absmax to 128 and does not clamp: 128 wraps around to -128 in int8",
           [(SCALE, "q = torch.round(x32 * (128.0 / safe))"), (CLAMP, "q = q.to(torch.int8)")]),
    Mutant("scale_128_clamped", "maps absmax to 128 and clamps to [-128, 127]",
           [(SCALE, "q = torch.round(x32 * (128.0 / safe))"), (CLAMP, "q = q.clamp(-128, 127).to(torch.int8)")]),
    Mutant("truncate", "casts to int8 without rounding (truncation toward zero)", [(SCALE, "q = x32 * (127.0 / safe)")]),
    Mutant("per_tensor_absmax", "one absmax for the whole tensor where one per row (along dim) is asked",
           [(ABSMAX, "absmax = x32.abs().amax().expand_as(x32.abs().amax(dim=dim, keepdim=True))")]),
    Mutant("wrong_axis", "reduces over the first dimension instead of dim", [(ABSMAX, "absmax = x32.abs().amax(dim=0, keepdim=True)")]),
    Mutant("zero_division", "divides all-zero rows by their absmax of 0 (NaN cast to int8)", [(SAFE, "safe = absmax")]),
    Mutant("no_float32_upcast", "computes in the input dtype: float16 x * 127 overflows, scales come out float16", [(UPCAST, "x32 = x")]),
    Mutant("scales_in_input_dtype", "returns absmax in the input's dtype instead of float32", [("    return q, absmax\n", "    return q, absmax.to(x.dtype)\n")]),
    Mutant("q_not_int8", "returns q as rounded floats instead of int8", [(CLAMP, "q = q.clamp(-127, 127)")]),
    Mutant("dequant_divides", "dequantizes with q / absmax * 127 (the scale upside down)",
           [(DEQUANT, "return q.to(torch.float32) / absmax.to(torch.float32) * 127.0")]),
    Mutant("rescale_127_once", "rescales the int32 product by 127 instead of 127 * 127", [(RESCALE, "out = acc.to(torch.float32) * (ax * aw.T) / 127.0")]),
    Mutant("matmul_per_tensor_x", "quantizes x with one scale for the whole tensor", [("qx, ax = absmax_quantize(x, dim=-1)", "qx, ax = absmax_quantize(x, dim=None)")]),
    Mutant("threshold_strict", "treats only |x| > threshold as an outlier (bitsandbytes uses >=)", [(OUTLIER_COLS, OUTLIER_COLS.replace(">=", ">"))]),
    Mutant("outliers_elementwise", "takes out only the outlier values, not their whole columns",
           [(REGULAR, "regular = x.masked_fill(x.abs() >= threshold, 0)"),
            ("    if outlier_cols.any():\n        out = out + x[..., outlier_cols] @ w[:, outlier_cols].to(x.dtype).T",
             "    if outlier_cols.any():\n        out = out + (x - regular) @ w.to(x.dtype).T")]),
    Mutant("outlier_rows", "looks for outliers along the wrong axis (rows instead of columns)", [(OUTLIER_COLS, "outlier_cols = (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(dim=1)")]),
    Mutant("outliers_counted_twice", "feeds the whole x (outlier columns included) to int8_matmul and adds the float part too",
           [("out = int8_matmul(regular, w)", "out = int8_matmul(x, w)")]),
    Mutant("threshold_fixed_6", "ignores the threshold argument and always uses 6.0", [(OUTLIER_COLS, OUTLIER_COLS.replace("threshold", "6.0"))]),
    Mutant("matmul_returns_float32", "int8_matmul returns the float32 rescaled product for float16 and bfloat16 x (the contract: x.dtype)",
           [("    return out.to(x.dtype)\n", "    return out\n")]),
]

ALTERNATIVES = [
    Mutant("no_clamp", "does not clamp, as bitsandbytes: |x| <= absmax already keeps round(x * 127 / absmax) in [-127, 127]",
           [(CLAMP, "q = q.to(torch.int8)")]),
    Mutant("nan_to_num_guard", "divides by the absmax and replaces the NaN of all-zero rows before the int8 cast",
           [(SAFE, "safe = absmax"), (SCALE, "q = torch.nan_to_num(torch.round(x32 * 127.0 / safe), nan=0.0)")]),
    Mutant("subtract_regular", "gets the outlier part as (x - regular) @ w.T, which is zero outside the outlier columns",
           [("    if outlier_cols.any():\n        out = out + x[..., outlier_cols] @ w[:, outlier_cols].to(x.dtype).T",
             "    out = out + (x - regular) @ w.to(x.dtype).T")]),
    Mutant("amax_columns", "finds the outlier columns from the column-wise max of |x|",
           [(OUTLIER_COLS, "outlier_cols = x.abs().reshape(-1, x.shape[-1]).amax(dim=0) >= threshold")]),
    # Conventions of public code bases (written here from their description)
    Mutant("slicing_decomposition", "the literal reading of LLM.int8: int8_matmul(x[..., ~cols], w[:, ~cols]), so w's row scales "
           "cover the regular columns only",
           [(REGULAR + "  # outlier columns contribute nothing to the int8 part\n    out = int8_matmul(regular, w)",
             "out = int8_matmul(x[..., ~outlier_cols], w[:, ~outlier_cols])")]),
    Mutant("bitsandbytes_threshold_rule", "as bitsandbytes' int8_vectorwise_quant(x, threshold): only the values >= threshold leave "
           "x's row scales, then the outlier columns of the quantized x are zeroed; w quantized once per whole row",
           [(OUTLIER_COLS, "outliers = x.abs() >= threshold\n"
                           "    outlier_cols = outliers.reshape(-1, x.shape[-1]).any(dim=0)"),
            (REGULAR + "  # outlier columns contribute nothing to the int8 part\n    out = int8_matmul(regular, w)",
             "qx, ax = absmax_quantize(x.masked_fill(outliers, 0))  # the small values of outlier columns still set the scales\n"
             "    qx = qx.masked_fill(outlier_cols, 0)\n"
             "    qw, aw = absmax_quantize(w)\n"
             "    out = (int32_matmul(qx, qw).to(torch.float32) * (ax * aw.T) / (127.0 * 127.0)).to(x.dtype)")]),
    Mutant("llama_cpp_q8_0_rows", "llama.cpp's Q8_0 with one block per row: d = amax / 127, q = roundf(x * (1 / d)) rounding halves "
           "away from zero (id = 0 for an all-zero block), dequantized as q * d",
           [(SAFE, "d = absmax / 127.0  # the block's scale\n"
                   "    inverse = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)"),
            (SCALE, "scaled = x32 * inverse\n"
                    "    q = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)  # C's roundf: halves away from zero"),
            (DEQUANT, "return q.to(torch.float32) * (absmax.to(torch.float32) / 127.0)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "zero_division": "on CPU the NaN of 0 / 0 becomes 0 when cast to int8, so every output a public test can see is right",
    "matmul_per_tensor_x": "one scale for all of x stays inside the error bound a torch-only test can state for random rows; "
                           "bitsandbytes' row-wise int8 product (hidden) tells them apart",
    "outliers_elementwise": "keeping the small values of an outlier column in int8 changes the product by less than int8 "
                            "rounding; the hidden suite compares with bitsandbytes' mixed-precision product",
    "matmul_returns_float32": "the public tests multiply float32 inputs, where float32 is the right output dtype; the hidden suite checks float16 and bfloat16 inputs",
}
