"""Hidden suite of module 05 (int8 quantization): bitsandbytes is the oracle, float64 the truth.

bitsandbytes' int8 functions run on CPU (pure PyTorch kernels) and on CUDA (its own kernels):
`int8_vectorwise_quant` / `int8_vectorwise_dequant` for absmax rows, `int8_linear_matmul` +
`int8_mm_dequant` for the int8 product, and `nn.Linear8bitLt` (with and without LLM.int8's outlier
threshold) as a whole layer.

Run: pytest grader/hidden/05_int8_quant --impl solutions   (or --impl path/to/submission)

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call, so nothing the learner's code could find in memory holds the answer yet.
"""

import pytest
import torch

from grader.harness.checks import assert_close, assert_shape, tolerance_for
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------------------------------
# Helpers


def bnb_quantize_rows(x):
    """bitsandbytes' row-wise absmax quantization of a 2-D tensor: (q int8, absmax float32 (rows, 1)).

    Its CUDA kernel takes float16 only; other dtypes go through its CPU kernel (plain PyTorch).
    """
    source = x if x.device.type == "cpu" or x.dtype == torch.float16 else x.cpu()
    q, stats, _ = F.int8_vectorwise_quant(source.contiguous().clone())
    return q.to(x.device), stats.reshape(-1, 1).to(x.device)


def rounding_ties(x, absmax):
    """True where x * 127 / absmax lies so close to a half-integer that float32 may round it either way.

    A correct implementation may compute `x * (127 / absmax)` or `x * 127 / absmax` or in float64: the
    float32 results differ by a few units in the last place, which only matters next to a tie.
    """
    scaled = x.double() * 127 / absmax.double().clamp_min(1e-300)
    frac = scaled - scaled.floor()
    return (frac - 0.5).abs() <= 1e-5 * scaled.abs().clamp_min(1.0)


def assert_q_equal(q, expected, ties, what, mistakes=()):
    """q is int8 and equals expected, except at rounding ties where it may be one step off."""
    assert isinstance(q, torch.Tensor), f"{what} should be a tensor, got {type(q).__name__}"
    assert_shape(q, tuple(expected.shape), what=what)
    assert q.dtype == torch.int8, f"{what} should have dtype torch.int8, got {q.dtype}: cast with .to(torch.int8) after rounding"
    diff = (q.cpu().long() - expected.cpu().long()).abs()
    ties = ties.cpu()
    bad = (diff > 1) | ((diff == 1) & ~ties)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    message = (
        f"{what} differs from bitsandbytes' int8_vectorwise_quant in {int(bad.sum())} of {bad.numel()} values; "
        f"first at index {index}: got {int(q.cpu()[index])}, expected {int(expected.cpu()[index])}."
    )
    for sentence, wrong in mistakes:
        if wrong.shape == q.shape and bool(((q.cpu().long() - wrong.cpu().long()).abs() <= 1).all()):
            message += f"\n  Likely mistake: {sentence}"
            break
    raise AssertionError(message)


def q_mistakes(x, absmax):
    """What the usual quantization mistakes give (as int64, unclamped where the mistake does not clamp)."""
    x32 = x.detach().double().cpu()
    a = absmax.double().cpu().clamp_min(1e-300)
    whole = x32.abs().max().clamp_min(1e-300)
    return [
        ("you scaled by 128 (or 255) instead of 127: absmax must map to 127, the largest symmetric int8", torch.round(x32 * 128 / a).clamp(-128, 127)),
        ("you truncated (int cast) instead of rounding to the nearest integer: use torch.round before .to(torch.int8)", (x32 * 127 / a).trunc()),
        ("you used one absmax for the whole tensor; one scale per row (along dim) is asked", torch.round(x32 * 127 / whole)),
        ("you divided by 127 instead of multiplying: q = round(x * 127 / absmax)", torch.round(x32 / 127 / a).clamp(-127, 127)),
    ]


