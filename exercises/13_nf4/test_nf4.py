"""Public tests of module 13 (NF4 and QLoRA). Run: pytest exercises/13_nf4

These check the essentials quickly; the grader's hidden tests check more (bitsandbytes' quantize_4bit and
its double quantization as the oracle, peft's LoRA over a 4-bit Linear, more dtypes). Read docs/13_nf4.md.
"""

import math

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, expect

# The 16 levels printed in the QLoRA paper's appendix (bitsandbytes stores the same table).
PAPER_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=torch.float64)


def nf4_code(impl):
    """The learner's NF4_CODE; a stub that has not defined it yet reads as 'not implemented yet'."""
    from grader import NotImplementedYet

    code = getattr(impl, "NF4_CODE", None)
    if code is None:
        raise NotImplementedYet("NF4_CODE")
    return code


def unpack(packed):
    """uint8 bytes -> 4-bit indices, high nibble first."""
    packed = packed.reshape(-1).long()
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)


def nearest_indices(w, blocksize):
    """The index of the nearest level to every value / its block's absmax (float64), and its distance to a midpoint."""
    blocks = w.double().reshape(-1, blocksize)
    absmax = blocks.abs().amax(1, keepdim=True)
    scaled = (blocks / torch.where(absmax == 0, torch.ones_like(absmax), absmax)).reshape(-1)
    midpoints = (PAPER_LEVELS[:-1] + PAPER_LEVELS[1:]) / 2
    near_midpoint = (scaled.unsqueeze(1) - midpoints).abs().min(1).values <= 1e-6
    return (scaled.unsqueeze(1) - PAPER_LEVELS).abs().argmin(1), near_midpoint


def test_code_is_the_sixteen_normal_float_levels(impl):
    """NF4_CODE is a float32 tensor of 16 ascending levels from -1.0 to 1.0 with 0.0 exactly: the QLoRA paper's table."""
    code = nf4_code(impl)
    expect(isinstance(code, torch.Tensor) and code.dtype == torch.float32, f"NF4_CODE should be a float32 tensor, got {getattr(code, 'dtype', type(code))}")
    assert_shape(code, (16,), what="NF4_CODE")
    expect(float(code[0]) == -1.0 and float(code[7]) == 0.0 and float(code[15]) == 1.0,
           f"NF4_CODE should be exactly -1.0, 0.0 and 1.0 at indices 0, 7 and 15, got {float(code[0])}, {float(code[7])}, {float(code[15])}")
    assert_close(code, PAPER_LEVELS, what="NF4_CODE", dtype=torch.float32,
                 mistakes={"these are uniform levels (int4); NF4's levels are quantiles of a normal distribution": torch.linspace(-1, 1, 16, dtype=torch.float64)})


def test_quantize_a_small_block_by_hand(impl):
    """quantize_nf4 of [2, -2, 0, 1] (blocksize 4): absmax 2, indices 15, 0, 7, 12, packed high nibble first: bytes 0xF0, 0x7C."""
    packed, absmax = impl.quantize_nf4(torch.tensor([2.0, -2.0, 0.0, 1.0]), blocksize=4)
    assert_close(absmax, torch.tensor([2.0]), what="absmax of the block [2, -2, 0, 1]")
    expect(isinstance(packed, torch.Tensor) and packed.dtype == torch.uint8, f"packed should be a uint8 tensor, got {getattr(packed, 'dtype', type(packed))}")
    assert_shape(packed, (2,), what="packed (two 4-bit indices per byte)")
    got = [int(b) for b in packed]
    message = f"packed should be [0xF0, 0x7C] = [240, 124], got {got} = {[hex(b) for b in got]}."
    if got == [0x0F, 0xC7]:
        message += " Likely mistake: the first element of each pair belongs in the HIGH nibble: (i0 << 4) | i1."
    elif got[1] == 0x7D:
        message += " Likely mistake: 1 / 2 = 0.5 is nearer to the level 0.4407 (index 12) than to 0.5626 (index 13): round to the nearest level."
    expect(got == [0xF0, 0x7C], message)


