"""Public tests of module 05 (int8 quantization). Run: pytest exercises/05_int8_quant

These check the essentials quickly; the grader's hidden tests check more (bitsandbytes as the oracle,
float16 and bfloat16, zero rows, error bounds, outlier thresholds). Read docs/05_int8_quant.md.
"""

import torch

from grader.harness.checks import assert_close, expect


def test_quantize_a_small_row(impl):
    """absmax_quantize([[1, -3, 0.5, 4]]) gives q = round(x * 127 / 4) as int8 and absmax [[4.]] as float32."""
    x = torch.tensor([[1.0, -3.0, 0.5, 4.0]])
    q, absmax = impl.absmax_quantize(x)
    expect(q.dtype == torch.int8, f"q should be an int8 tensor, got {q.dtype}: cast with .to(torch.int8) after rounding")
    expect(absmax.dtype == torch.float32, f"absmax should be float32, got {absmax.dtype}")
    assert_close(absmax, torch.tensor([[4.0]]), what="absmax of [[1, -3, 0.5, 4]] (keepdim: shape (1, 1))")
    expected = torch.tensor([[32, -95, 16, 127]])  # 31.75, -95.25, 15.875, 127
    expect(torch.equal(q.long(), expected), f"q should be {expected.tolist()}, got {q.tolist()}: x * 127 / absmax, rounded to the nearest "
        "integer (truncation gives 31 for 31.75; 128 instead of 127 overflows int8)")


def test_one_scale_per_row(impl):
    """Each row gets its own absmax, and the largest |x| of each row becomes +127 or -127."""
    x = torch.randn(5, 16) * torch.tensor([[0.01], [1.0], [100.0], [3.0], [0.5]])
    q, absmax = impl.absmax_quantize(x)
    assert_close(absmax, x.abs().amax(dim=-1, keepdim=True), what="absmax per row (shape (5, 1))")
    expect(torch.equal(q.abs().amax(dim=-1).long(), torch.full((5,), 127)), f"the largest |q| of every row should be 127, got {q.abs().amax(dim=-1).tolist()}")


def test_all_zero_row_gives_zeros(impl):
    """An all-zero row quantizes to zeros with absmax 0, and dequantizes to zeros (no NaN)."""
    x = torch.randn(3, 8)
    x[1] = 0.0
    q, absmax = impl.absmax_quantize(x)
    expect(torch.equal(q[1], torch.zeros(8, dtype=torch.int8)), f"the all-zero row should quantize to zeros, got {q[1].tolist()}")
    restored = impl.absmax_dequantize(q, absmax)
    assert_close(restored[1], torch.zeros(8), what="the dequantized all-zero row")


def test_round_trip_error_is_at_most_half_a_step(impl):
    """absmax_dequantize(absmax_quantize(x)) is float32 and within absmax / 254 of x everywhere."""
    x = torch.randn(4, 64) * 2.0
    q, absmax = impl.absmax_quantize(x)
    restored = impl.absmax_dequantize(q, absmax)
    expect(restored.dtype == torch.float32, f"absmax_dequantize should return float32, got {restored.dtype}")
    # Rounding to the nearest step of absmax/127 is off by at most half a step; float32 adds a hair.
    half_step = absmax / 254 * (1 + 1e-5)
    worst = ((restored - x).abs() - half_step).max().item()
    expect(worst <= 0, f"a dequantized value is {worst:.3g} further from x than half a step (absmax / 254)")


def test_whole_tensor_scale_when_dim_is_none(impl):
    """With dim=None there is one absmax for the whole tensor."""
    x = torch.randn(3, 10).clamp(-3, 3)
    x[2, 4] = 9.0
    q, absmax = impl.absmax_quantize(x, dim=None)
    expect(absmax.numel() == 1, f"dim=None should give a single absmax, got shape {tuple(absmax.shape)}")
    assert_close(absmax.reshape(()), torch.tensor(9.0), what="absmax over the whole tensor")
    scaled = x.double() * 127 / 9.0  # q must be a nearest integer of this (1e-4: float32 rounding)
    expect(q.shape == x.shape and ((q.double() - scaled).abs() <= 0.5 + 1e-4).all(), "q should be round(x * 127 / 9) with the one absmax 9 of the whole tensor")


