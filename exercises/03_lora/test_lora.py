"""Public tests of module 03 (LoRA). Run: pytest exercises/03_lora

These check the essentials quickly, with torch only; the grader's hidden tests check more (peft's
LoRA layer and get_peft_model as the oracle, dropout, initialisation, training). Read docs/03_lora.md.
"""

import torch
from torch import nn

from grader.harness.checks import assert_close, assert_raises


def lora_float64(base, A, B, x, scaling):
    """The LoRA formula in float64: x @ W.T + b + x @ A.T @ B.T * scaling."""
    x, W, A, B = x.double(), base.weight.double(), A.detach().double(), B.detach().double()
    out = x @ W.T + x @ A.T @ B.T * scaling
    return out if base.bias is None else out + base.bias.double()


def test_shapes_and_initialisation(impl):
    """LoRALinear(Linear(20, 12), r=4, alpha=8) has A (4, 20), B (12, 4) all zeros, scaling 2 and merged False."""
    layer = impl.LoRALinear(nn.Linear(20, 12), r=4, alpha=8.0)
    assert tuple(layer.lora_A.shape) == (4, 20), f"lora_A should have shape (r, in_features) = (4, 20), got {tuple(layer.lora_A.shape)}"
    assert tuple(layer.lora_B.shape) == (12, 4), f"lora_B should have shape (out_features, r) = (12, 4), got {tuple(layer.lora_B.shape)}"
    assert_close(layer.lora_B.detach(), torch.zeros(12, 4), what="lora_B at initialisation (it starts at zero)")
    assert layer.lora_A.detach().abs().max() > 0, "lora_A should be initialised randomly (kaiming-uniform), not left at zero"
    assert layer.scaling == 2.0, f"scaling should be alpha / r = 8 / 4 = 2.0, got {layer.scaling}"
    assert layer.merged is False, f"a new LoRALinear is not merged: merged should be False, got {layer.merged!r}"


def test_output_at_initialisation_equals_the_base_layer(impl):
    """A freshly wrapped layer computes exactly what the base layer computed (B = 0)."""
    base = nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)
    expected = base(x).detach()
    layer = impl.LoRALinear(base, r=4)
    b_not_zero = lambda out: bool(layer.lora_B.detach().abs().max() > 0)  # noqa: E731
    assert_close(layer(x), expected, what="LoRALinear(base)(x) right after construction",
                 mistakes={"B is not initialised to zero, so the update is not zero at the start": b_not_zero})


def test_forward_matches_the_formula(impl):
    """With non-zero A and B, forward is base(x) + x @ A.T @ B.T * alpha / r."""
    base = nn.Linear(16, 8)
    layer = impl.LoRALinear(base, r=4, alpha=12.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(4, 16))
        layer.lora_B.copy_(torch.randn(8, 4))
    x = torch.randn(2, 3, 16)
    A, B = layer.lora_A, layer.lora_B
    mistakes = {
        "the update is not multiplied by scaling = alpha / r": lora_float64(base, A, B, x, 1.0),
        "scaling is r / alpha; it is alpha / r": lora_float64(base, A, B, x, 4 / 12),
    }
    assert_close(layer(x), lora_float64(base, A, B, x, 3.0), what="LoRALinear(base, r=4, alpha=12)(x)", dtype=torch.float32, mistakes=mistakes)


def test_only_A_and_B_are_trainable(impl):
    """The base layer's weight and bias are frozen; lora_A and lora_B require grad."""
    layer = impl.LoRALinear(nn.Linear(10, 6), r=2)
    trainable = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    assert trainable == ["lora_A", "lora_B"], f"only lora_A and lora_B should require grad, found {trainable}: freeze base (requires_grad_(False))"


def test_merge_and_unmerge(impl):
    """merge() folds B @ A * scaling into base.weight (same output), unmerge() takes it out again."""
    base = nn.Linear(12, 6)
    original = base.weight.detach().clone()
    layer = impl.LoRALinear(base, r=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(6, 3))
    x = torch.randn(4, 12)
    before = layer(x).detach()
    layer.merge()
    assert layer.merged is True, "after merge(), merged should be True"
    expected = original.double() + 2.0 * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
    assert_close(layer.base.weight.detach(), expected, what="base.weight after merge()", dtype=torch.float32)
    twice = before + 2.0 * x @ layer.lora_A.detach().T @ layer.lora_B.detach().T
    assert_close(layer(x), before, what="the output after merge() (it must not change)",
                 mistakes={"the merged layer still adds the LoRA path: once merged, forward is base(x) alone": twice})
    layer.unmerge()
    assert layer.merged is False, "after unmerge(), merged should be False"
    assert_close(layer.base.weight.detach(), original, what="base.weight after merge() then unmerge()")


def test_inject_lora_follows_the_suffix_rule(impl):
    """inject_lora wraps the Linear layers named like a target or ending in '.' + target, and freezes the rest."""
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(8, 8))
    model.add_module("proj", nn.Linear(8, 4))
    model.add_module("norm", nn.LayerNorm(4))
    block = nn.Module()
    block.proj = nn.Linear(4, 4)
    model.add_module("block", block)
    returned = impl.inject_lora(model, ["proj"], r=2, alpha=4.0)
    assert returned is model, "inject_lora should change the model in place and return it"
    wrapped = sorted(name for name, m in model.named_modules() if isinstance(m, impl.LoRALinear))
    assert wrapped == ["block.proj", "proj"], (
        f"target 'proj' should wrap 'proj' and 'block.proj' but not 'q_proj'; wrapped {wrapped}. "
        "Match name == target or name.endswith('.' + target)"
    )
    expected = 2 * (8 + 4) + 2 * (4 + 4)  # r * (in + out) per wrapped layer
    assert impl.trainable_parameters(model) == expected, (
        f"after inject_lora only A and B are trainable: r * (in + out) summed = {expected}, "
        f"got {impl.trainable_parameters(model)} (did you freeze the other parameters?)"
    )


def test_bad_arguments_raise(impl):
    """r <= 0 raises ValueError, a base that is not nn.Linear raises TypeError, no matched module raises ValueError."""
    assert_raises(ValueError, impl.LoRALinear, nn.Linear(4, 4), r=0, when="for LoRALinear(Linear(4, 4), r=0)")
    assert_raises(TypeError, impl.LoRALinear, nn.Conv1d(4, 4, 1), when="for LoRALinear(Conv1d(...))")
    model = nn.Sequential(nn.Linear(4, 4))
    assert_raises(ValueError, impl.inject_lora, model, ["q_proj"], when="for inject_lora(model, ['q_proj']) on a model without q_proj")
