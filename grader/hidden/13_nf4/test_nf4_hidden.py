"""Hidden suite of module 13 (NF4 and QLoRA): bitsandbytes is the oracle, float64 the truth.

bitsandbytes' 4-bit functions run on CPU (`quantize_4bit`, `dequantize_4bit`, `get_4bit_type`, and
`nn.Linear4bit` under peft's LoRA). The oracle always runs on CPU, on the flattened tensor (its CPU
dequantization of 2-D shapes whose rows split blocks is wrong); the learner's code runs on `device`.

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call (where the learner's input is bitsandbytes' own output, that output is built first).

Run: pytest grader/hidden/13_nf4 --impl solutions   (or --impl path/to/submission)
"""

import math

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, tolerance_for
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [64, 128]
TIE = 1e-6  # contract: within 1e-6 of a midpoint between two levels, either neighbour is accepted


# ---------------------------------------------------------------------------------------------------
# Helpers


def bnb_code():
    """bitsandbytes' 16 NF4 levels in float64, (16,): asked for after the learner's call, never held at import."""
    return F.get_4bit_type("nf4", device="cpu").double()


def bnb_quantize(w, blocksize):
    """bitsandbytes' NF4 quantization of the flattened `w` on CPU: (packed uint8 (numel/2,), absmax float32)."""
    packed, state = F.quantize_4bit(w.detach().cpu().reshape(-1).clone(), blocksize=blocksize, quant_type="nf4")
    return packed.reshape(-1), state.absmax


def unpack(packed):
    """uint8 bytes -> 4-bit indices, high nibble first (int64, twice as many)."""
    packed = packed.reshape(-1).cpu().long()
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)


def scaled_values(w, absmax, blocksize):
    """w / absmax of its block, float64, flattened (0 for an all-zero block)."""
    blocks = w.detach().cpu().double().reshape(-1, blocksize)
    a = absmax.detach().cpu().double().reshape(-1, 1)
    return (blocks / torch.where(a == 0, torch.ones_like(a), a)).reshape(-1)


def near_tie(scaled, index_a, index_b):
    """True where indices differ by one level and the value lies within TIE of the midpoint between them."""
    code = bnb_code()
    low, high = torch.minimum(index_a, index_b), torch.maximum(index_a, index_b)
    midpoint = (code[low] + code[high.clamp(max=15)]) / 2
    return (high - low == 1) & ((scaled - midpoint).abs() <= TIE)


def index_mistakes(w, absmax, blocksize):
    """Indices the usual quantization mistakes give, to name them when the learner's match one."""
    code = bnb_code()
    scaled = scaled_values(w, absmax, blocksize)
    whole = scaled_values(w, w.detach().abs().max().reshape(1).expand(absmax.numel()).float(), blocksize)
    nearest = (scaled.unsqueeze(1) - code).abs().argmin(dim=1)
    below = (code.unsqueeze(0) <= scaled.unsqueeze(1) + 1e-12).sum(1).sub(1).clamp(0, 15)
    toward_zero = torch.where(scaled >= 0, below, (code.unsqueeze(0) >= scaled.unsqueeze(1) - 1e-12).int().argmax(1))
    return [
        ("the nibbles are swapped: the first element of each pair goes in the HIGH nibble, (i0 << 4) | i1",
         nearest.reshape(-1, 2).flip(1).reshape(-1)),
        ("you used uniform 4-bit levels (linspace(-1, 1, 16)); NF4's levels are normal quantiles (NF4_CODE)",
         torch.round((scaled + 1) * 7.5).clamp(0, 15).long()),
        ("you took the level below (or toward zero) instead of the nearest one",
         toward_zero),
        ("you used one absmax for the whole tensor; NF4 has one per block of blocksize values",
         (whole.unsqueeze(1) - code).abs().argmin(dim=1)),
    ]