def test_int8_matmul_approximates_the_float_product(impl):
    """int8_matmul(x, w) is close to x @ w.T: within the error that rounding x and w to int8 allows."""
    x, w = torch.randn(6, 32), torch.randn(10, 32)
    out = impl.int8_matmul(x, w)
    truth = x.double() @ w.double().T
    # |x - x^| <= ax/254 and |w - w^| <= aw/254 elementwise, so
    # |x @ w.T - x^ @ w^.T| <= sum_k (ax/254 |w| + aw/254 |x| + ax aw / 254**2).
    ax, aw = x.abs().amax(-1, keepdim=True).double(), w.abs().amax(-1, keepdim=True).double()
    bound = ax / 254 * w.double().abs().sum(-1) + (aw / 254 * x.double().abs().sum(-1)).T + 32 * ax * aw.T / 254**2
    expect(out.shape == (6, 10) and out.dtype == torch.float32, f"int8_matmul should give (6, 10) float32, got {tuple(out.shape)} {out.dtype}")
    excess = ((out.double() - truth).abs() - bound * (1 + 1e-5)).max().item()
    expect(excess <= 0, f"int8_matmul(x, w) is further from x @ w.T than int8 rounding allows (by {excess:.3g}): check the rescaling by ax * aw.T / 127**2")


def test_outlier_columns_go_through_floating_point(impl):
    """With a planted outlier column, int8_matmul_with_outliers is much closer to x @ w.T than int8_matmul."""
    x, w = torch.randn(8, 64).clamp(-3, 3), torch.randn(16, 64)
    x[:, 5] = 50.0 * torch.sign(torch.randn(8))  # one huge feature, as in LLM.int8's emergent features
    truth = x.double() @ w.double().T
    plain = (impl.int8_matmul(x, w).double() - truth).norm()
    mixed = (impl.int8_matmul_with_outliers(x, w).double() - truth).norm()
    expect(mixed < plain / 4, f"with the outlier column in floating point the error should be far smaller: {mixed:.3g} vs {plain:.3g} "
        "for int8_matmul. Take the columns with any |x| >= threshold out of the int8 product.")


def test_float16_input_is_quantized_in_float32(impl):
    """A float16 row of values near 1000 quantizes correctly (x * 127 overflows float16) and absmax is float32."""
    x = torch.tensor([[1000.0, -500.0, 250.0, 125.0]], dtype=torch.float16)
    q, absmax = impl.absmax_quantize(x)
    expect(absmax.dtype == torch.float32, (
        f"absmax of a float16 input should be float32, got {absmax.dtype}: compute on x.to(torch.float32) "
        "and return the scales in float32"))
    expected = torch.tensor([[127, -64, 32, 16]])  # 127, -63.5, 31.75, 15.875
    expect(torch.equal(q.long(), expected), (
        f"q of the float16 row [1000, -500, 250, 125] should be {expected.tolist()}, got {q.tolist()}.\n"
        "  Likely mistake: computing in float16, where 1000 * 127 = 127000 overflows (the largest float16 is 65504): "
        "upcast x to float32 first"))


def test_the_threshold_argument_decides_the_outliers(impl):
    """A column reaching the threshold exactly is an outlier (|x| >= threshold); below the given threshold it is not."""
    x, w = torch.randn(8, 64).clamp(-3, 3), torch.randn(16, 64)
    x[:, 5] = 40.0 * torch.sign(torch.randn(8))
    truth = x.double() @ w.double().T
    plain = (impl.int8_matmul(x, w).double() - truth).norm()
    at = (impl.int8_matmul_with_outliers(x, w, threshold=40.0).double() - truth).norm()
    expect(at < plain / 4, (
        f"with threshold=40 a column of |x| = 40 is an outlier column (|x| >= threshold), so the error should be far "
        f"smaller than int8_matmul's: {at:.3g} vs {plain:.3g}.\n  Likely mistake: |x| > threshold (strict); "
        "LLM.int8 uses >="))
    above = (impl.int8_matmul_with_outliers(x, w, threshold=60.0).double() - truth).norm()
    expect(above > plain / 2, (
        f"with threshold=60 no column is an outlier (the largest |x| is 40), so int8_matmul_with_outliers should be "
        f"as inexact as int8_matmul: error {above:.3g} vs {plain:.3g}.\n  Likely mistake: the threshold argument is "
        "ignored (6.0 hard-coded?)"))
