"""Public tests of module 14 (mixed precision). Run: pytest exercises/14_mixed_precision

These check the essentials quickly; the grader's hidden tests check more (the scale's trajectory against
torch.amp.GradScaler over random sequences of steps, float16 gradients, 50 steps of AdamW against an
all-float32 run). Read docs/14_mixed_precision.md.
"""

import math

import torch

from grader.harness.checks import assert_close, assert_raises, expect


class TinySGD:
    """Plain SGD with what the scaler and MasterWeightOptimizer use of an optimizer: `param_groups`, `step()`,
    `zero_grad()`. Any torch.optim optimizer works the same; this one keeps the quick tests quick (building a
    torch.optim optimizer imports torch._dynamo, over a second). The grader's tests use torch.optim."""

    def __init__(self, params, lr):
        self.param_groups = [{"params": list(params), "lr": lr}]
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.to(p.dtype), alpha=-group["lr"])

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def scaler_step(scaler, param, optimizer, finite):
    """One step whose (already scaled) gradient is finite or holds an inf, then update()."""
    param.grad = torch.ones_like(param) if finite else torch.full_like(param, float("inf"))
    scaler.step(optimizer)
    scaler.update()


def test_scale_multiplies_the_loss(impl):
    """scale(loss) is loss * scale: 0.5 * 2**16 = 32768 with the default init_scale."""
    scaler = impl.DynamicLossScaler()
    expect(math.isclose(scaler.get_scale(), 2.0**16), f"the default init_scale is 2**16 = 65536, get_scale() gave {scaler.get_scale()}")
    out = scaler.scale(torch.tensor(0.5))
    assert_close(out.float(), torch.tensor(32768.0), what="scale(tensor(0.5)) with the default scale 2**16")


