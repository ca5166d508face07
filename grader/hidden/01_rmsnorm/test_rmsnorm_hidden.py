"""Hidden suite of module 01 (RMSNorm): transformers' LlamaRMSNorm is the oracle, float64 the truth.

Run: pytest grader/hidden/01_rmsnorm --impl solutions   (or --impl path/to/submission)

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call, so nothing the learner's code could find in memory holds the answer yet.
"""

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, tolerance_for
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(64,), (3, 64), (2, 5, 128), (2, 2, 3, 96)]


def truth(x, weight=None, eps=1e-6):
    """The RMSNorm formula in float64 (the exact value every dtype's result is rounded from)."""
    x = x.double()
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight.double()


def llama_rms_norm(x, weight, eps=1e-6):
    """What transformers' LlamaRMSNorm gives for this input and weight (same dtype and device)."""
    layer = LlamaRMSNorm(x.shape[-1], eps=eps).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer(x).detach()


def known_mistakes(x, weight=None, eps=1e-6):
    """Outputs of the mistakes learners make, to name them when a result matches one."""
    x64 = x.double()
    w = 1.0 if weight is None else weight.double()
    centred = x64 - x64.mean(-1, keepdim=True)
    mean_square = x64.pow(2).mean(-1, keepdim=True)
    return {
        "you subtracted the mean: that is LayerNorm, not RMSNorm": centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * w,
        "eps is added outside the square root; it belongs inside: sqrt(mean(x**2) + eps)": x64 / (mean_square.sqrt() + eps) * w,
        "you divided by mean(x**2) without taking the square root": x64 / (mean_square + eps) * w,
        "you used the sum of squares instead of their mean": x64 * torch.rsqrt(x64.pow(2).sum(-1, keepdim=True) + eps) * w,
        "you used the mean of |x| instead of the root mean square": x64 / (x64.abs().mean(-1, keepdim=True) + eps) * w,
        "you scaled by (1 + weight), as Gemma does; here the weight multiplies directly": x64 * torch.rsqrt(mean_square + eps) * (1 + w),
        "the weight was ignored": x64 * torch.rsqrt(mean_square + eps),
    }