def float_bound(x, w, ax=None, aw=None):
    """Largest |x @ w.T - dequant(qx) @ dequant(qw).T| that per-row int8 rounding allows (float64).

    Rounding to the nearest step of absmax/127 errs by at most half a step: |x - x^| <= ax/254 and
    |w - w^| <= aw/254 elementwise. Expanding x^ w^ = (x + dx)(w + dw) gives the sum over k of
    ax/254 |w| + aw/254 |x| + ax aw / 254**2. The bound grows with the scales: `ax` (..., 1) and `aw`
    (out, 1) default to the rows' own absmax and may be given larger (scales taken over more values).
    """
    x64, w64 = x.double().cpu(), w.double().cpu()
    ax = x64.abs().amax(-1, keepdim=True) if ax is None else ax.double().cpu()  # (..., 1)
    aw = w64.abs().amax(-1, keepdim=True) if aw is None else aw.double().cpu()  # (out, 1)
    k = x64.shape[-1]
    return ax / 254 * w64.abs().sum(-1) + aw.T / 254 * x64.abs().sum(-1, keepdim=True) + k * ax * aw.T / 254**2


def tie_slack(x, w):
    """Extra difference allowed between two correct int8 products when a tie rounds the other way.

    A q of x one step off changes output (i, j) by ax_i/127 * aw_j/127 * |qw_jk|, and |qw_jk| is at most
    |w_jk| * 127/aw_j + 1/2: at most ax_i/127 * (|w_jk| + aw_j/254). The same for a q of w, and both at once.
    """
    x2, w2 = x.double().cpu().reshape(-1, x.shape[-1]), w.double().cpu()
    ax, aw = x2.abs().amax(-1, keepdim=True), w2.abs().amax(-1, keepdim=True)
    tx, tw = rounding_ties(x2, ax).double(), rounding_ties(w2, aw).double()
    slack = (
        ax / 127 * (tx @ (w2.abs() + aw / 254).T)
        + ((x2.abs() + ax / 254) @ tw.T) * aw.T / 127
        + (tx @ tw.T) * ax * aw.T / 127**2
    )
    return slack.reshape(*x.shape[:-1], w.shape[0])


def assert_dtype_and_shape(actual, shape, dtype, what):
    """`actual` is a tensor of the contract's dtype (checked first, with its own message) and of `shape`."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a tensor, got {type(actual).__name__}")
    if actual.dtype != dtype:
        raise AssertionError(
            f"{what} has dtype {actual.dtype} but should have dtype {dtype}: both int8 matmuls return x.dtype "
            "(compute in int32 and float32 inside, then cast the result back with .to(x.dtype))"
        )
    assert_shape(actual, tuple(shape), what=what)


def excess_over(actual, expected, allowed, dtype):
    """(got, want, limit, excess): how far |actual - expected| exceeds allowed + the dtype's tolerance (float64, CPU)."""
    got, want = actual.detach().double().cpu(), expected.detach().double().cpu()
    tol = tolerance_for(dtype, actual.device)
    limit = allowed.double().cpu() + tol.atol * want.abs().max() + tol.rtol * want.abs()
    return got, want, limit, (got - want).abs() - limit


def assert_within(actual, expected, allowed, what, advice, *, dtype, mistakes=None):
    """`actual` has the contract's `dtype` and |actual - expected| <= allowed + the dtype's tolerance, elementwise."""
    assert_dtype_and_shape(actual, expected.shape, dtype, what)
    got, want, limit, excess = excess_over(actual, expected, allowed, dtype)
    assert bool(torch.isfinite(got).all()), f"{what} holds NaN or inf: a division by zero (an all-zero row?) or an overflow"
    if bool((excess > 0).any()):
        index = tuple(int(i) for i in torch.nonzero(excess > 0)[0])
        message = (
            f"{what} is further from the expected values than int8 rounding allows: at index {index} got "
            f"{got[index].item():.6g}, expected {want[index].item():.6g} (allowed difference {limit[index].item():.3g}). {advice}"
        )
        for sentence, wrong in (mistakes or {}).items():
            if wrong.shape == got.shape and bool(((got - wrong.double().cpu()).abs() <= 2 * limit).all()):
                message += f"\n  Likely mistake: {sentence}"
                break
        raise AssertionError(message)


class NonFiniteIntoInteger(torch.overrides.TorchFunctionMode):
    """Records every torch call that turns a float tensor holding NaN or inf into an integer tensor."""

    def __init__(self):
        super().__init__()
        self.culprits = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        if any(isinstance(o, torch.Tensor) and not o.is_floating_point() and o.dtype != torch.bool for o in outputs):
            inputs = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            if any(a.is_floating_point() and not bool(torch.isfinite(a).all()) for a in inputs):
                self.culprits.append(getattr(func, "__name__", str(func)))
        return result