def assert_indices_equal(packed, expected_packed, scaled, what, mistakes=()):
    """The learner's packed bytes hold the same 4-bit indices as bitsandbytes', except at near-ties."""
    assert isinstance(packed, torch.Tensor), f"{what} should be a tensor, got {type(packed).__name__}"
    assert packed.dtype == torch.uint8, f"{what} should have dtype torch.uint8 (two 4-bit indices per byte), got {packed.dtype}"
    assert_shape(packed, tuple(expected_packed.shape), what=what)
    got, want = unpack(packed), unpack(expected_packed)
    bad = (got != want) & ~near_tie(scaled, got, want)
    if not bool(bad.any()):
        return
    first = int(torch.nonzero(bad)[0])
    message = (
        f"{what} differs from bitsandbytes' quantize_4bit(quant_type='nf4') in {int(bad.sum())} of {bad.numel()} "
        f"4-bit indices; first at element {first} (byte {first // 2}, {'high' if first % 2 == 0 else 'low'} nibble): "
        f"got index {int(got[first])}, expected {int(want[first])} (value / absmax = {float(scaled[first]):.5f})."
    )
    for sentence, wrong in mistakes:
        if wrong.shape == got.shape and float((got == wrong).double().mean()) > 0.98:
            message += f"\n  Likely mistake: {sentence}"
            break
    raise AssertionError(message)


def truth_dequantize(packed, absmax, shape, blocksize):
    """float64 NF4_CODE[index] * absmax, from bitsandbytes' table."""
    index = unpack(packed)[: math.prod(shape)]
    return (bnb_code()[index].reshape(-1, blocksize) * absmax.double().cpu().reshape(-1, 1)).reshape(shape)


def weights(shape, dtype, device, scale=0.05):
    """Normally distributed weights, as pretrained ones roughly are."""
    return (torch.randn(shape) * scale).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# NF4_CODE


@pytest.mark.points(2)
def test_code_matches_bitsandbytes(impl):
    """NF4_CODE is the float32 (16,) table of bitsandbytes' get_4bit_type('nf4'): ascending, -1 and 1 at the ends, 0 exactly."""
    code = getattr(impl, "NF4_CODE", None)
    assert isinstance(code, torch.Tensor), f"NF4_CODE should be a tensor defined at module level, got {type(code).__name__}"
    assert code.dtype == torch.float32, f"NF4_CODE should be float32, got {code.dtype}"
    uniform = torch.linspace(-1, 1, 16, dtype=torch.float64)
    assert_close(code.cpu(), bnb_code(), what="NF4_CODE", dtype=torch.float32,
                 mistakes={"these are 16 uniform levels; NF4's levels are quantiles of a normal distribution": uniform})
    assert float(code[7]) == 0.0 and float(code[0]) == -1.0 and float(code[15]) == 1.0, (
        f"NF4_CODE should hold -1.0, 0.0 and 1.0 exactly (indices 0, 7, 15), got {code[0]}, {code[7]}, {code[15]}"
    )


# ---------------------------------------------------------------------------------------------------
# quantize_nf4 / dequantize_nf4 against bitsandbytes


@pytest.mark.points(6)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_matches_bitsandbytes(impl, device, dtype, blocksize):
    """quantize_nf4(w, blocksize) gives bitsandbytes' packed bytes (nibble order included) and absmax, for fp32/fp16/bf16 w."""
    w = weights((48, 256), dtype, device) * torch.logspace(-1, 1, 48, device=device).unsqueeze(1).to(dtype)
    packed, absmax = impl.quantize_nf4(w.clone(), blocksize)
    expected_packed, expected_absmax = bnb_quantize(w, blocksize)
    assert isinstance(absmax, torch.Tensor) and absmax.dtype == torch.float32, (
        f"absmax should be a float32 tensor, got {getattr(absmax, 'dtype', type(absmax))}"
    )
    assert_close(absmax, expected_absmax, what=f"absmax of {dtype} w with blocksize {blocksize} (one per block, shape ({expected_absmax.numel()},))",
                 mistakes={"you returned one absmax for the whole tensor; NF4 has one per block": lambda a: a.numel() == 1})
    assert_indices_equal(packed, expected_packed, scaled_values(w, expected_absmax, blocksize),
                         what=f"the packed indices of {dtype} w with blocksize {blocksize}", mistakes=index_mistakes(w, expected_absmax, blocksize))


@pytest.mark.points(2)
def test_quantize_one_block_per_scale(impl, device):
    """Blocks are consecutive runs of the flattened tensor: a block of huge values changes only its own indices."""
    w = weights((8, 64), torch.float32, device)
    w[3] *= 1000  # block 3 (blocksize 64) of the flattened tensor
    packed, absmax = impl.quantize_nf4(w.clone(), 64)
    expected_packed, expected_absmax = bnb_quantize(w, 64)
    assert_close(absmax, expected_absmax, what="absmax when one block is 1000 times larger than the others")
    assert_indices_equal(packed, expected_packed, scaled_values(w, expected_absmax, 64), what="the packed indices",
                         mistakes=index_mistakes(w, expected_absmax, 64))


