"""Public tests of module 01 (RMSNorm). Run: pytest exercises/01_rmsnorm

These check the essentials quickly; the grader's hidden tests check more (dtypes, gradients,
transformers' LlamaRMSNorm as the oracle). Read docs/01_rmsnorm.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises


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


def test_module_has_a_weight_of_ones(impl):
    """RMSNorm(dim) has one learnable parameter `weight` of shape (dim,), all ones, and applies rms_norm."""
    layer = impl.RMSNorm(8)
    parameters = dict(layer.named_parameters())
    assert list(parameters) == ["weight"], f"RMSNorm should have exactly one parameter named 'weight', found {list(parameters)}"
    assert_close(layer.weight.detach(), torch.ones(8), what="RMSNorm(8).weight at initialisation")
    x = torch.randn(2, 8)
    assert_close(layer(x), rms_norm_float64(x), what="RMSNorm(8)(x)", dtype=torch.float32)


def test_module_rejects_a_bad_dim(impl):
    """RMSNorm(0) raises ValueError, and so does an input whose last dimension is not dim."""
    assert_raises(ValueError, impl.RMSNorm, 0, when="for RMSNorm(0)")
    layer = impl.RMSNorm(8)
    assert_raises(ValueError, layer, torch.randn(2, 7), when="for an input of shape (2, 7) given to RMSNorm(8)")