def with_zero_rows(shape, dtype, device, rows=(0,)):
    x = (torch.randn(shape) * 2).to(device=device, dtype=dtype)
    for r in rows:
        x[r] = 0
    return x


# ---------------------------------------------------------------------------------------------------
# absmax_quantize / absmax_dequantize against bitsandbytes


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 64), (7, 96), (32, 256)], ids=str)
def test_rowwise_quantize_matches_bitsandbytes(impl, device, dtype, shape):
    """absmax_quantize(x) row by row equals bitsandbytes' int8_vectorwise_quant: same q (int8) and absmax (float32)."""
    x = (torch.randn(shape) * torch.logspace(-2, 2, shape[0]).unsqueeze(-1)).to(device=device, dtype=dtype)
    q, absmax = impl.absmax_quantize(x.clone())
    bq, babsmax = bnb_quantize_rows(x)
    assert isinstance(absmax, torch.Tensor) and absmax.dtype == torch.float32, (
        f"absmax should be a float32 tensor for {dtype} input, got {getattr(absmax, 'dtype', type(absmax))}: compute the scales in float32"
    )
    assert_close(absmax, babsmax, what=f"absmax of {dtype} x of shape {shape} (keepdim: shape ({shape[0]}, 1))")
    assert_q_equal(q, bq, rounding_ties(x, babsmax), what=f"q for {dtype} x of shape {shape}", mistakes=q_mistakes(x, babsmax))


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_matches_bitsandbytes(impl, device, dtype):
    """absmax_dequantize(q, absmax) equals bitsandbytes' int8_vectorwise_dequant: float32 q * absmax / 127."""
    x = (torch.randn(12, 80) * 3).to(device=device, dtype=dtype)
    bq, babsmax = bnb_quantize_rows(x)  # order: the learner's inputs are bitsandbytes' q and absmax
    out = impl.absmax_dequantize(bq.clone(), babsmax.clone())
    expected = F.int8_vectorwise_dequant(bq.clone(), babsmax.reshape(-1).clone())
    mistakes = {
        "you divided by absmax and multiplied by 127: dequantization is q * absmax / 127": bq.double() * 127 / babsmax.double(),
        "you forgot to divide by 127": bq.double() * babsmax.double(),
    }
    assert_close(out, expected, what="absmax_dequantize(q, absmax)", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(2)
def test_round_trip_error_bound(impl, device):
    """Quantize then dequantize: float32, within half a step (absmax / 254) of x, and no better than that on average."""
    x = (torch.randn(16, 128) * 5).to(device)
    q, absmax = impl.absmax_quantize(x.clone())
    restored = impl.absmax_dequantize(q, absmax)
    assert restored.dtype == torch.float32, f"absmax_dequantize should return float32, got {restored.dtype}"
    error = (restored.double() - x.double()).abs().cpu()
    half_step = absmax.double().cpu() / 254
    # Half a step is exact math; 1e-5 relative covers float32 rounding of x * 127 / absmax and of q * absmax / 127.
    assert bool((error <= half_step * (1 + 1e-5)).all()), (
        f"a dequantized value is {float((error - half_step).max()):.3g} further from x than half a step (absmax / 254): "
        "round to the nearest integer, and use the same 127 in both directions"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_leading_dimensions_are_rows(impl, device, dtype):
    """A (batch, seq, features) input gets one scale per (batch, seq) vector, like bitsandbytes on the flattened rows."""
    x = (torch.randn(2, 5, 48) * 2).to(device=device, dtype=dtype)
    q, absmax = impl.absmax_quantize(x.clone())
    bq, babsmax = bnb_quantize_rows(x.reshape(-1, 48))
    assert_close(absmax, babsmax.reshape(2, 5, 1), what="absmax of a (2, 5, 48) input (shape (2, 5, 1))")
    assert_q_equal(q, bq.reshape(2, 5, 48), rounding_ties(x.reshape(-1, 48), babsmax).reshape(2, 5, 48), what="q of a (2, 5, 48) input")


@pytest.mark.points(2)
@pytest.mark.parametrize("dim", [0, 1])
def test_other_dimensions(impl, device, dim):
    """absmax_quantize(x, dim) scales each slice along dim: dim=0 gives one scale per column (shape (1, cols))."""
    x = (torch.randn(24, 40) * torch.linspace(0.1, 10, 40)).to(device)
    q, absmax = impl.absmax_quantize(x.clone(), dim=dim)
    xt = x if dim == 1 else x.T
    bq, babsmax = bnb_quantize_rows(xt)
    if dim == 0:
        bq, babsmax = bq.T, babsmax.T
    assert_close(absmax, babsmax, what=f"absmax_quantize(x, dim={dim})[1] for x of shape (24, 40)")
    assert_q_equal(q, bq, rounding_ties(x, babsmax), what=f"absmax_quantize(x, dim={dim})[0]", mistakes=q_mistakes(x, babsmax))


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_whole_tensor_when_dim_is_none(impl, device, dtype):
    """dim=None: one absmax (a single float32 value) for the whole tensor, as bitsandbytes on the tensor as one row."""
    x = (torch.randn(6, 32) * torch.logspace(-1, 1, 6).unsqueeze(-1)).to(device=device, dtype=dtype)
    q, absmax = impl.absmax_quantize(x.clone(), dim=None)
    bq, babsmax = bnb_quantize_rows(x.reshape(1, -1))
    assert isinstance(absmax, torch.Tensor) and absmax.numel() == 1, f"dim=None should give a single absmax, got {getattr(absmax, 'shape', absmax)}"
    assert_close(absmax.reshape(1, 1), babsmax, what="absmax over the whole tensor (dim=None)", dtype=torch.float32)
    assert_q_equal(q, bq.reshape(6, 32), rounding_ties(x, babsmax.reshape(())), what="q with dim=None")


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_single_huge_outlier(impl, device, dtype):
    """One huge value sets its row's scale: matches bitsandbytes, computed in float32 (x * 127 overflows float16)."""
    x = torch.randn(4, 64).to(device=device, dtype=dtype)
    x[2, 17] = 30000.0  # 30000 * 127 is far above float16's largest value, 65504
    q, absmax = impl.absmax_quantize(x.clone())
    bq, babsmax = bnb_quantize_rows(x)
    assert_close(absmax, babsmax, what=f"absmax of {dtype} rows, one holding 30000")
    assert_q_equal(q, bq, rounding_ties(x, babsmax), what=f"q of {dtype} rows, one holding 30000 (compute x * 127 / absmax in float32)")
    assert int(q[2, 17]) == 127, f"the outlier itself should quantize to 127, got {int(q[2, 17])}"
    assert int(q[2].abs().sum()) == 127, "next to 30000 every other value of that row rounds to 0: the outlier took the whole range"


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_zero_rows(impl, device, dtype):
    """All-zero rows quantize to zeros with absmax 0, dequantize to zeros, and no NaN or inf is ever cast to int8."""
    x = with_zero_rows((5, 32), dtype, device, rows=(1, 4))
    with NonFiniteIntoInteger() as mode:
        q, absmax = impl.absmax_quantize(x.clone())
    assert not mode.culprits, (
        f"a NaN or inf was cast to an integer ({', '.join(mode.culprits)}): 0 * 127 / 0 is NaN, and what NaN becomes as int8 "
        "depends on the device. Divide all-zero rows by 1 (or any nonzero) instead of by their absmax of 0."
    )
    assert torch.equal(q[[1, 4]].cpu(), torch.zeros(2, 32, dtype=torch.int8)), f"all-zero rows should quantize to zeros, got {q[[1, 4]].tolist()}"
    assert_close(absmax[[1, 4]], torch.zeros(2, 1), what="absmax of all-zero rows")
    restored = impl.absmax_dequantize(q, absmax)
    assert_close(restored[[1, 4]], torch.zeros(2, 32), what="dequantized all-zero rows")
    bq, babsmax = bnb_quantize_rows(x[[0, 2, 3]])
    assert_q_equal(q[[0, 2, 3]], bq, rounding_ties(x[[0, 2, 3]], babsmax), what="q of the nonzero rows next to all-zero rows")


@pytest.mark.points(1)
def test_all_zero_tensor_with_dim_none(impl, device):
    """An all-zero tensor with dim=None gives zeros, absmax 0, and no NaN cast to int8."""
    x = torch.zeros(3, 8, device=device)
    with NonFiniteIntoInteger() as mode:
        q, absmax = impl.absmax_quantize(x.clone(), dim=None)
    assert not mode.culprits, f"a NaN or inf was cast to an integer ({', '.join(mode.culprits)}): avoid 0 / 0 for an all-zero tensor"
    assert q.dtype == torch.int8 and not bool(q.any()), "an all-zero tensor should quantize to int8 zeros"
    assert float(absmax.reshape(-1)[0]) == 0.0, "the absmax of an all-zero tensor is 0"


@pytest.mark.points(2)
def test_range_is_symmetric(impl, device):
    """q uses [-127, 127]: the largest |x| of each row maps to exactly +127 or -127, -128 never appears."""
    x = torch.randn(64, 32, device=device)
    x[::2] = -x[::2].abs()  # even rows: the absmax is a negative value
    q, _ = impl.absmax_quantize(x.clone())
    assert q.dtype == torch.int8, f"q should be int8, got {q.dtype}"
    assert int(q.min()) >= -127, "q holds -128: the symmetric int8 range is [-127, 127] (scale by 127, not 128)"
    peak = x.abs().argmax(-1, keepdim=True)
    assert bool((q.gather(-1, peak).abs() == 127).all()), "the largest |x| of each row should become +127 or -127"


# ---------------------------------------------------------------------------------------------------
# int8_matmul


def bnb_int8_matmul(x, w, dtype):
    """bitsandbytes' int8 product: row-wise quantization of x and w, int32 matmul, dequantization."""
    qx, ax = bnb_quantize_rows(x.reshape(-1, x.shape[-1]))  # (rows, in), (rows, 1)
    qw, aw = bnb_quantize_rows(w)  # (out, in), (out, 1)
    acc = F.int8_linear_matmul(qx, qw)  # (rows, out) int32
    out = acc.float() * (ax * aw.T) / (127.0 * 127.0)  # int8_mm_dequant, kept in float32
    return out.to(dtype).reshape(*x.shape[:-1], w.shape[0])


def matmul_mistakes(x, w):
    x64, w64 = x.double().cpu(), w.double().cpu()
    ax, aw = x64.abs().amax(-1, keepdim=True), w64.abs().amax(-1, keepdim=True)
    qx, qw = torch.round(x64 * 127 / ax), torch.round(w64 * 127 / aw)
    return {
        "you rescaled by 127 once; each factor brings its own 1/127: divide by 127 * 127": (qx @ qw.T) * ax * aw.T / 127,
        "you rescaled by ax * aw without dividing by 127 * 127": (qx @ qw.T) * ax * aw.T,
        "you scaled q * absmax / 127 the wrong way round (absmax / q or q / absmax)": (qx @ qw.T) / (ax * aw.T) * 127 * 127,
    }


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [((8, 64), 32), ((2, 6, 128), 48)], ids=["2d", "3d"])
def test_int8_matmul_matches_bitsandbytes(impl, device, dtype, shape):
    """int8_matmul(x, w) equals bitsandbytes' int8 pipeline (vectorwise quant, int32 matmul, dequant), in x's dtype."""
    x_shape, out_features = shape
    x = (torch.randn(x_shape) * 2).to(device=device, dtype=dtype)
    w = (torch.randn(out_features, x_shape[-1]) * 0.5).to(device=device, dtype=dtype)
    out = impl.int8_matmul(x.clone(), w.clone())
    expected, slack, mistakes = bnb_int8_matmul(x, w, dtype), tie_slack(x, w), matmul_mistakes(x, w)
    assert_within(
        out, expected, slack, what=f"int8_matmul for {dtype} x of shape {x_shape}",
        advice="Quantize x per row (last dim) and w per output row, multiply the int8 values, rescale by ax * aw.T / 127**2.",
        dtype=dtype, mistakes=mistakes,
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int8_matmul_error_bound(impl, device, dtype):
    """int8_matmul(x, w) is within the error bound that per-row int8 rounding of x and w implies."""
    x = (torch.randn(3, 10, 96) * torch.logspace(-1, 1, 10).unsqueeze(-1)).to(device=device, dtype=dtype)
    w = torch.randn(40, 96).to(device=device, dtype=dtype)
    out = impl.int8_matmul(x.clone(), w.clone())
    truth, bound = x.double().cpu() @ w.double().cpu().T, float_bound(x, w)
    assert_within(out, truth, bound, what=f"int8_matmul for {dtype} inputs", advice="Check the rescaling by ax * aw.T / 127**2.", dtype=dtype)


@pytest.mark.points(3)
def test_int8_matmul_matches_linear8bitlt(impl, device):
    """int8_matmul(x, w) equals bitsandbytes.nn.Linear8bitLt (threshold 0, inference) holding the same float16 weight."""
    w = (torch.randn(48, 64) * 0.3).half()
    x = torch.randn(2, 7, 64).half().to(device)
    out = impl.int8_matmul(x.clone(), w.clone().to(device))
    layer = bnb.nn.Linear8bitLt(64, 48, bias=False, has_fp16_weights=False, threshold=0.0)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to(device).eval()  # moving the layer quantizes its weight (CB, SCB)
    with torch.no_grad():
        expected = layer(x)
    slack = tie_slack(x, w)
    assert_within(out, expected, slack, what="int8_matmul(x, w) against Linear8bitLt(x)", advice="Per-row absmax of x and of w, exact integer product, then ax * aw.T / 127**2.", dtype=torch.float16)


@pytest.mark.points(1)
def test_int8_matmul_zero_rows(impl, device):
    """All-zero rows of x give all-zero output rows, with no NaN or inf on the way."""
    x = with_zero_rows((4, 32), torch.float32, device, rows=(2,))
    w = torch.randn(8, 32, device=device)
    w[3] = 0
    with NonFiniteIntoInteger() as mode:
        out = impl.int8_matmul(x.clone(), w.clone())
    assert not mode.culprits, f"a NaN or inf was cast to an integer ({', '.join(mode.culprits)}): guard the division by an absmax of 0"
    assert bool(torch.isfinite(out).all()), "int8_matmul gave NaN or inf for an input with an all-zero row"
    assert not bool(out[2].any()) and not bool(out[:, 3].any()), "an all-zero row of x (or of w) should give zeros"


# ---------------------------------------------------------------------------------------------------
# int8_matmul_with_outliers (LLM.int8's decomposition)


def planted_outliers(shape, in_features, cols, device, magnitude=40.0, regular=2.5):
    """Activations clipped to +-regular with a few outlier feature columns (LLM.int8's emergent features)."""
    x = torch.randn(shape + (in_features,)).clamp(-regular, regular)
    for c in cols:
        x[..., c] = magnitude * (0.5 + torch.rand(shape)) * torch.sign(torch.randn(shape))
    return x.to(device)


def int8_product(x, w, ax, aw):
    """The int8 product of `x` (rows, k) and `w` (out, k) quantized with the row scales `ax` (rows, 1) and
    `aw` (out, 1), in float64, and the slack a correct float32 implementation may add by rounding a tie
    the other way (see `tie_slack`)."""
    x, w, ax, aw = (t.double().cpu() for t in (x, w, ax, aw))
    qx = torch.round(x * 127 / torch.where(ax == 0, 1.0, ax))
    qw = torch.round(w * 127 / torch.where(aw == 0, 1.0, aw))
    value = (qx @ qw.T) * ax * aw.T / 127**2
    tx, tw = rounding_ties(x, ax).double(), rounding_ties(w, aw).double()
    slack = ax / 127 * (tx @ (w.abs() + aw / 254).T) + ((x.abs() + ax / 254) @ tw.T) * aw.T / 127 + (tx @ tw.T) * ax * aw.T / 127**2
    return value, slack


def outlier_columns(x, threshold):
    """(in,) True for the input features (columns of x) that hold any |x| >= threshold, in any row."""
    return (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(0).cpu()


def decompositions(x, w, threshold):
    """Every LLM.int8 decomposition the contract accepts: {name: (expected, slack)}, float64 on CPU.

    The outlier columns are multiplied in floating point (exactly, here), the other columns in int8. Which
    values set the int8 scales is the implementer's choice: x's row scale over the regular columns, or over
    every value below the threshold (bitsandbytes: only the outliers themselves leave it); w's row scale over
    whole rows (a weight quantized once, as bitsandbytes keeps it) or over the regular columns (slicing).
    """
    x2, w64 = x.double().cpu().reshape(-1, x.shape[-1]), w.double().cpu()
    cols = outlier_columns(x, threshold)
    float_part = x2[:, cols] @ w64[:, cols].T
    regular_x, regular_w = x2.masked_fill(cols, 0), w64.masked_fill(cols, 0)
    x_scales = {
        "x's row scales over the regular columns": regular_x.abs().amax(-1, keepdim=True),
        "x's row scales over the values below the threshold (bitsandbytes)": x2.masked_fill(x2.abs() >= threshold, 0).abs().amax(-1, keepdim=True),
    }
    w_scales = {
        "w's row scales over whole rows (zeroing x's outlier columns)": w64.abs().amax(-1, keepdim=True),
        "w's row scales over the regular columns (slicing)": regular_w.abs().amax(-1, keepdim=True),
    }
    shape = (*x.shape[:-1], w.shape[0])
    candidates = {}
    for x_name, ax in x_scales.items():
        for w_name, aw in w_scales.items():
            value, slack = int8_product(regular_x, regular_w, ax, aw)
            candidates[f"{x_name}, {w_name}"] = ((value + float_part).reshape(shape), slack.reshape(shape))
    return candidates


def assert_one_of(actual, candidates, *, what, advice, dtype):
    """`actual` is within the allowed difference of at least one of `candidates` {name: (expected, allowed)}."""
    shape = next(iter(candidates.values()))[0].shape
    assert_dtype_and_shape(actual, shape, dtype, what)
    worst = {}
    for name, (expected, allowed) in candidates.items():
        got, want, limit, excess = excess_over(actual, expected, allowed, dtype)
        if not bool((excess > 0).any()):
            return
        worst[name] = (float(excess.max()), got, want, limit, excess)
    name, (_, got, want, limit, excess) = min(worst.items(), key=lambda item: item[1][0])
    index = tuple(int(i) for i in torch.nonzero(excess > 0)[0])
    raise AssertionError(
        f"{what} matches none of the accepted decompositions (outlier columns in floating point, the rest in int8 "
        f"with any of the accepted row scales). Closest: {name}; at index {index} got {got[index].item():.6g}, expected "
        f"{want[index].item():.6g} (allowed difference {limit[index].item():.3g}). {advice}"
    )


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_outliers_error_far_smaller(impl, device, dtype):
    """With planted outlier features, the decomposition stays within the int8 bound of the regular columns, far below plain int8."""
    x = planted_outliers((24,), 128, cols=[3, 77, 90], device=device).to(dtype)
    w = torch.randn(32, 128).to(device=device, dtype=dtype)
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone())
    truth = x.double().cpu() @ w.double().cpu().T
    cols = torch.zeros(128, dtype=torch.bool)
    cols[[3, 77, 90]] = True
    # Only the regular columns are rounded to int8, with scales no larger than x's values below the
    # threshold and w's whole rows: the bound of every accepted decomposition.
    x_below = x.cpu().double().masked_fill(x.cpu().abs() >= 6.0, 0)
    bound = float_bound(x.cpu().masked_fill(cols, 0), w.cpu(), ax=x_below.abs().amax(-1, keepdim=True))
    plain = (bnb_int8_matmul(x, w, torch.float32).double().cpu() - truth).norm()
    assert_within(out, truth, bound, what=f"int8_matmul_with_outliers for {dtype} inputs with 3 outlier features", dtype=dtype,
                  advice="Columns of x with any |x| >= threshold must go through a floating-point product, not through int8.")
    mixed = (out.double().cpu() - truth).norm()
    assert mixed < plain / 10, f"the decomposition should cut the error at least tenfold: {mixed:.3g} vs {plain:.3g} for plain int8"


@pytest.mark.points(3)
@pytest.mark.parametrize("shape", [(16,), (2, 8)], ids=["2d", "3d"])
def test_outliers_match_the_decomposition(impl, device, shape):
    """int8_matmul_with_outliers = outlier columns in floating point + the other columns through int8, whatever the leading dims."""
    x = planted_outliers(shape, 96, cols=[10, 50], device=device, magnitude=8.0)
    x.reshape(-1, 96)[5, 60] = -7.0  # one outlier in a single row: its whole column leaves the int8 product, in every row
    w = torch.randn(24, 96, device=device)
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone())
    candidates = decompositions(x, w, 6.0)
    assert_one_of(out, candidates, what=f"int8_matmul_with_outliers for x of shape {shape + (96,)}", dtype=torch.float32,
                  advice="Find the columns (last dim) with any |x| >= threshold over all rows and batch entries; multiply them with "
                         "the matching columns of w in floating point, and only the other columns through int8.")


@pytest.mark.points(2)
def test_threshold_is_inclusive(impl, device):
    """A value exactly equal to the threshold is an outlier (|x| >= threshold, as bitsandbytes)."""
    x = (torch.rand(12, 256) * 0.2 - 0.1).to(device)
    x[:, 7] = 6.0
    w = torch.randn(16, 256, device=device)
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone(), threshold=6.0)
    assert int(outlier_columns(x, 6.0).sum()) == 1
    candidates = decompositions(x, w, 6.0)
    assert_one_of(out, candidates, what="int8_matmul_with_outliers with values equal to the threshold", dtype=torch.float32,
                  advice="An outlier is |x| >= threshold, not > threshold.")


