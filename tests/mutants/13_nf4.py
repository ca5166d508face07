"""Mutants of module 13 (NF4 and QLoRA): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

CODE = "NF4_CODE = _normal_float_levels()"
ABSMAX = "absmax = blocks.abs().amax(dim=1)  # (n_blocks,)"
SAFE = "safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)  # all-zero block: 0 / 1 = 0"
SCALED = "scaled = blocks / safe.unsqueeze(1)  # in [-1, 1]"
INDEX = "index = torch.bucketize(scaled, midpoints).reshape(-1).to(torch.uint8)  # (numel,) in 0..15"
PACK = "packed = (index[0::2] << 4) | index[1::2]  # first element in the high nibble"
UNPACK = "index = torch.stack([high, low], dim=1).reshape(-1)[:numel]  # (numel,): high, low, high, low, ..."
APPLY_SCALES = "values = values.reshape(-1, blocksize) * absmax.to(torch.float32).unsqueeze(1)  # (n_blocks, blocksize)"
OFFSET = "offset = absmax.mean()  # centring puts the scales around 0, so the symmetric 8-bit grid fits them"
DQ_Q = "q = torch.round(padded * (127.0 / safe.unsqueeze(1))) + 128  # int8 range [-127, 127] shifted to [1, 255]"
DQ_BACK = "return (q.reshape(-1).to(torch.float32) - 128) / 127.0 * per_value + offset"
BITS = "    if not double_quant:\n        return 4 + 32 / blocksize\n    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)\n"
STORE = 'self.register_buffer("weight_packed", packed)  # uint8 (out * in / 2,)'
FORWARD = "result = nn.functional.linear(x, weight, bias)  # the dequantized weight lives only in this call"

MUTANTS = [
    Mutant("low_nibble_first", "packs the first element of each pair in the low nibble",
           [(PACK, "packed = (index[1::2] << 4) | index[0::2]")]),
    Mutant("low_nibble_first_both_ways", "low nibble first, consistently in quantize and dequantize (round trips, but not bitsandbytes' layout)",
           [(PACK, "packed = (index[1::2] << 4) | index[0::2]"),
            (UNPACK, "index = torch.stack([low, high], dim=1).reshape(-1)[:numel]")]),
    Mutant("one_absmax_per_tensor", "scales the whole tensor by one absmax instead of one per block",
           [(ABSMAX, "absmax = blocks.abs().amax().expand(blocks.shape[0])")]),
    Mutant("truncate_to_level_below", "takes the level at or below the value instead of the nearest one",
           [(INDEX, "index = (torch.bucketize(scaled, code, right=True) - 1).clamp(0, 15).reshape(-1).to(torch.uint8)")]),
    Mutant("uniform_levels", "uses 16 uniform levels (int4) instead of normal quantiles",
           [(CODE, "NF4_CODE = torch.linspace(-1.0, 1.0, 16)")]),
    Mutant("symmetric_levels_without_zero", "places 8 + 8 symmetric quantiles, so 0 is not a level",
           [(CODE, "NF4_CODE = torch.cat([-_normal_float_levels()[8:].flip(0), _normal_float_levels()[8:]])")]),
    Mutant("bits_without_scales", "counts 4 bits per parameter, forgetting the block scales",
           [(BITS, "    return 4.0\n")]),
    Mutant("bits_double_quant_without_second_scales", "with double quantization counts the 8-bit scales but not their float32 scales",
           [(BITS, "    if not double_quant:\n        return 4 + 32 / blocksize\n    return 4 + 8 / blocksize\n")]),
    Mutant("double_quant_without_mean", "double quantization without subtracting the mean of the scales",
           [(OFFSET, "offset = absmax.new_zeros(())")]),
    Mutant("double_dequant_forgets_offset", "double_dequantize does not add the offset back",
           [(DQ_BACK, "return (q.reshape(-1).to(torch.float32) - 128) / 127.0 * per_value")]),
    Mutant("double_quant_255_levels", "quantizes the centred scales with 255 per side (overflows the 8-bit code)",
           [(DQ_Q, "q = torch.round(padded * (255.0 / safe.unsqueeze(1))) + 128")]),
    Mutant("float_copy_kept", "keeps the base nn.Linear (and so its float weight) inside the module",
           [(STORE, STORE + "\n        self.base = base")]),
    Mutant("dequantized_weight_cached", "caches the dequantized weight on the module in forward",
           [(FORWARD, FORWARD + "\n        self.cached_weight = weight")]),
    Mutant("zero_block_division", "divides an all-zero block by its absmax of 0 (NaN indices)",
           [(SAFE, "safe = absmax")]),
    Mutant("scales_cycled", "applies the block scales cyclically (repeat) instead of block by block",
           [(APPLY_SCALES, "values = values * absmax.to(torch.float32).repeat(numel // absmax.numel())")]),
    Mutant("absmax_in_input_dtype", "computes in the input's dtype: absmax comes out float16/bfloat16",
           [("blocks = w.reshape(-1, blocksize).to(torch.float32)  # (n_blocks, blocksize)", "blocks = w.reshape(-1, blocksize)")]),
    Mutant("lora_scaling_ignored", "adds the LoRA path without alpha / r",
           [("return result + lora * self.scaling", "return result + lora")]),
    Mutant("bias_trainable", "leaves the bias trainable",
           [("self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)", "self.bias = nn.Parameter(base.bias.detach().clone())")]),
    Mutant("lora_B_random", "initialises lora_B randomly instead of with zeros",
           [("self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))", "self.lora_B = nn.Parameter(torch.randn(self.out_features, r, **factory))")]),
    Mutant("no_divisibility_check", "pads instead of raising ValueError when numel is not divisible by blocksize",
           [("    if blocksize <= 0 or w.numel() % blocksize != 0:\n        raise ValueError", "    if blocksize <= 0:\n        raise ValueError")]),
]

ALTERNATIVES = [
    Mutant("paper_table", "types the 16 levels of the QLoRA paper's appendix, as bitsandbytes' get_4bit_type does",
           [(CODE, "NF4_CODE = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, "
                   "-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, "
                   "0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, "
                   "0.5626170039176941, 0.7229568362236023, 1.0])")]),
    Mutant("argmin_distance", "finds the nearest level by the argmin of |value - level| over the 16 levels",
           [(INDEX, "index = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1).reshape(-1).to(torch.uint8)")]),
    Mutant("reciprocal_clamped_scale", "multiplies by 1 / absmax.clamp(min=1e-38) and clamps to [-1, 1], as bitsandbytes' CPU kernel",
           [(SCALED, "scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1)")]),
    Mutant("divmod_unpacking", "unpacks with // 16 and % 16 and interleaves by indexing",
           [("high, low = packed >> 4, packed & 0x0F  # (bytes,) each", "high, low = packed // 16, packed % 16"),
            (UNPACK, "index = torch.empty(2 * packed.numel(), dtype=packed.dtype, device=packed.device)\n"
                     "    index[0::2], index[1::2] = high, low\n    index = index[:numel]")]),
    Mutant("int8_view_double_quant", "stores the centred scales as signed int8 codes reinterpreted as uint8 (two's complement)",
           [(DQ_Q, "q = torch.round(padded * (127.0 / safe.unsqueeze(1))).to(torch.int8).view(torch.uint8)"),
            (DQ_BACK, "return q.reshape(-1).view(torch.int8).to(torch.float32) / 127.0 * per_value + offset")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