@pytest.mark.points(3)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_matches_bitsandbytes(impl, device, dtype, blocksize):
    """dequantize_nf4(packed, absmax, shape, blocksize, dtype) equals bitsandbytes' dequantize_4bit, in dtype and shape."""
    w = weights((32, 128), dtype, "cpu")
    # order: the learner's input is bitsandbytes' own bytes and scales
    packed, state = F.quantize_4bit(w.reshape(-1).clone(), blocksize=blocksize, quant_type="nf4")
    out = impl.dequantize_nf4(packed.reshape(-1).clone().to(device), state.absmax.clone().to(device), (32, 128), blocksize, dtype)
    expected = F.dequantize_4bit(packed, state).reshape(32, 128)
    truth = truth_dequantize(packed, state.absmax, (32, 128), blocksize)
    low_first = (bnb_code()[unpack(packed).reshape(-1, 2).flip(1).reshape(-1)].reshape(-1, blocksize) * state.absmax.double().reshape(-1, 1)).reshape(32, 128)
    mistakes = {"you unpacked the low nibble first; the first element is in the high nibble (byte >> 4)": low_first}
    assert_close(out, expected, what=f"dequantize_nf4 to {dtype} with blocksize {blocksize}", mistakes=mistakes)
    assert_close(out, truth, what=f"dequantize_nf4 to {dtype} against the float64 NF4_CODE[index] * absmax", dtype=dtype, mistakes=mistakes)


@pytest.mark.points(3)
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_is_the_nearest_level(impl, device, dtype, blocksize):
    """dequantize(quantize(w)) is, for every value, the nearest of its block's 16 levels absmax * NF4_CODE."""
    w = weights((16, 256), dtype, device)
    shape = tuple(w.shape)
    packed, absmax = impl.quantize_nf4(w.clone(), blocksize)
    restored = impl.dequantize_nf4(packed, absmax, shape, blocksize, torch.float32)
    assert_shape(restored, shape, what="dequantize_nf4(*quantize_nf4(w), w.shape)")
    _, expected_absmax = bnb_quantize(w, blocksize)
    scaled = scaled_values(w, expected_absmax, blocksize)
    code = bnb_code()
    distance = (scaled.unsqueeze(1) - code).abs()  # (numel, 16)
    best = distance.min(dim=1).values
    got = restored.detach().cpu().double().reshape(-1, blocksize) / expected_absmax.double().reshape(-1, 1)
    error = (got.reshape(-1) - scaled).abs()
    worse = error > best + 2 * TIE + 1e-5  # float32 rounding of the levels and of absmax * level
    assert not bool(worse.any()), (
        f"{int(worse.sum())} of {worse.numel()} round-tripped values are not the nearest NF4 level: e.g. value / absmax "
        f"{float(scaled[worse][0]):.5f} came back as {float(got.reshape(-1)[worse][0]):.5f}, the nearest level is "
        f"{float(code[distance[worse][0].argmin()]):.5f}. Round to the NEAREST level (compare with the midpoints), not down or toward zero."
    )


@pytest.mark.points(2)
def test_all_zero_block(impl, device):
    """An all-zero block quantizes to the level 0.0 (index 7, bytes 0x77) with absmax 0 and dequantizes to zeros, no NaN."""
    w = weights((4, 64), torch.float32, device)
    w[1] = 0
    packed, absmax = impl.quantize_nf4(w, 64)
    assert float(absmax[1]) == 0.0, f"the absmax of an all-zero block should be 0, got {float(absmax[1])}"
    assert torch.equal(packed.reshape(-1)[32:64].cpu(), torch.full((32,), 0x77, dtype=torch.uint8)), (
        f"an all-zero block should pack to bytes 0x77 (index 7 = level 0.0 twice), got {packed.reshape(-1)[32:40].tolist()}...: "
        "guard the division by an absmax of 0"
    )
    restored = impl.dequantize_nf4(packed, absmax, (4, 64), 64)
    assert bool(torch.isfinite(restored).all()), "dequantize_nf4 gave NaN or inf for a tensor with an all-zero block"
    assert not bool(restored[1].any()), "an all-zero block should dequantize to zeros"


