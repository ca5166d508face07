"""Public tests of module 03 (LoRA). Run: pytest exercises/03_lora

These check the essentials quickly, with torch only; the grader's hidden tests check more (peft's
LoRA layer and get_peft_model as the oracle, training). Read docs/03_lora.md.
"""

import copy
import math

import torch
from torch import nn

from grader.harness.checks import assert_close, assert_raises, expect


def lora_float64(W, b, A, B, x, scaling):
    """The LoRA formula in float64: x @ W.T + b + x @ A.T @ B.T * scaling (all tensors are the test's own copies)."""
    x, W, A, B = x.double(), W.double(), A.double(), B.double()
    out = x @ W.T + x @ A.T @ B.T * scaling
    return out if b is None else out + b.double()


def with_adapter(layer, A, B):
    """Put the test's own A and B into the layer (so the expected values never depend on the learner's tensors)."""
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)


def test_shapes_and_initialisation(impl):
    """LoRALinear(Linear(20, 12), r=4, alpha=8) has A (4, 20), B (12, 4) all zeros, scaling 2 and merged False."""
    layer = impl.LoRALinear(nn.Linear(20, 12), r=4, alpha=8.0)
    expect(tuple(layer.lora_A.shape) == (4, 20), f"lora_A should have shape (r, in_features) = (4, 20), got {tuple(layer.lora_A.shape)}")
    expect(tuple(layer.lora_B.shape) == (12, 4), f"lora_B should have shape (out_features, r) = (12, 4), got {tuple(layer.lora_B.shape)}")
    assert_close(layer.lora_B.detach(), torch.zeros(12, 4), what="lora_B at initialisation (it starts at zero)")
    expect(layer.lora_A.detach().abs().max() > 0, "lora_A should be initialised randomly (kaiming-uniform), not left at zero")
    expect(layer.scaling == 2.0, f"scaling should be alpha / r = 8 / 4 = 2.0, got {layer.scaling}")
    expect(layer.merged is False, f"a new LoRALinear is not merged: merged should be False, got {layer.merged!r}")


def test_A_is_initialised_like_an_nn_linear_weight(impl):
    """lora_A is uniform on [-1/sqrt(in_features), 1/sqrt(in_features)]: kaiming_uniform_ with a=math.sqrt(5)."""
    layer = impl.LoRALinear(nn.Linear(256, 8), r=64)
    A = layer.lora_A.detach().double()
    bound = 1 / math.sqrt(256)
    largest, spread = A.abs().max().item(), A.std().item()
    expect(largest <= bound * (1 + 1e-6), (
        f"lora_A has values up to {largest:.4f}, beyond the bound 1/sqrt(in_features) = {bound:.4f}.\n"
        f"  Likely mistake: kaiming_uniform_ with its default a=0 (a bound sqrt(6) = {math.sqrt(6):.2f} times wider); "
        "pass a=math.sqrt(5), as nn.Linear does"))
    uniform_std = bound / math.sqrt(3)
    expect(abs(spread - uniform_std) <= 0.1 * uniform_std, (
        f"lora_A has a standard deviation of {spread:.4f}; uniform on [-{bound:.4f}, {bound:.4f}] gives {uniform_std:.4f}.\n"
        "  Likely mistake: a normal (gaussian) initialisation; LoRA's default is kaiming_uniform_(A, a=math.sqrt(5))"))


