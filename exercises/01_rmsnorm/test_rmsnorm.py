"""Public tests of module 01 (RMSNorm). Run: pytest exercises/01_rmsnorm

These check the essentials quickly; the grader's hidden tests check more (dtypes, gradients,
transformers' LlamaRMSNorm as the oracle). Read docs/01_rmsnorm.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, expect, tolerance_for


def rms_norm_float64(x, weight=None, eps=1e-6):
    """The formula, in float64: x / sqrt(mean(x**2) + eps) * weight."""
    x = x.double()
    y = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight.double()


def test_rows_have_unit_rms(impl):
    """Without a weight, every row of the output has a root mean square of 1."""
    x = torch.randn(4, 16) * 3.0
    rms = impl.rms_norm(x).pow(2).mean(dim=-1).sqrt()
    assert_close(rms, torch.ones(4), what="the root mean square of each output row")


def test_matches_the_formula(impl):
    """rms_norm(x, weight) equals x / sqrt(mean(x**2) + eps) * weight on a small float32 example."""
    x = torch.randn(2, 3, 8)
    weight = torch.rand(8) + 0.5
    mistakes = {
        "you subtracted the mean: that is LayerNorm, not RMSNorm": torch.nn.functional.layer_norm(x, (8,), eps=1e-6) * weight,
        "you divided by mean(x**2) without the square root": x / (x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight,
    }
    assert_close(impl.rms_norm(x, weight), rms_norm_float64(x, weight), what="rms_norm(x, weight)", dtype=torch.float32, mistakes=mistakes)


def test_eps_is_inside_the_square_root(impl):
    """An all-zero row gives zeros (not NaN), because eps is added inside the square root."""
    x = torch.zeros(3, 8)
    assert_close(impl.rms_norm(x), torch.zeros(3, 8), what="rms_norm of an all-zero input")


def test_keeps_the_input_dtype(impl):
    """A bfloat16 input without a weight gives a bfloat16 output (statistics in float32 inside)."""
    x = torch.randn(5, 32).to(torch.bfloat16)
    assert_close(impl.rms_norm(x), rms_norm_float64(x), what="rms_norm(x) for bfloat16 x", dtype=torch.bfloat16)


def test_eps_matters_for_small_inputs(impl):
    """eps is added to mean(x**2) under the square root: with eps=0.01, a row of 0.1s maps to 0.1 / sqrt(0.02)."""
    x = torch.full((2, 8), 0.1)
    mistakes = {"eps is added after the square root; it goes inside: sqrt(mean(x**2) + eps)": x.double() / (0.1 + 0.01)}
    assert_close(impl.rms_norm(x, eps=0.01), rms_norm_float64(x, eps=0.01), what="rms_norm(x, eps=0.01)", dtype=torch.float32, mistakes=mistakes)
    layer = impl.RMSNorm(8, eps=0.01)
    assert_close(layer(x), rms_norm_float64(x, eps=0.01), what="RMSNorm(8, eps=0.01)(x)", dtype=torch.float32,
                 mistakes={"the layer ignores its own eps: pass self.eps on to rms_norm": rms_norm_float64(x)})


def test_float16_statistics_do_not_overflow(impl):
    """A float16 row of 300s normalises to ones: squares (90000) overflow float16, so the statistics are in float32."""
    x = torch.full((2, 16), 300.0, dtype=torch.float16)
    out = impl.rms_norm(x)
    expect(bool(torch.isfinite(out).all()), (
        "rms_norm of a float16 row of 300s gives inf or NaN.\n  Likely mistake: the statistics are computed in "
        "float16, where 300**2 = 90000 overflows (the largest float16 is 65504): upcast x to float32 first"))
    assert_close(out, rms_norm_float64(x), what="rms_norm(x) for float16 x of 300s", dtype=torch.float16)


def test_a_float32_weight_on_bfloat16_input_gives_float32(impl):
    """The normalised x is cast back to bfloat16 before the float32 weight multiplies it: the result is float32."""
    x = torch.randn(4, 16).to(torch.bfloat16)
    weight = torch.rand(16) + 0.5
    assert_close(impl.rms_norm(x, weight), rms_norm_float64(x, weight), what="rms_norm(bfloat16 x, float32 weight)",
                 dtype=torch.float32, tol=tolerance_for(torch.bfloat16))


def test_module_has_a_weight_of_ones(impl):
    """RMSNorm(dim) has one learnable parameter `weight` of shape (dim,), all ones, and applies rms_norm."""
    layer = impl.RMSNorm(8)
    parameters = dict(layer.named_parameters())
    expect(list(parameters) == ["weight"], f"RMSNorm should have exactly one parameter named 'weight', found {list(parameters)}")
    assert_close(layer.weight.detach(), torch.ones(8), what="RMSNorm(8).weight at initialisation")
    x = torch.randn(2, 8)
    assert_close(layer(x), rms_norm_float64(x), what="RMSNorm(8)(x)", dtype=torch.float32)


def test_module_rejects_a_bad_dim(impl):
    """RMSNorm(0) raises ValueError, and so does an input whose last dimension is not dim."""
    assert_raises(ValueError, impl.RMSNorm, 0, when="for RMSNorm(0)")
    layer = impl.RMSNorm(8)
    assert_raises(ValueError, layer, torch.randn(2, 7), when="for an input of shape (2, 7) given to RMSNorm(8)")