def random_input(shape, dtype, device, scale=2.0):
    return (torch.randn(shape, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# rms_norm against LlamaRMSNorm and the float64 truth


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_llama_rmsnorm(impl, device, dtype, shape):
    """rms_norm(x, weight) matches transformers' LlamaRMSNorm (weight in the input's dtype), for several shapes and dtypes."""
    x = random_input(shape, dtype, device)
    weight = (torch.rand(shape[-1]) + 0.5).to(device=device, dtype=dtype)
    out = impl.rms_norm(x.clone(), weight.clone())
    expected, exact, mistakes = llama_rms_norm(x, weight), truth(x, weight), known_mistakes(x, weight)
    assert_close(out, expected, what=f"rms_norm(x, weight) for {dtype} x of shape {shape}", mistakes=mistakes)
    assert_close(out, exact, what="rms_norm(x, weight) against the float64 formula", dtype=dtype)


# (x dtype, weight dtype): mixed precision keeps float32 weights under bf16/fp16 activations; the reverse and a
# mix of the two half types also promote to float32.
PROMOTIONS = [(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
              (torch.float32, torch.float16), (torch.float16, torch.bfloat16)]


@pytest.mark.points(2)
@pytest.mark.parametrize("x_dtype, weight_dtype", PROMOTIONS, ids=lambda d: str(d).removeprefix("torch."))
def test_output_dtype_follows_type_promotion(impl, device, x_dtype, weight_dtype):
    """x and weight of different dtypes give the dtype weight * y promotes to (bf16 x, float32 weight: float32), values right to x's precision."""
    x = random_input((4, 64), x_dtype, device)
    weight = (torch.rand(64) + 0.5).to(device=device, dtype=weight_dtype)
    out = impl.rms_norm(x.clone(), weight.clone())
    expected, exact = llama_rms_norm(x, weight), truth(x, weight)
    # The dtype is graded exactly. The values are graded at x's precision: LlamaRMSNorm rounds the normalised x
    # to x.dtype before the weight, T5LayerNorm stays in float32 to the end. Both orders are right.
    want, tol = torch.promote_types(x_dtype, weight_dtype), tolerance_for(x_dtype, device)
    what = f"rms_norm({x_dtype} x, {weight_dtype} weight)"
    assert_close(out, expected, what=f"{what} against LlamaRMSNorm", dtype=want, tol=tol)
    assert_close(out, exact, what=f"{what} against the float64 formula", dtype=want, tol=tol)


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_without_weight_keeps_the_input_dtype(impl, device, dtype):
    """Without a weight the output has x's dtype and equals the normalised x."""
    x = random_input((3, 7, 48), dtype, device)
    out = impl.rms_norm(x.clone())
    exact, mistakes = truth(x), known_mistakes(x)
    assert_close(out, exact, what=f"rms_norm(x) for {dtype} x", dtype=dtype, mistakes=mistakes)


@pytest.mark.points(2)
def test_statistics_in_float32_for_float16(impl, device):
    """float16 values whose squares overflow float16 (|x| > 256) still normalise correctly: statistics in float32."""
    x = random_input((4, 64), torch.float16, device, scale=1.0) * 1000
    out = impl.rms_norm(x.clone())
    exact = truth(x)
    assert_close(
        out,
        exact,
        what="rms_norm(x) for float16 x with values around 1000",
        dtype=torch.float16,
        mistakes={"the squares overflowed float16: compute mean(x**2) in float32": lambda out: bool((out == 0).any() | ~torch.isfinite(out).any())},
    )


@pytest.mark.points(1)
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 0.1])
def test_eps_inside_the_square_root(impl, device, eps):
    """eps enters as sqrt(mean(x**2) + eps): checked on small inputs where eps matters."""
    x = random_input((5, 32), torch.float32, device, scale=1e-3)
    out = impl.rms_norm(x.clone(), eps=eps)
    exact, mistakes = truth(x, eps=eps), known_mistakes(x, eps=eps)
    assert_close(out, exact, what=f"rms_norm(x, eps={eps}) for x around 1e-3", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(1)
def test_default_eps_is_1e_minus_6(impl, device):
    """Called without eps, rms_norm uses eps=1e-6 (LlamaRMSNorm's default)."""
    x = random_input((5, 32), torch.float32, device, scale=1e-3)
    out = impl.rms_norm(x.clone())
    exact = truth(x, eps=1e-6)
    assert_close(out, exact, what="rms_norm(x) with the default eps", dtype=torch.float32)


@pytest.mark.points(1)
def test_all_zero_rows_give_zeros(impl, device):
    """An all-zero row normalises to zeros, with no NaN or inf."""
    x = torch.zeros(3, 16, device=device)
    x[1] = torch.randn(16, device=device)
    out = impl.rms_norm(x.clone())
    exact = truth(x)
    assert_close(out, exact, what="rms_norm of a tensor with all-zero rows", dtype=torch.float32)


@pytest.mark.points(1)
def test_non_contiguous_input(impl, device):
    """A non-contiguous input (a transposed view) is normalised over its last dimension as it is seen."""
    x = random_input((32, 6), torch.float32, device).t()  # (6, 32), not contiguous
    assert not x.is_contiguous()
    weight = (torch.rand(32) + 0.5).to(device)
    x_copy = x.clone()  # clone keeps the strides: still not contiguous
    assert not x_copy.is_contiguous()
    out = impl.rms_norm(x_copy, weight.clone())
    exact, mistakes = truth(x, weight), known_mistakes(x, weight)
    assert_close(out, exact, what="rms_norm of a transposed (non-contiguous) input", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(2)
def test_normalises_over_the_last_dimension_only(impl, device):
    """Each vector along the last dimension is normalised on its own: changing one row leaves the others unchanged."""
    x = random_input((4, 6, 32), torch.float32, device)
    x2 = x.clone()
    x2[0, 0] *= 10
    out = impl.rms_norm(x.clone())
    out2 = impl.rms_norm(x2)
    exact = truth(x)
    assert_close(out2[1:], out[1:], what="outputs of the rows that were not changed")
    assert_close(out, exact, what="rms_norm(x) for x of shape (4, 6, 32)", dtype=torch.float32)


@pytest.mark.points(3)
@pytest.mark.parametrize("with_weight", [False, True], ids=["no_weight", "weight"])
def test_gradients_match_autograd_of_the_formula(impl, device, with_weight):
    """Gradients with respect to x (and weight) equal those of the float64 formula."""
    x = random_input((3, 5, 24), torch.float32, device).requires_grad_()
    weight = (torch.rand(24, device=device) + 0.5).requires_grad_() if with_weight else None
    grad_out = torch.randn(3, 5, 24, device=device)
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_() if with_weight else None
    impl.rms_norm(x, weight).backward(grad_out.clone())
    truth(x64, w64).backward(grad_out.double())
    assert x.grad is not None, "rms_norm(x) gave no gradient for x: do not detach or leave autograd"
    assert_close(x.grad, x64.grad, what="the gradient of rms_norm with respect to x", dtype=torch.float32)
    if with_weight:
        assert weight.grad is not None, "rms_norm(x, weight) gave no gradient for weight"
        assert_close(weight.grad, w64.grad, what="the gradient of rms_norm with respect to weight", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# The RMSNorm layer


@pytest.mark.points(2)
def test_layer_parameters_and_initialisation(impl):
    """RMSNorm(dim) holds exactly one parameter, `weight`, of shape (dim,), ones, trainable."""
    layer = impl.RMSNorm(48)
    parameters = dict(layer.named_parameters())
    assert list(parameters) == ["weight"], f"RMSNorm should have one parameter named 'weight', found {list(parameters)}"
    assert layer.weight.requires_grad, "RMSNorm.weight should be trainable (an nn.Parameter)"
    assert_close(layer.weight.detach(), torch.ones(48), what="RMSNorm(48).weight at initialisation")


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_matches_llama_rmsnorm_with_its_state_dict(impl, device, dtype):
    """A LlamaRMSNorm's state dict loads into RMSNorm, and both give the same output."""
    reference = LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        reference.weight.copy_(torch.rand(64) + 0.5)
    reference = reference.to(device=device, dtype=dtype)
    x = random_input((2, 9, 64), dtype, device)
    layer = impl.RMSNorm(64, eps=1e-5)
    layer.load_state_dict({name: tensor.clone() for name, tensor in reference.state_dict().items()})
    layer = layer.to(device=device, dtype=dtype)
    out = layer(x.clone())
    expected, mistakes = reference(x).detach(), known_mistakes(x, reference.weight.detach(), eps=1e-5)
    assert_close(out, expected, what=f"RMSNorm(64, eps=1e-5) for {dtype} x", mistakes=mistakes)


@pytest.mark.points(1)
def test_layer_uses_its_eps(impl, device):
    """RMSNorm(dim, eps) uses its own eps in forward, not the default."""
    layer = impl.RMSNorm(32, eps=0.1).to(device)
    x = random_input((4, 32), torch.float32, device, scale=0.05)
    out = layer(x.clone())
    exact = truth(x, eps=0.1)
    assert_close(out, exact, what="RMSNorm(32, eps=0.1)(x)", dtype=torch.float32)


@pytest.mark.points(1)
def test_layer_weight_is_learnable(impl):
    """One optimizer step changes RMSNorm.weight: the weight takes part in forward and gets a gradient."""
    layer = impl.RMSNorm(16)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(8, 16)
    loss = (layer(x) * torch.randn(8, 16)).sum()
    loss.backward()
    optimizer.step()
    assert not torch.equal(layer.weight.detach(), torch.ones(16)), "RMSNorm.weight did not change after an optimizer step"


@pytest.mark.points(2)
@pytest.mark.parametrize("dim", [0, -3])
def test_layer_rejects_a_non_positive_dim(impl, dim):
    """RMSNorm(dim) with dim <= 0 raises ValueError."""
    assert_raises(ValueError, impl.RMSNorm, dim, when=f"for RMSNorm({dim})")


@pytest.mark.points(1)
def test_layer_rejects_a_wrong_last_dimension(impl):
    """RMSNorm(dim)(x) with x.shape[-1] != dim raises ValueError."""
    layer = impl.RMSNorm(16)
    assert_raises(ValueError, layer, torch.randn(3, 15), when="for an input of shape (3, 15) given to RMSNorm(16)")
