"""Hidden suite of module 03 (LoRA): peft's LoRA layer and get_peft_model are the oracle, float64 the truth.

Run: pytest grader/hidden/03_lora --impl solutions   (or --impl path/to/submission)

peft 0.21 keeps one LoRA adapter of an nn.Linear as `lora_A["default"].weight` (r, in),
`lora_B["default"].weight` (out, r), `scaling["default"] = lora_alpha / r`, around `base_layer`.
Models are built from configs with random weights: nothing is downloaded.

Expected values never come from an object the learner's code holds: a LoRALinear may legally change its base
layer's weight (merge(), or merging on eval() as microsoft/LoRA's loralib does), so every truth is computed
from a copy of the base layer (or of the inputs) taken before the learner's code sees it, and after the learner's
call, so that nothing the learner's code could find in memory holds the answer yet.
"""

import copy
import math

import pytest
import torch
from torch import nn

from grader.harness.checks import assert_close, assert_raises
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.pytorch_utils import Conv1D

CONFIGS = [(4, 8.0), (8, 16.0), (2, 32.0)]  # (r, alpha): scaling 2, 2 and 16


class Holder(nn.Module):
    """The smallest model peft can wrap: one Linear named `lin`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.lin = linear

    def forward(self, x):
        return self.lin(x)


def peft_lora(linear, r, alpha, dropout=0.0):
    """peft's LoRA layer around a copy of `linear` (adapter kept in the base layer's dtype)."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["lin"])
    model = get_peft_model(Holder(copy.deepcopy(linear)), config, autocast_adapter_dtype=False)
    return model.base_model.model.lin


def ours_holding(impl, linear, r, alpha, A, B):
    """The learner's LoRALinear around a copy of `linear`, holding copies of the given A and B."""
    ours = impl.LoRALinear(copy.deepcopy(linear), r=r, alpha=alpha)
    with torch.no_grad():
        ours.lora_A.copy_(A)
        ours.lora_B.copy_(B)
    return ours


def peft_holding(linear, r, alpha, A, B):
    """peft's LoRA layer around a copy of `linear`, holding copies of the given A and B."""
    theirs = peft_lora(linear, r, alpha)
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(A)
        theirs.lora_B["default"].weight.copy_(B)
    return theirs


def make_linear(in_features, out_features, dtype=torch.float32, device="cpu", bias=True):
    return nn.Linear(in_features, out_features, bias=bias).to(device=device, dtype=dtype)


def random_AB(r, in_features, out_features, dtype, device):
    """A non-zero A and B (B must not be zero, or the update is invisible)."""
    A = (torch.rand(r, in_features) * 2 - 1) / math.sqrt(in_features)
    B = torch.randn(out_features, r) * 0.5
    return A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype)


def truth(linear, A, B, x, scaling):
    """The LoRA formula in float64: x @ W.T + b + x @ A.T @ B.T * scaling."""
    x, W, A, B = (t.detach().double() for t in (x, linear.weight, A, B))
    out = x @ W.T + (x @ A.T) @ B.T * scaling
    return out if linear.bias is None else out + linear.bias.detach().double()


def known_mistakes(linear, A, B, x, r, alpha):
    """Outputs of the mistakes learners make, to name them when a result matches one."""
    return {
        "the update is not multiplied by scaling = alpha / r": truth(linear, A, B, x, 1.0),
        "scaling is r / alpha; it is alpha / r": truth(linear, A, B, x, r / alpha),
        "scaling is alpha alone; it is alpha / r": truth(linear, A, B, x, alpha),
        "the LoRA path is missing: only base(x) is returned": truth(linear, A, B, x, 0.0),
        "the LoRA path is added twice (once merged into the weight, once in forward?)": truth(linear, A, B, x, 2 * alpha / r),
    }


def tiny_llama():
    """A 2-layer Llama with hidden size 32 and random weights (no download)."""
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def wrapped_names(model, cls):
    return sorted(name for name, module in model.named_modules() if isinstance(module, cls))


def lora_layers_of(model, impl):
    return {name: module for name, module in model.named_modules() if isinstance(module, impl.LoRALinear)}


def peft_model(model, targets, r=4, alpha=16.0, dropout=0.0):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets))