@pytest.mark.points(1)
@pytest.mark.parametrize("numel, blocksize", [(100, 64), (192, 128)])
def test_numel_not_divisible_raises(impl, numel, blocksize):
    """quantize_nf4 raises ValueError when w.numel() is not divisible by blocksize."""
    assert_raises(ValueError, impl.quantize_nf4, torch.randn(numel), blocksize, when=f"for {numel} values and blocksize {blocksize}")


@pytest.mark.points(2)
def test_nf4_beats_int4_on_normal_weights(impl, device):
    """On normally distributed weights NF4's round-trip error is below that of uniform 4-bit levels with the same blocks."""
    w = weights((64, 256), torch.float32, device, scale=1.0)
    packed, absmax = impl.quantize_nf4(w.clone(), 64)
    restored = impl.dequantize_nf4(packed, absmax, tuple(w.shape), 64)
    blocks = w.cpu().double().reshape(-1, 64)
    a = blocks.abs().amax(1, keepdim=True)
    int4 = (torch.round(blocks / a * 7).clamp(-7, 7) / 7 * a).reshape(w.shape)  # symmetric int4 absmax, 15 levels
    nf4_error = float((restored.cpu().double() - w.cpu().double()).pow(2).mean())
    int4_error = float((int4 - w.cpu().double()).pow(2).mean())
    assert nf4_error < 0.9 * int4_error, (
        f"NF4's mean squared error ({nf4_error:.3g}) should be clearly below int4's ({int4_error:.3g}) on normal weights: "
        "are the levels NF4_CODE (normal quantiles) and the rounding to the nearest level?"
    )


# ---------------------------------------------------------------------------------------------------
# Double quantization and storage cost


def block_scales(n_blocks):
    """A weight with n_blocks blocks of 64 of growing size, and bitsandbytes' float32 absmax of its blocks (n_blocks,)."""
    w = torch.randn(n_blocks * 64) * torch.linspace(0.01, 0.1, n_blocks).repeat_interleave(64)
    _, plain = F.quantize_4bit(w.clone(), blocksize=64, quant_type="nf4")
    return w, plain.absmax


def nested_state(w):
    """bitsandbytes' compress_statistics=True state of w (blocks of 64): (offset, nested absmax)."""
    _, nested = F.quantize_4bit(w.clone(), blocksize=64, quant_type="nf4", compress_statistics=True)
    return float(nested.offset), nested.state2.absmax