@pytest.mark.points(2)
@pytest.mark.parametrize("threshold", [3.0, 20.0])
def test_threshold_argument(impl, device, threshold):
    """The threshold argument decides which columns are outliers."""
    x = planted_outliers((10,), 64, cols=[4], device=device, magnitude=10.0, regular=2.0)
    x[:, 9] = 4.0 * torch.sign(torch.randn(10, device=device))  # an outlier for threshold 3, not for 20
    w = torch.randn(12, 64, device=device)
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone(), threshold=threshold)
    candidates = decompositions(x, w, threshold)
    assert_one_of(out, candidates, what=f"int8_matmul_with_outliers(x, w, threshold={threshold})", dtype=torch.float32,
                  advice="Use the threshold argument, not a fixed 6.0.")


@pytest.mark.points(2)
def test_no_outliers_equals_int8_matmul(impl, device):
    """Without any |x| >= threshold, int8_matmul_with_outliers equals int8_matmul (the default threshold is 6.0)."""
    x = (torch.randn(9, 64).clamp(-5.9, 5.9)).to(device)
    x[0, 0] = 5.99
    w = torch.randn(20, 64, device=device)
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone())
    expected, slack = bnb_int8_matmul(x, w, torch.float32), tie_slack(x, w)
    assert_within(out, expected, slack, what="int8_matmul_with_outliers without outliers", dtype=torch.float32,
                  advice="With no outlier column everything goes through int8_matmul; the default threshold is 6.0.")