# ---------------------------------------------------------------------------------------------------
# LoRALinear against peft's LoRA layer


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("r, alpha", CONFIGS, ids=[f"r{r}_alpha{int(a)}" for r, a in CONFIGS])
def test_forward_matches_peft(impl, device, dtype, r, alpha):
    """LoRALinear's output equals peft's LoRA layer holding the same A and B, for several r, alpha and dtypes."""
    linear = make_linear(48, 24, dtype, device)
    A, B = random_AB(r, 48, 24, dtype, device)
    ours = ours_holding(impl, linear, r, alpha, A, B)
    x = torch.randn(3, 7, 48).to(device=device, dtype=dtype)
    out = ours(x.clone())
    expected, mistakes = peft_holding(linear, r, alpha, A, B)(x).detach(), known_mistakes(linear, A, B, x, r, alpha)
    assert_close(out, expected, what=f"LoRALinear(r={r}, alpha={alpha})(x) for {dtype} x against peft", mistakes=mistakes)
    assert_close(out, truth(linear, A, B, x, alpha / r), what="LoRALinear(x) against the float64 formula", dtype=dtype, mistakes=mistakes)


@pytest.mark.points(1)
def test_forward_without_bias(impl, device):
    """A base layer without bias works too: output equals peft's and the formula."""
    linear = make_linear(16, 40, device=device, bias=False)
    A, B = random_AB(4, 16, 40, torch.float32, device)
    ours = ours_holding(impl, linear, 4, 8.0, A, B)
    x = torch.randn(5, 16, device=device)
    out = ours(x.clone())
    expected = peft_holding(linear, 4, 8.0, A, B)(x).detach()
    assert_close(out, expected, what="LoRALinear(Linear(16, 40, bias=False))(x) against peft",
                 mistakes=known_mistakes(linear, A, B, x, 4, 8.0))


@pytest.mark.points(3)
def test_gradients_match_peft(impl, device):
    """Gradients of lora_A, lora_B and x equal peft's (and the float64 formula's); the base gets none."""
    linear = make_linear(32, 20, device=device)
    A, B = random_AB(4, 32, 20, torch.float32, device)
    ours = ours_holding(impl, linear, 4, 12.0, A, B)
    x = torch.randn(6, 32, device=device)
    grad_out = torch.randn(6, 20, device=device)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(x_ours).backward(grad_out.clone())
    theirs = peft_holding(linear, 4, 12.0, A, B)
    theirs(x_theirs).backward(grad_out.clone())
    assert ours.lora_A.grad is not None and ours.lora_B.grad is not None, "lora_A and lora_B got no gradient: keep them in the autograd graph"
    A_theirs, B_theirs = theirs.lora_A["default"].weight.grad, theirs.lora_B["default"].weight.grad
    assert_close(ours.lora_A.grad, A_theirs, what="the gradient of lora_A against peft")
    assert_close(ours.lora_B.grad, B_theirs, what="the gradient of lora_B against peft")
    assert_close(x_ours.grad, x_theirs.grad, what="the gradient with respect to the input x against peft")
    A64, B64 = A.double().requires_grad_(), B.double().requires_grad_()
    out64 = x.double() @ linear.weight.detach().double().T + (x.double() @ A64.T) @ B64.T * 3.0
    out64.backward(grad_out.double())
    assert_close(ours.lora_A.grad, A64.grad, what="the gradient of lora_A against the float64 formula", dtype=torch.float32)
    assert_close(ours.lora_B.grad, B64.grad, what="the gradient of lora_B against the float64 formula", dtype=torch.float32)
    assert ours.base.weight.grad is None, "base.weight received a gradient: the base layer must be frozen (requires_grad=False)"