def assert_double_round_trip(impl, absmax, blocksize, what):
    q, scales, offset = impl.double_quantize(absmax.clone(), blocksize)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.uint8, f"q of {what} should be a uint8 tensor, got {getattr(q, 'dtype', type(q))}"
    assert q.numel() == absmax.numel(), f"q of {what} should hold one 8-bit code per scale ({absmax.numel()}), got {q.numel()}"
    n_blocks = -(-absmax.numel() // blocksize)
    assert isinstance(scales, torch.Tensor) and scales.dtype == torch.float32, f"scales should be float32, got {getattr(scales, 'dtype', type(scales))}"
    assert_shape(scales, (n_blocks,), what=f"scales of {what} (one per block of {blocksize})")
    restored = impl.double_dequantize(q, scales, offset, blocksize)
    per_value = scales.detach().cpu().double().repeat_interleave(blocksize)[: absmax.numel()]
    error = (restored.detach().cpu().double().reshape(-1) - absmax.cpu().double()).abs()
    allowed = per_value / 127 * (1 + 1e-5) + tolerance_for(torch.float32).atol * float(absmax.abs().max())
    bad = error > allowed
    assert not bool(bad.any()), (
        f"double_dequantize(double_quantize(absmax)) of {what} is off by {float(error[bad].max()):.3g} where its block allows "
        f"scale / 127 = {float(allowed[bad][0]):.3g} ({int(bad.sum())} of {bad.numel()} values): subtract the offset before "
        "quantizing, use one scale per block of the centred values, and add the offset back"
    )
    return q, scales, offset


@pytest.mark.points(3)
@pytest.mark.parametrize("n_blocks", [256, 600])
def test_double_quantize_matches_bitsandbytes_state(impl, device, n_blocks):
    """double_quantize(absmax, 256) has bitsandbytes' compress_statistics offset and nested absmax, and round-trips within scale / 127."""
    w, absmax = block_scales(n_blocks)  # order: the input is bitsandbytes' absmax of w
    _, scales, offset = assert_double_round_trip(impl, absmax.to(device), 256, f"{n_blocks} block scales")
    expected_offset, expected_scales = nested_state(w)
    offset = float(offset)
    assert math.isclose(offset, expected_offset, rel_tol=tolerance_for(torch.float32).rtol), (
        f"offset = {offset:.6g}, but bitsandbytes' is the mean of the scales, {expected_offset:.6g}"
        + (": you left the mean out (offset 0); QLoRA subtracts it so the symmetric 8-bit grid fits the positive scales" if offset == 0 else "")
    )
    uncentred = torch.stack([block.abs().max() for block in absmax.double().split(256)])
    assert_close(scales, expected_scales.to(device), what="scales (bitsandbytes' state2.absmax: the absmax of each block of absmax - offset)",
                 mistakes={"you took the absmax of each block of scales without subtracting their mean first": uncentred})


@pytest.mark.points(2)
@pytest.mark.parametrize("n, blocksize", [(1000, 256), (300, 128), (64, 256)])
def test_double_quantize_round_trip(impl, device, n, blocksize):
    """double_dequantize(*double_quantize(absmax, blocksize)) restores each scale within its block's scale / 127, any length."""
    absmax = (torch.rand(n) * 0.2 + 0.01).to(device)
    assert_double_round_trip(impl, absmax, blocksize, f"{n} scales with blocksize {blocksize}")


@pytest.mark.points(2)
def test_bits_per_parameter_as_in_the_paper(impl):
    """nf4_bits_per_parameter: 4.5 bits for blocks of 64, 4.127 with double quantization (QLoRA paper), exact formula."""
    cases = [
        ((64, False, 256), 4 + 32 / 64, "blocks of 64, float32 absmax: 4 + 32/64 = 4.5"),
        ((128, False, 256), 4 + 32 / 128, "blocks of 128: 4 + 32/128"),
        ((64, True, 256), 4 + 8 / 64 + 32 / (64 * 256), "double quantization: 4 + 8/64 + 32/(64*256) ~ 4.127"),
        ((32, True, 128), 4 + 8 / 32 + 32 / (32 * 128), "double quantization with blocks 32 and 128"),
    ]
    for (blocksize, double_quant, dq_blocksize), expected, meaning in cases:
        got = impl.nf4_bits_per_parameter(blocksize, double_quant, dq_blocksize)
        assert math.isclose(float(got), expected, rel_tol=1e-9), (
            f"nf4_bits_per_parameter({blocksize}, double_quant={double_quant}, dq_blocksize={dq_blocksize}) = {got}, expected "
            f"{expected:.6g} ({meaning})" + (": count each weight's share of its block's scale" if math.isclose(float(got), 4.0) else "")
        )
    assert abs(impl.nf4_bits_per_parameter(64, True) - 4.127) < 1e-3, "the QLoRA paper's figure with double quantization is 4.127 bits"


# ---------------------------------------------------------------------------------------------------
# QLoRALinear


def float_copies(module, numel):
    """Names of the floating-point tensors reachable from `module`'s attributes holding >= numel elements."""
    found, seen = [], set()

    def visit(value, name):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel() >= numel:
                found.append(f"{name} {tuple(value.shape)} {value.dtype}")
        elif isinstance(value, torch.nn.Module):
            for key, item in vars(value).items():
                visit(item, f"{name}.{key}")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{name}[{key!r}]")
        elif isinstance(value, (list, tuple, set)):
            for i, item in enumerate(value):
                visit(item, f"{name}[{i}]")

    visit(module, "layer")
    return found


def qlora_truth(x, base, lora_A, lora_B, scaling, blocksize):
    """float64 x @ nf4(W).T + bias + x @ A.T @ B.T * scaling, W quantized by bitsandbytes; and the tie slack."""
    shape = tuple(base.weight.shape)
    packed, absmax = bnb_quantize(base.weight, blocksize)
    w = truth_dequantize(packed, absmax, shape, blocksize)
    x64 = x.detach().cpu().double()
    out = x64 @ w.T + x64 @ lora_A.detach().cpu().double().T @ lora_B.detach().cpu().double().T * scaling
    if base.bias is not None:
        out = out + base.bias.detach().cpu().double()
    # A learner's index may differ from bitsandbytes' at a near-tie: one level gap times absmax per weight.
    scaled, code = scaled_values(base.weight, absmax, blocksize), bnb_code()
    tie = (scaled.unsqueeze(1) - (code[:-1] + code[1:]) / 2).abs().min(dim=1).values <= TIE
    gap = 0.3 * absmax.double().repeat_interleave(blocksize)  # the largest gap between levels is 0.277
    slack = x64.abs() @ (tie.double() * gap).reshape(shape).T
    return out, slack


def assert_qlora_close(out, truth, slack, dtype, what):
    assert_shape(out, tuple(truth.shape), what=what)
    assert out.dtype == dtype, f"{what} should have the input's dtype {dtype}, got {out.dtype}"
    tol = tolerance_for(dtype, out.device)
    got = out.detach().cpu().double()
    limit = slack + tol.atol * float(truth.abs().max()) + tol.rtol * truth.abs()
    bad = (got - truth).abs() > limit
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{what} is not close to x @ dequantize_nf4(W).T + bias + x @ A.T @ B.T * alpha / r: at index {index} got "
            f"{got[index].item():.6g}, expected {truth[index].item():.6g} ({int(bad.sum())} of {bad.numel()} values off)."
        )