def test_backoff_and_growth(impl):
    """growth_interval=3: the scale doubles after 3 finite steps in a row, halves on an overflow, and an overflow restarts the count."""
    scaler = impl.DynamicLossScaler(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = TinySGD([param], lr=0.0)
    steps = [True, True, True, True, False, True, True, True, True, True]  # True = finite gradients
    expected = [1024, 1024, 2048, 2048, 1024, 1024, 1024, 2048, 2048, 2048]
    got = []
    for finite in steps:
        scaler_step(scaler, param, optimizer, finite)
        got.append(scaler.get_scale())
    message = f"scales after each step {['finite' if s else 'overflow' for s in steps]}:\n  got      {got}\n  expected {expected}."
    if got[4] >= 2048:
        message += "\n  Likely mistake: no backoff on an overflow (scale *= backoff_factor)."
    elif got[6] > 1024:
        message += "\n  Likely mistake: the count of finite steps is not reset to 0 on an overflow."
    expect(all(math.isclose(g, e) for g, e in zip(got, expected)), message)


def test_unscale_divides_and_reports(impl):
    """unscale_ divides every gradient by the scale in place and returns True when all are finite, False otherwise."""
    scaler = impl.DynamicLossScaler(init_scale=8.0)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = TinySGD([param], lr=0.1)
    scaler.scale(torch.tensor([1.0, 2.0, 3.0]).mul(param).sum() + param.sum()).backward()  # true gradient [2, 3, 4]
    finite = scaler.unscale_(optimizer)
    expect(finite is True or finite == True, f"unscale_ should return True when every gradient is finite, got {finite!r}")  # noqa: E712
    assert_close(param.grad, torch.tensor([2.0, 3.0, 4.0]), what="the gradient after unscale_",
                 mistakes={"the gradient is still multiplied by the scale (8)": torch.tensor([16.0, 24.0, 32.0])})
    scaler.update()
    param.grad = torch.tensor([1.0, float("nan"), 1.0])
    finite = scaler.unscale_(optimizer)
    expect(finite is False or finite == False, f"unscale_ should return False when a gradient holds NaN (or inf), got {finite!r}")  # noqa: E712


def test_second_unscale_raises(impl):
    """Calling unscale_ twice before update() raises RuntimeError: the gradients would be divided twice."""
    scaler = impl.DynamicLossScaler()
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = TinySGD([param], lr=0.1)
    param.grad = torch.ones(3)
    scaler.unscale_(optimizer)
    assert_raises(RuntimeError, scaler.unscale_, optimizer, when="for a second unscale_ before update()")


def test_overflowing_step_is_skipped(impl):
    """A step whose gradients hold inf leaves the parameters untouched; a finite one applies the unscaled gradient once."""
    scaler = impl.DynamicLossScaler(init_scale=4.0)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = TinySGD([param], lr=0.5)
    scaler_step(scaler, param, optimizer, finite=False)
    expect(torch.equal(param.detach(), torch.ones(3)), f"a step with inf gradients changed the parameters to {param.detach().tolist()}: skip optimizer.step()")
    scaler_step(scaler, param, optimizer, finite=True)  # scaled gradient 1 with scale 2: true gradient 0.5
    assert_close(param.detach(), torch.full((3,), 0.75), what="the parameter after a finite step (lr 0.5, scaled gradient 1, scale 2)",
                 mistakes={"the gradient was not unscaled": torch.full((3,), 0.5), "the gradient was unscaled twice": torch.full((3,), 0.875)})


def test_master_weights_keep_small_updates(impl):
    """On a bf16 weight of 1.0, 64 SGD updates of 2**-10 each (below half a bf16 step) add up in the float32 masters to 1 - 1/16."""
    model = torch.nn.Linear(4, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = impl.MasterWeightOptimizer(model, TinySGD, lr=2.0**-10)
    for _ in range(64):
        optimizer.zero_grad()
        model.weight.sum().float().backward()  # gradient 1 for every weight
        optimizer.step()
    expect(model.weight.dtype == torch.bfloat16, f"the model's weight should stay bfloat16, got {model.weight.dtype}")
    truth = torch.full((1, 4), 1.0 - 64 * 2.0**-10, dtype=torch.float64)
    never_moved = ("the weight never moved: each update was rounded away (keep float32 masters, step the inner optimizer on "
                   "the masters, not on the model's parameters, and copy the masters back into the model after each step)")
    assert_close(model.weight.detach(), truth, what="the bf16 weight after 64 steps of -2**-10", dtype=torch.bfloat16,
                 mistakes={never_moved: torch.ones(1, 4, dtype=torch.float64)})


def test_bytes_per_parameter(impl):
    """mixed_precision_bytes: 16 bytes per parameter for Adam with master weights (2 + 2 + 4 + 8), 12 without, 8 and 4 for SGD."""
    for master_weights, optimizer, per in [(True, "adam", 16), (False, "adam", 12), (True, "sgd", 8), (False, "sgd", 4)]:
        got = impl.mixed_precision_bytes(1000, master_weights=master_weights, optimizer=optimizer)
        expect(got == 1000 * per, f"mixed_precision_bytes(1000, master_weights={master_weights}, optimizer={optimizer!r}) should be {1000 * per}, got {got}")
    assert_raises(ValueError, impl.mixed_precision_bytes, 1000, True, "adagrad", when="for optimizer='adagrad'")


def test_step_after_an_explicit_unscale_does_not_unscale_again(impl):
    """unscale_ (e.g. before clipping) then step: the gradient is divided by the scale once, not twice."""
    scaler = impl.DynamicLossScaler(init_scale=4.0)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = TinySGD([param], lr=0.5)
    param.grad = torch.full((3,), 2.0)  # scaled gradient 2 with scale 4: true gradient 0.5
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert_close(param.detach(), torch.full((3,), 0.75), what="the parameter after unscale_ then step (lr 0.5, scaled gradient 2, scale 4)",
                 mistakes={"step unscaled the gradients again after your unscale_: remember that unscale_ ran in this step "
                           "and skip the second division": torch.full((3,), 0.9375)})


def test_growth_stops_at_float32_max(impl):
    """A growth that would take the scale beyond float32's largest value (about 3.4e38) is skipped, as GradScaler does."""
    scaler = impl.DynamicLossScaler(init_scale=2.0**127, growth_factor=2.0, growth_interval=1)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = TinySGD([param], lr=0.0)
    scaler_step(scaler, param, optimizer, finite=True)
    got = scaler.get_scale()
    expect(math.isclose(got, 2.0**127), f"after a finite step from init_scale=2**127 with growth_factor 2, get_scale() should stay "
                                        f"2**127 = {2.0**127:.4g}, got {got:.4g}. Likely mistake: the growth to 2**128 is beyond "
                                        "torch.finfo(torch.float32).max: skip it (but still reset the counter)")