@pytest.mark.points(3)
@pytest.mark.parametrize("r, alpha", CONFIGS, ids=[f"r{r}_alpha{int(a)}" for r, a in CONFIGS])
def test_merge_matches_peft(impl, device, r, alpha):
    """merge() gives peft's merged weight, and the merged output equals the unmerged one."""
    linear = make_linear(40, 24, device=device)
    A, B = random_AB(r, 40, 24, torch.float32, device)
    ours = ours_holding(impl, linear, r, alpha, A, B)
    x = torch.randn(4, 40, device=device)
    unmerged = ours(x.clone()).detach()
    ours.merge()
    merged_out = ours(x.clone())
    theirs = peft_holding(linear, r, alpha, A, B)
    theirs.merge()
    assert ours.merged is True, f"after merge() the attribute merged should be True, got {ours.merged!r}"
    expected_weight = linear.weight.detach().double() + B.double() @ A.double() * (alpha / r)
    weight_mistakes = {
        "merge() adds B @ A without scaling": linear.weight.detach().double() + B.double() @ A.double(),
        "merge() uses r / alpha as scaling": linear.weight.detach().double() + B.double() @ A.double() * (r / alpha),
    }
    assert_close(ours.base.weight.detach(), theirs.base_layer.weight.detach(), what="base.weight after merge() against peft's merged weight", mistakes=weight_mistakes)
    assert_close(ours.base.weight.detach(), expected_weight, what="base.weight after merge() against W + B @ A * alpha / r", dtype=torch.float32)
    assert_close(merged_out, unmerged, what="the output after merge() against the output before it", mistakes=known_mistakes(linear, A, B, x, r, alpha))


@pytest.mark.points(2)
def test_merge_is_idempotent(impl, device):
    """Calling merge() twice folds the update in once, as peft does."""
    linear = make_linear(24, 16, device=device)
    A, B = random_AB(4, 24, 16, torch.float32, device)
    ours = ours_holding(impl, linear, 4, 8.0, A, B)
    ours.merge()
    ours.merge()
    x = torch.randn(3, 24, device=device)
    out = ours(x.clone())
    theirs = peft_holding(linear, 4, 8.0, A, B)
    theirs.merge()
    twice = linear.weight.detach().double() + 2 * B.double() @ A.double() * 2.0
    assert_close(ours.base.weight.detach(), theirs.base_layer.weight.detach(), what="base.weight after merge() twice",
                 mistakes={"the second merge() added the update again: return early when already merged": twice})
    assert_close(out, truth(linear, A, B, x, 2.0), what="the output after merge() twice", dtype=torch.float32)


@pytest.mark.points(2)
def test_unmerge_restores_the_weight(impl, device):
    """merge() then unmerge() restores base.weight and the output; a second unmerge() changes nothing."""
    linear = make_linear(24, 32, device=device)
    original = linear.weight.detach().clone()
    A, B = random_AB(8, 24, 32, torch.float32, device)
    ours = ours_holding(impl, linear, 8, 16.0, A, B)
    x = torch.randn(5, 24, device=device)
    for _ in range(2):  # the round trip works more than once
        ours.merge()
        ours.unmerge()
        assert ours.merged is False, f"after unmerge() the attribute merged should be False, got {ours.merged!r}"
    mistakes = {"unmerge() did not subtract the update (it only reset merged?)": original.double() + B.double() @ A.double() * 2.0}
    assert_close(ours.base.weight.detach(), original, what="base.weight after merge() and unmerge() twice", mistakes=mistakes)
    ours.unmerge()  # not merged: nothing to take out
    assert_close(ours.base.weight.detach(), original, what="base.weight after unmerge() of an unmerged layer",
                 mistakes={"unmerge() subtracted the update although the layer was not merged": original.double() - B.double() @ A.double() * 2.0})
    out = ours(x.clone())
    theirs = peft_holding(linear, 8, 16.0, A, B)
    theirs.merge()
    theirs.unmerge()
    expected = theirs(x).detach()
    assert_close(out, expected, what="the output after merge() and unmerge() against peft's", mistakes=known_mistakes(linear, A, B, x, 8, 16.0))


# ---------------------------------------------------------------------------------------------------
# Initialisation, freezing, training


@pytest.mark.points(2)
@pytest.mark.parametrize("shape", [(3, 40), (2, 5, 40), (40,)], ids=str)
def test_output_at_initialisation_equals_the_base_layer(impl, device, shape):
    """Right after wrapping, the output equals the base layer's (B starts at zero), for any leading shape."""
    linear = make_linear(40, 12, device=device)
    x = torch.randn(shape, device=device)
    layer = impl.LoRALinear(copy.deepcopy(linear), r=8, alpha=16.0)
    out = layer(x.clone())
    expected = linear(x).detach()
    assert_close(out, expected, what=f"a freshly wrapped LoRALinear for x of shape {shape}",
                 mistakes={"lora_B is not initialised to zero": lambda out: bool(layer.lora_B.detach().abs().max() > 0)})