def base_linear(in_features, out_features, bias, dtype, device):
    base = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        base.weight.normal_(0, 0.05)
        if bias:
            base.bias.normal_(0, 0.5)
    return base.to(device=device, dtype=dtype)


@pytest.mark.points(3)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_qlora_holds_no_float_copy_of_the_weight(impl, device, bias):
    """QLoRALinear keeps no floating-point copy of the base weight in any attribute, buffer or parameter, before or after forward."""
    base = base_linear(256, 128, bias, torch.float32, device)
    layer = impl.QLoRALinear(base, r=8, alpha=16.0)
    del base
    numel = 128 * 256 // 2  # half the weight is already far more than A, B, bias and the scales
    copies = float_copies(layer, numel)
    assert not copies, (
        f"QLoRALinear holds floating-point tensor(s) as large as the base weight: {copies}. Keep only the packed NF4 "
        "indices (uint8) and the block scales; do not keep `base` or its weight, dequantize inside forward"
    )
    layer(torch.randn(2, 256, device=device))
    copies = float_copies(layer, numel)
    assert not copies, f"after forward QLoRALinear holds float copies of the weight: {copies}: do not cache the dequantized weight"


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qlora_output_equals_the_formula(impl, device, dtype):
    """QLoRALinear(x) = x @ nf4(W).T + bias + x @ A.T @ B.T * alpha / r in x.dtype, W quantized as bitsandbytes does."""
    base = base_linear(128, 96, True, dtype, device)
    reference_base = base_linear(128, 96, True, dtype, device)
    reference_base.load_state_dict(base.state_dict())  # a copy: the learner's code may change `base`
    layer = impl.QLoRALinear(base, r=4, alpha=16.0, blocksize=64).to(device)
    assert layer.lora_A.dtype == dtype and layer.lora_B.dtype == dtype, (
        f"lora_A and lora_B should be in the base weight's dtype {dtype}, got {layer.lora_A.dtype}, {layer.lora_B.dtype}"
    )
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(96, 4) * 0.1)
    A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()  # the adapter, before forward can touch it
    x = torch.randn(3, 5, 128).to(device=device, dtype=dtype)
    with torch.no_grad():
        out = layer(x.clone())
    truth, slack = qlora_truth(x, reference_base, A, B, 16.0 / 4, 64)
    assert_qlora_close(out, truth, slack, dtype, f"QLoRALinear(x) for {dtype} x (r=4, alpha=16)")