def test_adapter_follows_the_base_layer_dtype(impl):
    """A and B are created in the dtype (and on the device) of base.weight: bfloat16 for a bfloat16 layer."""
    layer = impl.LoRALinear(nn.Linear(8, 4, dtype=torch.bfloat16), r=2)
    for name in ("lora_A", "lora_B"):
        dtype = getattr(layer, name).dtype
        expect(dtype == torch.bfloat16, (
            f"{name} of a LoRALinear around a bfloat16 nn.Linear has dtype {dtype}, expected torch.bfloat16: "
            "create it with dtype=base.weight.dtype and device=base.weight.device"))


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
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = impl.LoRALinear(base, r=4, alpha=12.0)
    A, B = torch.randn(4, 16), torch.randn(8, 4)
    with_adapter(layer, A, B)
    x = torch.randn(2, 3, 16)
    mistakes = {
        "the update is not multiplied by scaling = alpha / r": lora_float64(W, b, A, B, x, 1.0),
        "the update is scaled by alpha alone; scaling is alpha / r": lora_float64(W, b, A, B, x, 12.0),
        "scaling is r / alpha; it is alpha / r": lora_float64(W, b, A, B, x, 4 / 12),
    }
    assert_close(layer(x), lora_float64(W, b, A, B, x, 3.0), what="LoRALinear(base, r=4, alpha=12)(x)", dtype=torch.float32, mistakes=mistakes)


def test_dropout_acts_on_the_input_of_the_lora_path_only(impl):
    """In training, dropout(x) feeds the LoRA path only, never base(x) nor the LoRA output; in eval() it is off."""
    base = nn.Linear(8, 6)
    reference = copy.deepcopy(base)
    layer = impl.LoRALinear(base, r=8, alpha=8.0, dropout=0.5)  # scaling 1
    # A = I and B = all ones: the LoRA path of a row is the sum of its (dropped-out) inputs, the same in every column
    with_adapter(layer, torch.eye(8), torch.ones(6, 8))
    x = torch.rand(256, 8) + 0.5
    full = x.double().sum(-1, keepdim=True).expand(256, 6)
    with torch.no_grad():
        base_out = reference(x).double()
        layer.train()
        lora = layer(x).double() - base_out
        layer.eval()
        out_eval = layer(x)
    assert_close(out_eval, base_out + full, what="LoRALinear(base, r=8, alpha=8, dropout=0.5)(x) in eval() (dropout off)", dtype=torch.float32,
                 mistakes={"the update is scaled by alpha alone; scaling is alpha / r (here 1)": base_out + 8 * full})
    spread = (lora - lora[:, :1]).abs().max().item()
    expect(spread <= 1e-4 * full.abs().max().item(), (
        "In training, the LoRA path differs from one output column to the next, as if each output element were "
        "dropped on its own.\n  Likely mistake: dropout on the LoRA output (or on base(x)); it goes on the input: "
        "dropout(x) @ A.T @ B.T"))
    changed = ((lora[:, 0] - full[:, 0]).abs() > 1e-4 * full.abs().max()).float().mean().item()
    expect(changed > 0.5, (
        f"With dropout=0.5 in training mode, only {100 * changed:.0f}% of the rows' LoRA paths changed: "
        "is dropout applied at all (nn.Dropout(dropout) on x in the LoRA path)?"))


def test_only_A_and_B_are_trainable(impl):
    """The base layer's weight and bias are frozen; lora_A and lora_B require grad."""
    layer = impl.LoRALinear(nn.Linear(10, 6), r=2)
    trainable = sorted(name for name, p in layer.named_parameters() if p.requires_grad)
    expect(trainable == ["lora_A", "lora_B"], f"only lora_A and lora_B should require grad, found {trainable}: freeze base (requires_grad_(False))")


def test_merge_and_unmerge(impl):
    """merge() folds B @ A * scaling into base.weight (same output), unmerge() takes it out again."""
    base = nn.Linear(12, 6)
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    layer = impl.LoRALinear(base, r=3, alpha=6.0)  # scaling 2
    A, B = torch.randn(3, 12) / 4, torch.randn(6, 3)
    with_adapter(layer, A, B)
    x = torch.randn(4, 12)
    layer.merge()
    expect(layer.merged is True, "after merge(), merged should be True")
    merged = W.double() + 2.0 * B.double() @ A.double()
    assert_close(layer.base.weight.detach(), merged, what="base.weight after merge()", dtype=torch.float32,
                 mistakes={"merge() subtracts the update; it adds B @ A * scaling": W.double() - 2.0 * B.double() @ A.double(),
                           "merge() adds B @ A without the scaling": W.double() + B.double() @ A.double(),
                           "scaling is alpha alone (6 here); it is alpha / r = 2": W.double() + 6.0 * B.double() @ A.double()})
    truth = lora_float64(W, b, A, B, x, 2.0)  # what forward computes before merging, and must still compute after
    assert_close(layer(x), truth, what="the output after merge() (it must not change)", dtype=torch.float32,
                 mistakes={"the merged layer still adds the LoRA path: once merged, forward is base(x) alone": lora_float64(W, b, A, B, x, 4.0)})
    layer.unmerge()
    expect(layer.merged is False, "after unmerge(), merged should be False")
    assert_close(layer.base.weight.detach(), W, what="base.weight after merge() then unmerge()")