def assert_kaiming_uniform(A: torch.Tensor, in_features: int, who: str) -> None:
    """`A` looks like draws of kaiming_uniform_(a=sqrt(5)) for fan-in `in_features`: uniform on [-b, b], b = 1/sqrt(in)."""
    A = A.detach().double().cpu()
    bound = 1 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)): sqrt(6 / ((1 + 5) * fan_in)), fan_in = in
    n = A.numel()
    assert float(A.abs().max()) <= bound * (1 + 1e-6), (
        f"{who} has values up to {float(A.abs().max()):.4g}, beyond the kaiming-uniform(a=sqrt(5)) bound "
        f"1/sqrt(in_features) = {bound:.4g}: use nn.init.kaiming_uniform_(A, a=math.sqrt(5)) on A of shape (r, in_features)"
    )
    # Uniform on [-b, b]: the largest of n >= 16384 draws is within 0.1% of b except with probability e^-16;
    # mean 0 with standard deviation b/sqrt(3n); mean square b^2/3 with standard deviation b^2*sqrt(4/45/n).
    # The 6-sigma bounds below fail a correct draw with probability about 2e-9.
    assert float(A.abs().max()) >= bound * 0.999, (
        f"{who}'s values stay within {float(A.abs().max()):.4g}, well inside 1/sqrt(in_features) = {bound:.4g}: "
        "is the fan-in wrong (A is (r, in_features)), or is A not uniform?"
    )
    assert abs(float(A.mean())) <= 6 * bound / math.sqrt(3 * n), f"{who}'s mean is {float(A.mean()):.3g}, not about 0"
    mean_square = float(A.pow(2).mean())
    assert abs(mean_square - bound**2 / 3) <= 6 * bound**2 * math.sqrt(4 / 45 / n), (
        f"{who}'s mean square is {mean_square:.4g}; a uniform on [-{bound:.4g}, {bound:.4g}] gives {bound**2 / 3:.4g}"
    )


@pytest.mark.points(2)
@pytest.mark.parametrize("in_features, out_features, r", [(256, 64, 64), (64, 512, 256)], ids=["in256", "in64"])
def test_initialisation_distribution(impl, in_features, out_features, r):
    """lora_A is drawn like peft's (kaiming-uniform with a=sqrt(5): uniform within 1/sqrt(in_features)), lora_B is zeros."""
    linear = nn.Linear(in_features, out_features)
    layer = impl.LoRALinear(copy.deepcopy(linear), r=r)
    theirs = peft_lora(linear, r, 16.0)  # the oracle: its A must pass the same check, and its B is zero too
    assert_kaiming_uniform(theirs.lora_A["default"].weight, in_features, "peft's lora_A")
    assert not theirs.lora_B["default"].weight.detach().any(), "peft's lora_B should start at zero"
    assert_close(layer.lora_B.detach(), torch.zeros(out_features, r), what="lora_B at initialisation (zeros, as peft)")
    assert_kaiming_uniform(layer.lora_A, in_features, "lora_A")


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_parameters_attributes_and_freezing(impl, device, dtype):
    """A (r, in) and B (out, r) on the base's device and dtype are the only trainable parameters; scaling = alpha/r."""
    linear = make_linear(20, 12, dtype, device)
    layer = impl.LoRALinear(linear, r=4, alpha=6.0)
    assert tuple(layer.lora_A.shape) == (4, 20), f"lora_A should have shape (r, in_features) = (4, 20), got {tuple(layer.lora_A.shape)}"
    assert tuple(layer.lora_B.shape) == (12, 4), f"lora_B should have shape (out_features, r) = (12, 4), got {tuple(layer.lora_B.shape)}"
    for name in ("lora_A", "lora_B"):
        p = getattr(layer, name)
        assert isinstance(p, nn.Parameter) and p.requires_grad, f"{name} should be a trainable nn.Parameter"
        assert p.dtype == dtype and p.device.type == torch.device(device).type, (
            f"{name} is {p.dtype} on {p.device}; it should follow base.weight ({dtype} on {device})"
        )
    trainable = {id(p) for p in layer.parameters() if p.requires_grad}
    assert trainable == {id(layer.lora_A), id(layer.lora_B)}, (
        "only lora_A and lora_B should require grad; the base layer's weight and bias must be frozen"
    )
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad, "base.weight and base.bias must be frozen"
    assert math.isclose(layer.scaling, 1.5), f"scaling should be alpha / r = 6 / 4 = 1.5, got {layer.scaling}"
    assert layer.merged is False, f"a new LoRALinear is not merged; merged is {layer.merged!r}"