@pytest.mark.points(3)
@pytest.mark.timeout(60)  # imports peft (and transformers with it) on first use: seconds on a busy machine
def test_qlora_matches_peft_over_bitsandbytes_linear4bit(impl):
    """QLoRALinear equals peft's LoRA over a bitsandbytes Linear4bit (nf4, blocks of 64) with the same A and B, on CPU."""
    from peft import LoraConfig, get_peft_model

    base = base_linear(128, 64, True, torch.float32, "cpu")
    reference_base = base_linear(128, 64, True, torch.float32, "cpu")
    reference_base.load_state_dict(base.state_dict())  # a copy: the learner's code may change `base`
    layer = impl.QLoRALinear(base, r=8, alpha=32.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(64, 8) * 0.1)
    A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()  # the adapter, before forward can touch it
    x = torch.randn(4, 7, 128)
    with torch.no_grad():
        out = layer(x.clone())

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = bnb.nn.Linear4bit(128, 64, bias=True, compute_dtype=torch.float32, compress_statistics=False, quant_type="nf4")

    net = Net()
    net.proj.weight = bnb.nn.Params4bit(
        reference_base.weight.detach().clone(), requires_grad=False, quant_type="nf4", blocksize=64, compress_statistics=False
    )  # QLoRALinear keeps its block scales in float32: no double quantization here
    net.proj.bias = torch.nn.Parameter(reference_base.bias.detach().clone(), requires_grad=False)
    net = net.to("cpu")  # quantizes the weight
    peft_model = get_peft_model(net, LoraConfig(r=8, lora_alpha=32, target_modules=["proj"], lora_dropout=0.0))
    peft_model.train()  # in eval mode bitsandbytes repacks the CPU weight for its own kernel, less precisely
    proj = peft_model.base_model.model.proj
    with torch.no_grad():
        proj.lora_A["default"].weight.copy_(A)
        proj.lora_B["default"].weight.copy_(B)
        expected = proj(x).double()
    _, slack = qlora_truth(x, reference_base, A, B, 4.0, 64)
    assert_qlora_close(out, expected, slack, torch.float32, "QLoRALinear(x) against peft's LoRA over Linear4bit")


@pytest.mark.points(2)
def test_qlora_initialisation_and_trainable_parameters(impl, device):
    """lora_A (r, in) uniform within 1/sqrt(in), lora_B (out, r) zeros, only A and B trainable; at start the output is the NF4 base's."""
    base = base_linear(256, 64, True, torch.float32, device)
    reference_base = base_linear(256, 64, True, torch.float32, device)
    reference_base.load_state_dict(base.state_dict())
    layer = impl.QLoRALinear(base, r=16, alpha=32.0)
    assert_shape(layer.lora_A, (16, 256), what="lora_A")
    assert_shape(layer.lora_B, (64, 16), what="lora_B")
    bound = 1 / math.sqrt(256)
    a = layer.lora_A.detach().cpu()
    assert float(a.abs().max()) <= bound * (1 + 1e-6) and float(a.abs().max()) > 0.8 * bound and float(a.std()) > 0.4 * bound, (
        f"lora_A should be kaiming-uniform with a=sqrt(5): uniform on [-1/sqrt(in), 1/sqrt(in)] = +-{bound:.4f}; "
        f"got max |A| {float(a.abs().max()):.4f}, std {float(a.std()):.4f}"
    )
    assert not bool(layer.lora_B.detach().any()), "lora_B should start at zeros, so the adapter changes nothing at first"
    trainable = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    assert len(trainable) == 2 and all("lora_A" in n or "lora_B" in n for n in trainable), (
        f"only lora_A and lora_B should be trainable, got {trainable}: freeze the bias (requires_grad=False)"
    )
    A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()  # the adapter, before forward can touch it
    x = torch.randn(6, 256, device=device)
    with torch.no_grad():
        out = layer(x.clone())
    truth, slack = qlora_truth(x, reference_base, A, B, 2.0, 64)
    assert_qlora_close(out, truth, slack, torch.float32, "QLoRALinear(x) right after construction")


@pytest.mark.points(2)
def test_qlora_gradients_reach_only_the_adapter(impl, device):
    """Backward gives lora_A and lora_B the gradients of the float64 formula and nothing else a gradient."""
    base = base_linear(128, 64, True, torch.float32, device)
    reference_base = base_linear(128, 64, True, torch.float32, device)
    reference_base.load_state_dict(base.state_dict())
    layer = impl.QLoRALinear(base, r=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(64, 4) * 0.1)
    A0, B0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()  # the adapter, before forward can touch it
    x = torch.randn(5, 128, device=device)
    grad_out = torch.randn(5, 64, device=device)
    layer(x.clone()).backward(grad_out.clone())
    A = A0.cpu().double().requires_grad_()
    B = B0.cpu().double().requires_grad_()
    (x.cpu().double() @ A.T @ B.T * 2.0).backward(grad_out.cpu().double())
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None, "lora_A and lora_B got no gradient"
    assert_close(layer.lora_A.grad, A.grad, what="the gradient of lora_A", dtype=torch.float32)
    assert_close(layer.lora_B.grad, B.grad, what="the gradient of lora_B", dtype=torch.float32)
    others = [name for name, p in layer.named_parameters() if p.grad is not None and "lora_" not in name]
    assert not others, f"parameters other than lora_A and lora_B got gradients: {others}"