@pytest.mark.points(3)
def test_outliers_match_linear8bitlt(impl, device):
    """With whole outlier columns, int8_matmul_with_outliers agrees with bitsandbytes' Linear8bitLt(threshold=6.0).

    Linear8bitLt keeps only the int8 weight, so its outlier columns use the dequantized weight: the two
    differ by at most |x_outlier| * aw / 254 summed over the outlier columns. Its int8 part uses
    bitsandbytes' scales; another accepted choice of scales moves the int8 part by the difference of the two
    int8 products, which is added to the expected value.
    """
    w = (torch.randn(32, 64) * 0.3).half()
    x = planted_outliers((2, 6), 64, cols=[1, 33], device=device, magnitude=20.0).half()
    out = impl.int8_matmul_with_outliers(x.clone(), w.clone().to(device), threshold=6.0)
    layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to(device).eval()
    with torch.no_grad():
        expected = layer(x).double().cpu()
    cols = outlier_columns(x, 6.0)
    aw = w.double().abs().amax(-1)
    weight_rounding = x.double().cpu()[..., cols].abs().sum(-1, keepdim=True) * aw / 254
    candidates = decompositions(x, w, 6.0)
    bnb_value, bnb_slack = candidates["x's row scales over the values below the threshold (bitsandbytes), "
                                      "w's row scales over whole rows (zeroing x's outlier columns)"]
    shifted = {name: (expected + value - bnb_value, weight_rounding + slack + bnb_slack) for name, (value, slack) in candidates.items()}
    assert_one_of(out, shifted, what="int8_matmul_with_outliers against Linear8bitLt(threshold=6.0)", dtype=torch.float16,
                  advice="Outlier columns in floating point, the rest through int8_matmul.")


@pytest.mark.points(1)
def test_does_not_modify_inputs(impl, device):
    """int8_matmul_with_outliers leaves x and w unchanged (bitsandbytes restores the outliers it zeroes)."""
    x = planted_outliers((6,), 32, cols=[2], device=device)
    w = torch.randn(8, 32, device=device)
    x0, w0 = x.clone(), w.clone()
    impl.int8_matmul_with_outliers(x, w)
    assert torch.equal(x, x0) and torch.equal(w, w0), "x or w was modified in place: work on a copy (masked_fill, not masked_fill_)"