@pytest.mark.points(3)
def test_optimizer_steps_train_only_A_and_B(impl, device):
    """An optimizer over all parameters leaves the base unchanged; B moves first, A from the second step on."""
    linear = make_linear(16, 8, device=device)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    layer = impl.LoRALinear(linear, r=4, alpha=8.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    A0 = layer.lora_A.detach().clone()
    x, target = torch.randn(32, 16, device=device), torch.randn(32, 8, device=device)
    for step in (1, 2):
        optimizer.zero_grad()
        nn.functional.mse_loss(layer(x), target).backward()
        optimizer.step()
        assert torch.equal(layer.base.weight.detach(), weight) and torch.equal(layer.base.bias.detach(), bias), (
            f"the base layer changed after optimizer step {step}: freeze its weight and bias"
        )
        assert layer.lora_B.detach().abs().max() > 0, f"lora_B did not move after step {step}: it should be trainable"
        if step == 1:
            assert torch.equal(layer.lora_A.detach(), A0), (
                "lora_A moved in the first step, but its gradient is scaling * B.T @ ... with B = 0: is B initialised to zero?"
            )
    assert not torch.equal(layer.lora_A.detach(), A0), "lora_A did not move after two steps: it should be trainable"


def orthogonal(n, device):
    """A random orthogonal (n, n) float64 matrix: its inverse is its transpose."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return q.to(device)


@pytest.mark.points(3)
def test_dropout_only_on_the_lora_path_in_training(impl, device):
    """In training mode dropout drops inputs of the LoRA path only (scaled by 1/(1-p)); in eval mode it is off."""
    n, p = 32, 0.5
    linear = nn.Linear(n, n).to(device=device, dtype=torch.float64)
    base = copy.deepcopy(linear)  # the truth's weights: the layer may merge into `linear` (on eval(), as loralib does)
    layer = impl.LoRALinear(linear, r=n, alpha=float(n), dropout=p)  # scaling 1
    Q = orthogonal(n, device)
    with torch.no_grad():  # A orthogonal, B the identity: the LoRA path is dropout(x) @ Q.T, invertible
        layer.lora_A.copy_(Q)
        layer.lora_B.copy_(torch.eye(n, dtype=torch.float64, device=device))
    x = torch.randn(64, n, dtype=torch.float64, device=device) + 3.0  # away from 0: kept and dropped differ
    layer.train()
    train_out = layer(x.clone()).detach()
    layer.eval()
    eval_out = layer(x.clone())
    base_out = base(x).detach()
    eval_truth = truth(base, Q, torch.eye(n, dtype=torch.float64, device=device), x, 1.0)

    dropped_x = ((train_out - base_out) @ Q)  # what the LoRA path saw in training mode, recovered
    kept = (dropped_x - x / (1 - p)).abs() <= 1e-9 * x.abs().max()
    zero = dropped_x.abs() <= 1e-9 * x.abs().max()
    assert bool((kept | zero).all()), (
        "in training mode, the LoRA path should see dropout(x): each input element either 0 or x / (1 - p), "
        "and base(x) untouched. Apply dropout to the input of the LoRA path only (not to base, not to its output)"
    )
    fraction = float(zero.double().mean())
    assert abs(fraction - p) <= 0.1, f"dropout={p} dropped {fraction:.0%} of the LoRA path's inputs"

    random_in_eval = lambda out: not torch.equal(layer(x.clone()), layer(x.clone()))  # noqa: E731
    mistakes = {"dropout is also active in eval mode: use nn.Dropout (it follows model.eval())": random_in_eval}
    assert_close(eval_out, eval_truth, what="LoRALinear(dropout=0.5)(x) in eval mode", mistakes=mistakes)


# ---------------------------------------------------------------------------------------------------
# inject_lora against get_peft_model


LLAMA_TARGETS = [
    ["q_proj", "v_proj"],
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ["self_attn.o_proj", "lm_head"],
    ["layers.1.mlp.down_proj"],
]


@pytest.mark.points(4)
@pytest.mark.parametrize("targets", LLAMA_TARGETS, ids=lambda t: "+".join(t))
def test_inject_wraps_what_peft_wraps_on_llama(impl, device, targets):
    """On a tiny Llama, inject_lora wraps the same modules as peft's target_modules and trains as many parameters."""
    model = tiny_llama().to(device)
    original = copy.deepcopy(model)
    returned = impl.inject_lora(model, targets, r=4, alpha=16.0)
    reference = peft_model(original, targets, r=4, alpha=16.0)
    assert returned is model, "inject_lora should modify the model in place and return it"
    ours, theirs = wrapped_names(model, impl.LoRALinear), wrapped_names(reference.base_model.model, LoraLayer)
    assert ours == theirs, f"target_modules={targets}: inject_lora wrapped {ours}, peft wraps {theirs}"
    expected = reference.get_nb_trainable_parameters()[0]
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == expected, (
        f"after inject_lora, {count} parameter elements require grad; peft trains {expected} (only A and B): "
        "freeze every parameter that is not a LoRA A or B"
    )
    for name, parameter in model.named_parameters():
        is_lora = name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
        assert parameter.requires_grad == is_lora, (
            f"{name} should {'' if is_lora else 'not '}require grad after inject_lora: only A and B are trained"
        )


@pytest.mark.points(3)
def test_injected_llama_matches_peft_logits(impl, device):
    """A Llama with inject_lora gives the base logits at init, and peft's logits once both hold the same A and B."""
    model = tiny_llama().to(device)
    original = copy.deepcopy(model)
    input_ids = torch.randint(0, 100, (2, 10), device=device)
    targets = ["q_proj", "v_proj", "down_proj"]
    impl.inject_lora(model, targets, r=4, alpha=8.0)
    with torch.no_grad():
        init_logits = model(input_ids.clone()).logits
        base_logits = original(input_ids).logits
        assert_close(init_logits, base_logits, what="the logits of the injected model at initialisation")
        # order: the learner's layers load the A and B of peft's layers, so peft's model must exist first
        reference = peft_model(original, targets, r=4, alpha=8.0).eval()
        layers = lora_layers_of(model, impl)
        for name, module in reference.base_model.model.named_modules():
            if isinstance(module, LoraLayer):
                module.lora_B["default"].weight.normal_(0.0, 0.5)
                layers[name].lora_A.copy_(module.lora_A["default"].weight)
                layers[name].lora_B.copy_(module.lora_B["default"].weight)
        logits = model(input_ids.clone()).logits
        assert_close(logits, reference(input_ids).logits, what="the logits of the injected Llama against peft's (same A and B)")


def suffix_model():
    """Linear layers whose names test the suffix rule: proj, q_proj, projection, block.proj, block.out_proj."""
    model = nn.Module()
    model.proj = nn.Linear(8, 8)
    model.q_proj = nn.Linear(8, 8)
    model.projection = nn.Linear(8, 6)
    model.block = nn.Module()
    model.block.proj = nn.Linear(8, 4)
    model.block.out_proj = nn.Linear(4, 8)
    model.block.norm = nn.LayerNorm(8)
    return model


SUFFIX_TARGETS = [["proj"], ["q_proj"], ["block.proj"], ["out_proj", "projection"], ["proj", "q_proj"]]


@pytest.mark.points(2)
@pytest.mark.parametrize("targets", SUFFIX_TARGETS, ids=lambda t: "+".join(t))
def test_suffix_rule_matches_peft(impl, targets):
    """A target matches a name equal to it or ending in '.' + target ('proj' does not match 'q_proj'), as in peft."""
    model = suffix_model()
    original = copy.deepcopy(model)
    impl.inject_lora(model, targets)  # the defaults: r=8, alpha=16
    reference = peft_model(original, targets, r=8, alpha=16.0)
    ours, theirs = wrapped_names(model, impl.LoRALinear), wrapped_names(reference.base_model.model, LoraLayer)
    assert ours == theirs, (
        f"target_modules={targets}: inject_lora wrapped {ours}, peft wraps {theirs}. "
        "A name matches when it equals the target or ends with '.' + target (the dot matters)"
    )
    count = impl.trainable_parameters(model)
    assert count == reference.get_nb_trainable_parameters()[0], (
        f"trainable_parameters after inject_lora(targets={targets}) differs from peft's trainable count "
        "(are the defaults r=8, alpha=16?)"
    )


@pytest.mark.points(1)
def test_inject_passes_r_alpha_and_dropout(impl):
    """inject_lora builds each LoRALinear with the given r, alpha and dropout."""
    model = suffix_model()
    impl.inject_lora(model, ["proj"], r=2, alpha=5.0, dropout=0.5)
    layers = lora_layers_of(model, impl)
    assert sorted(layers) == ["block.proj", "proj"], f"inject_lora(model, ['proj']) wrapped {sorted(layers)}"
    for name, layer in layers.items():
        assert layer.lora_A.shape[0] == 2, f"{name}.lora_A has rank {layer.lora_A.shape[0]}, but r=2 was asked"
        assert math.isclose(layer.scaling, 2.5), f"{name}.scaling is {layer.scaling}, but alpha / r = 5 / 2 = 2.5"
    layer = layers["proj"]
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(16, 8) + 3.0
    layer.train()
    assert not torch.equal(layer(x), layer(x)), "inject_lora(dropout=0.5): in training mode the LoRA path should use dropout"


@pytest.mark.points(2)
@pytest.mark.parametrize("targets", [["proj"], ["q"], ["input_layernorm"], ["nothing_here"]], ids=lambda t: t[0])
def test_inject_with_no_match_raises(impl, targets):
    """No nn.Linear matching the targets raises ValueError, as peft does ('proj' matches no Llama layer, a norm is no Linear)."""
    assert_raises(ValueError, impl.inject_lora, tiny_llama(), targets, when=f"for inject_lora(llama, {targets})")
    with pytest.raises(ValueError):
        peft_model(tiny_llama(), targets)


@pytest.mark.points(2)
def test_trainable_parameters_counts_elements(impl):
    """trainable_parameters counts elements that require grad, shared parameters once, frozen ones not at all."""
    model = nn.Sequential(nn.Linear(10, 7), nn.Linear(7, 10), nn.LayerNorm(10))
    assert impl.trainable_parameters(model) == 77 + 80 + 20, "every element of a fresh model requires grad: count elements (numel), not tensors"
    model[2].requires_grad_(False)
    assert impl.trainable_parameters(model) == 157, "frozen parameters (requires_grad=False) must not be counted"
    tied = nn.Module()
    tied.a = nn.Linear(6, 6, bias=False)
    tied.b = nn.Linear(6, 6, bias=False)
    tied.b.weight = tied.a.weight
    assert impl.trainable_parameters(tied) == 36, "a parameter shared by two layers counts once (model.parameters() yields it once)"
    llama = peft_model(tiny_llama(), ["q_proj", "v_proj"])  # the input is a peft model; the learner counts a copy
    count = impl.trainable_parameters(copy.deepcopy(llama))
    expected = llama.get_nb_trainable_parameters()[0]
    assert count == expected, "trainable_parameters of a peft model differs from peft's count"


# ---------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.points(1)
@pytest.mark.parametrize("r", [0, -4])
def test_rank_must_be_positive(impl, r):
    """LoRALinear with r <= 0 raises ValueError."""
    assert_raises(ValueError, impl.LoRALinear, nn.Linear(8, 8), r=r, when=f"for LoRALinear(Linear(8, 8), r={r})")


@pytest.mark.points(1)
@pytest.mark.parametrize("kind", ["Conv1d", "Embedding", "Conv1D", "Identity"])
def test_base_must_be_a_linear(impl, kind):
    """LoRALinear around anything but an nn.Linear (GPT-2's Conv1D included) raises TypeError."""
    base = {"Conv1d": lambda: nn.Conv1d(8, 8, 1), "Embedding": lambda: nn.Embedding(10, 8),
            "Conv1D": lambda: Conv1D(8, 8), "Identity": nn.Identity}[kind]()
    assert_raises(TypeError, impl.LoRALinear, base, when=f"for LoRALinear({type(base).__name__}(...))")