def test_quantize_picks_the_nearest_level_per_block(impl):
    """quantize_nf4(w, 64) of random weights: float32 absmax per block, and every index the nearest level to value / absmax."""
    w = torch.randn(8, 128) * torch.logspace(-2, 0, 8).unsqueeze(1)
    packed, absmax = impl.quantize_nf4(w, blocksize=64)
    expected_absmax = w.abs().reshape(-1, 64).amax(1)
    assert_close(absmax, expected_absmax, what="absmax (one float32 per block of 64)",
                 mistakes={"you used one absmax for the whole tensor: NF4 has one per block": lambda a: a.numel() == 1})
    assert_shape(packed, (w.numel() // 2,), what="packed")
    expected, near_midpoint = nearest_indices(w, 64)
    got = unpack(packed)
    bad = (got != expected) & ~near_midpoint
    expect(not bool(bad.any()), (
        f"{int(bad.sum())} of {bad.numel()} indices are not the nearest level; first at element {int(torch.nonzero(bad)[0]) if bool(bad.any()) else -1}: "
        f"got {int(got[bad][0]) if bool(bad.any()) else -1}, expected {int(expected[bad][0]) if bool(bad.any()) else -1}. Scale by the block's absmax and round to the nearest level."
    ))


def test_dequantize_inverts_quantize(impl):
    """dequantize_nf4(packed, absmax, shape, 64, dtype) gives NF4_CODE[index] * absmax of the block, in shape and dtype."""
    w = torch.randn(4, 64) * 0.1
    packed, absmax = impl.quantize_nf4(w, 64)
    index, _ = nearest_indices(w, 64)
    truth = (PAPER_LEVELS[unpack(packed)].reshape(-1, 64) * absmax.double().unsqueeze(1)).reshape(4, 64)
    low_first = (PAPER_LEVELS[unpack(packed).reshape(-1, 2).flip(1).reshape(-1)].reshape(-1, 64) * absmax.double().unsqueeze(1)).reshape(4, 64)
    mistakes = {"you read the low nibble first; the first element is the HIGH nibble (byte >> 4)": low_first}
    for dtype in (torch.float32, torch.bfloat16):
        out = impl.dequantize_nf4(packed, absmax, (4, 64), 64, dtype)
        assert_close(out, truth, what=f"dequantize_nf4(..., dtype={dtype})", dtype=dtype, mistakes=mistakes)


def test_all_zero_block(impl):
    """An all-zero block has absmax 0 and quantizes to level 0.0 (index 7), with no NaN."""
    w = torch.randn(3, 64)
    w[1] = 0
    packed, absmax = impl.quantize_nf4(w, 64)
    expect(float(absmax[1]) == 0.0, f"absmax of an all-zero block should be 0, got {float(absmax[1])}")
    expect(bool((unpack(packed)[64:128] == 7).all()), "an all-zero block should quantize to index 7 (level 0.0): avoid dividing 0 by 0")
    expect(not bool(impl.dequantize_nf4(packed, absmax, (3, 64), 64)[1].any()), "an all-zero block should dequantize to zeros")


def test_quantize_rejects_a_bad_blocksize(impl):
    """quantize_nf4 raises ValueError when the number of values is not divisible by blocksize."""
    assert_raises(ValueError, impl.quantize_nf4, torch.randn(100), 64, when="for 100 values and blocksize 64")


def test_double_quantize_round_trip(impl):
    """double_quantize subtracts the mean, stores 8-bit codes and one float32 scale per block; the round trip is within scale / 127."""
    absmax = torch.rand(600) * 0.1 + 0.02
    q, scales, offset = impl.double_quantize(absmax, 256)
    expect(isinstance(q, torch.Tensor) and q.dtype == torch.uint8, f"q should be uint8, got {getattr(q, 'dtype', type(q))}")
    expect(math.isclose(float(offset), float(absmax.double().mean()), rel_tol=1e-5),
           f"offset should be the mean of the scales, {float(absmax.mean()):.5g}, got {float(offset):.5g}")
    assert_shape(scales, (3,), what="scales (600 values in blocks of 256: 3 blocks, the last one shorter)")
    restored = impl.double_dequantize(q, scales, offset, 256)
    allowed = scales.double().repeat_interleave(256)[:600] / 127 * (1 + 1e-5)
    error = (restored.double().reshape(-1) - absmax.double()).abs()
    expect(bool((error <= allowed).all()), (
        f"double_dequantize(double_quantize(absmax)) is off by up to {float(error.max()):.3g}; each block allows scale / 127 "
        f"({float(allowed.min()):.3g}). Did you add the offset back and use one scale per block?"
    ))


def test_bits_per_parameter(impl):
    """nf4_bits_per_parameter: 4 + 32/64 = 4.5 bits, and 4 + 8/64 + 32/(64*256) ~ 4.127 with double quantization."""
    plain = impl.nf4_bits_per_parameter(64)
    expect(math.isclose(plain, 4.5, rel_tol=1e-9), f"nf4_bits_per_parameter(64) should be 4.5 (4 bits + a float32 absmax per 64 weights), got {plain}")
    double = impl.nf4_bits_per_parameter(64, double_quant=True)
    expect(math.isclose(double, 4 + 8 / 64 + 32 / (64 * 256), rel_tol=1e-9),
           f"nf4_bits_per_parameter(64, double_quant=True) should be 4 + 8/64 + 32/(64*256) = 4.127, got {double}")


def float_tensors_as_large_as(layer, numel):
    """The names of the float tensors a module holds (parameters, buffers and plain attributes) with at least `numel` values."""
    tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
    for prefix, module in layer.named_modules():
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{name}" if prefix else name] = value
    return sorted(name for name, t in tensors.items() if t.is_floating_point() and t.numel() >= numel)


def test_qlora_linear_keeps_only_nf4(impl):
    """QLoRALinear holds the base weight only as NF4 (no float tensor as large as it, even after forward) and only lora_A, lora_B are trainable."""
    base = torch.nn.Linear(128, 64)
    layer = impl.QLoRALinear(base, r=4, alpha=8.0)
    large = float_tensors_as_large_as(layer, 64 * 128 // 2)
    expect(not large, f"QLoRALinear holds float tensors as large as the weight: {large}: keep only the packed NF4 bytes and the scales")
    with torch.no_grad():
        layer(torch.randn(2, 128))
    large = float_tensors_as_large_as(layer, 64 * 128 // 2)
    expect(not large, f"after forward, QLoRALinear holds float tensors as large as the weight: {large}. Likely mistake: you stored "
                      "the dequantized weight on the module (self.something = weight); keep it a local variable of forward")
    trainable = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    expect(trainable == ["lora_A", "lora_B"], f"only lora_A and lora_B should be trainable, got {trainable}")


def test_qlora_linear_output(impl):
    """QLoRALinear(x) = x @ dequantize(W).T + bias + x @ A.T @ B.T * alpha / r for float32 x."""
    base = torch.nn.Linear(128, 32)
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    layer = impl.QLoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(32, 4) * 0.1)
    index, _ = nearest_indices(weight, 64)
    absmax = weight.double().reshape(-1, 64).abs().amax(1, keepdim=True)
    w_nf4 = (PAPER_LEVELS[index].reshape(-1, 64) * absmax).reshape(32, 128)
    x = torch.randn(5, 128)
    A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    truth = x.double() @ w_nf4.T + bias.double() + x.double() @ A.T @ B.T * 2.0
    mistakes = {"the LoRA path is missing its scaling alpha / r": x.double() @ w_nf4.T + bias.double() + x.double() @ A.T @ B.T}
    with torch.no_grad():
        assert_close(layer(x), truth, what="QLoRALinear(x)", dtype=torch.float32, mistakes=mistakes)


def test_qlora_linear_starts_as_the_quantized_base(impl):
    """A fresh QLoRALinear has lora_B = 0 (the LoRA update starts at zero), so its output is x @ dequantize(W).T + bias."""
    base = torch.nn.Linear(128, 32)
    weight, bias = base.weight.detach().clone(), base.bias.detach().clone()
    layer = impl.QLoRALinear(base, r=4, alpha=8.0)
    expect(tuple(layer.lora_B.shape) == (32, 4) and not bool(layer.lora_B.detach().any()),
           "lora_B should start as zeros of shape (out_features, r), as in module 03: a random lora_B changes the "
           "pretrained layer's output before any training. Likely mistake: torch.randn instead of torch.zeros for lora_B")
    expect(bool(layer.lora_A.detach().any()), "lora_A should be drawn at random (kaiming-uniform, a=sqrt(5)), not zeros: "
                                               "with A and B both zero the LoRA update never gets a gradient")
    index, _ = nearest_indices(weight, 64)
    absmax = weight.double().reshape(-1, 64).abs().amax(1, keepdim=True)
    w_nf4 = (PAPER_LEVELS[index].reshape(-1, 64) * absmax).reshape(32, 128)
    x = torch.randn(5, 128)
    with torch.no_grad():
        assert_close(layer(x), x.double() @ w_nf4.T + bias.double(), what="a fresh QLoRALinear(x)", dtype=torch.float32)


def test_quantize_a_bfloat16_weight(impl):
    """quantize_nf4 of a bfloat16 weight computes in float32: absmax is float32, and every index is the nearest level."""
    w = (torch.randn(4, 128) * 0.05).to(torch.bfloat16)
    packed, absmax = impl.quantize_nf4(w, blocksize=64)
    expect(isinstance(absmax, torch.Tensor) and absmax.dtype == torch.float32,
           f"absmax of a bfloat16 weight should be float32 (as bitsandbytes stores it), got {getattr(absmax, 'dtype', type(absmax))}. "
           "Likely mistake: you computed in the input's dtype; cast the blocks to float32 first")
    assert_close(absmax, w.double().abs().reshape(-1, 64).amax(1), what="absmax of a bfloat16 weight", dtype=torch.float32)
    expected, near_midpoint = nearest_indices(w, 64)
    bad = (unpack(packed) != expected) & ~near_midpoint
    expect(not bool(bad.any()), f"{int(bad.sum())} of {bad.numel()} indices of a bfloat16 weight are not the nearest level: "
                                "divide by absmax and compare with the levels in float32, not in bfloat16")