def test_merge_twice_merges_once_and_unmerge_needs_a_merge(impl):
    """merge() on a merged layer and unmerge() on an unmerged one change nothing."""
    base = nn.Linear(12, 6)
    W = base.weight.detach().clone()
    layer = impl.LoRALinear(base, r=3, alpha=6.0)
    A, B = torch.randn(3, 12) / 4, torch.randn(6, 3)
    with_adapter(layer, A, B)
    layer.unmerge()
    assert_close(layer.base.weight.detach(), W, what="base.weight after unmerge() on a layer that was never merged",
                 mistakes={"unmerge() subtracts the update even when the layer is not merged: check merged first": W.double() - 2.0 * B.double() @ A.double()})
    layer.merge()
    layer.merge()
    assert_close(layer.base.weight.detach(), W.double() + 2.0 * B.double() @ A.double(), what="base.weight after merge() twice",
                 dtype=torch.float32, mistakes={"merge() adds the update again when already merged: return early if merged": W.double() + 4.0 * B.double() @ A.double()})


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
    expect(returned is model, "inject_lora should change the model in place and return it")
    wrapped = sorted(name for name, m in model.named_modules() if isinstance(m, impl.LoRALinear))
    expect(wrapped == ["block.proj", "proj"], (
        f"target 'proj' should wrap 'proj' and 'block.proj' but not 'q_proj'; wrapped {wrapped}. "
        "Match name == target or name.endswith('.' + target)"))
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    expected = 2 * (8 + 4) + 2 * (4 + 4)  # r * (in + out) per wrapped layer
    got = impl.trainable_parameters(model)
    if got == tensors:
        mistake = "trainable_parameters counts tensors; count their elements (p.numel())"
    elif got > expected:
        mistake = "did inject_lora freeze every parameter outside the LoRA layers?"
    else:
        mistake = "does trainable_parameters count every parameter that requires grad, element by element?"
    expect(got == expected, (
        f"after inject_lora only A and B are trainable: r * (in + out) summed = {expected} numbers, "
        f"but trainable_parameters(model) returned {got}.\n  Likely mistake: {mistake}"))


def test_inject_lora_matches_dotted_targets(impl):
    """A target with a dot ('block.proj') matches the module of that full name, not every 'proj'."""
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4, 4))
    block = nn.Module()
    block.proj = nn.Linear(4, 4)
    model.add_module("block", block)
    impl.inject_lora(model, ["block.proj"], r=2)
    wrapped = sorted(name for name, m in model.named_modules() if isinstance(m, impl.LoRALinear))
    expect(wrapped == ["block.proj"], (
        f"target 'block.proj' should wrap 'block.proj' only; wrapped {wrapped}. Compare the whole name "
        "(name == target or name.endswith('.' + target)), not only its last component"))


def test_bad_arguments_raise(impl):
    """r <= 0 raises ValueError, a base that is not nn.Linear raises TypeError, no matched module raises ValueError."""
    assert_raises(ValueError, impl.LoRALinear, nn.Linear(4, 4), r=0, when="for LoRALinear(Linear(4, 4), r=0)")
    assert_raises(TypeError, impl.LoRALinear, nn.Conv1d(4, 4, 1), when="for LoRALinear(Conv1d(...))")
    model = nn.Sequential(nn.Linear(4, 4))
    assert_raises(ValueError, impl.inject_lora, model, ["q_proj"], when="for inject_lora(model, ['q_proj']) on a model without q_proj")
