"""Hidden suite of module 14 (mixed precision): torch.amp.GradScaler is the oracle of the loss scaler, an
all-float32 run the truth of the master weights, the ZeRO paper the truth of the byte counts.

The learner's scaler and optimizer run first, on models of their own: GradScaler's run and the float32 run,
which give the expected values, follow on twins that the learner's code never touched.

Run: pytest grader/hidden/14_mixed_precision --impl solutions   (or --impl path/to/submission)
"""

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.harness.checks import assert_close, assert_raises, tolerance_for

HYPOTHESIS = settings(max_examples=30, derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALE_RTOL = 1e-6  # the contract's tolerance on the scale's trajectory


# ---------------------------------------------------------------------------------------------------
# Helpers


def tiny_model(device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 6, generator=generator))
        model.bias.copy_(torch.randn(3, generator=generator))
    return model.to(device)


def one_step(scaler, model, optimizer, x, overflow):
    """scale(loss).backward(), an inf (or NaN) planted in a gradient if `overflow`, step, update."""
    optimizer.zero_grad()
    scaler.scale(model(x).pow(2).sum()).backward()
    if overflow:
        model.weight.grad[0, 0] = float("inf") if overflow == "inf" else float("nan")
    scaler.step(optimizer)
    scaler.update()


def assert_same_scale(got, expected, what):
    assert isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1), (
        f"get_scale() should return a Python float, got {type(got).__name__}"
    )
    got = float(got)
    assert math.isclose(got, expected, rel_tol=SCALE_RTOL), f"{what}: the scale is {got:.8g}, GradScaler's is {expected:.8g}"


def run_both(impl, device, steps, init_scale, growth_factor, backoff_factor, growth_interval):
    """The learner's scaler and GradScaler on twin models over the same steps; the scales after each update."""
    kwargs = dict(init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor, growth_interval=growth_interval)
    mine, theirs = tiny_model(device), tiny_model(device)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=1e-3)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=1e-3)
    x = torch.randn(4, 6, device=device)
    scaler = impl.DynamicLossScaler(**kwargs)
    mine_scales = []
    for overflow in steps:  # the learner's whole run first, then GradScaler's
        one_step(scaler, mine, opt_mine, x.clone(), overflow)
        mine_scales.append(float(scaler.get_scale()))
    reference = torch.amp.GradScaler(device.type, **kwargs)
    history = []
    for i, (overflow, got) in enumerate(zip(steps, mine_scales)):
        one_step(reference, theirs, opt_theirs, x, overflow)
        history.append("overflow" if overflow else "finite")
        expected = reference.get_scale()
        if not math.isclose(float(got), expected, rel_tol=SCALE_RTOL):
            mistake = ""
            before = history[:-1]
            if overflow and float(got) >= expected * 1.5:
                mistake = " On an overflow the scale must back off (scale *= backoff_factor)."
            elif not overflow and float(got) > expected:
                mistake = (" The scale grew too early: count finite steps since the last overflow or growth "
                           "(reset the counter to 0 on an overflow and after a growth), grow when it reaches growth_interval.")
            elif not overflow and float(got) < expected:
                mistake = " The scale should have grown here (growth_interval finite steps in a row), unless that overflows float32."
            raise AssertionError(
                f"after step {i + 1} of {len(steps)} ({', '.join(before[-6:] + ['->' + history[-1]])}) with {kwargs}: "
                f"the scale is {float(got):.8g}, torch.amp.GradScaler's is {expected:.8g}.{mistake}"
            )
    return mine, theirs


# ---------------------------------------------------------------------------------------------------
# DynamicLossScaler against torch.amp.GradScaler


@pytest.mark.points(6)
@pytest.mark.timeout(60)  # 30 random sequences of up to 25 steps, each run twice (learner and GradScaler)
@HYPOTHESIS
@given(
    steps=st.lists(st.sampled_from([False, False, False, "inf", "nan"]), min_size=1, max_size=25),
    init_scale=st.sampled_from([2.0**16, 2.0**10, 2.0**120, 1.0, 3.0]),
    factors=st.sampled_from([(2.0, 0.5), (4.0, 0.25), (2.0, 0.125), (8.0, 0.5)]),
    growth_interval=st.sampled_from([1, 2, 3, 7]),
)
def test_scale_trajectory_equals_gradscaler(impl, steps, init_scale, factors, growth_interval):
    """Over random sequences of finite and overflowing steps the scale equals torch.amp.GradScaler('cpu')'s after every update."""
    device = torch.device("cpu")
    mine, theirs = run_both(impl, device, steps, init_scale, factors[0], factors[1], growth_interval)
    for p, q in zip(mine.parameters(), theirs.parameters()):
        assert_close(p.detach(), q.detach(), what="the parameters after the same steps as GradScaler's run")


@pytest.mark.points(2)
def test_scale_trajectory_on_device(impl, device):
    """A fixed sequence of finite and overflowing steps gives GradScaler's scales and parameters on this device."""
    steps = [False, False, "inf", False, False, False, "nan", "inf", False, False, False, False]
    mine, theirs = run_both(impl, device, steps, 2.0**8, 2.0, 0.5, 2)
    for p, q in zip(mine.parameters(), theirs.parameters()):
        assert_close(p.detach(), q.detach(), what=f"the parameters after the same steps as GradScaler's run on {device.type}")


@pytest.mark.points(2)
def test_growth_beyond_float32_is_skipped(impl):
    """A growth that would overflow float32 is skipped (the scale stays), as GradScaler does; the counter restarts."""
    kwargs = dict(init_scale=2.0**120, growth_factor=2.0**4, backoff_factor=0.5, growth_interval=1)
    schedule = [True, True, True, False, True, True, True]

    def run(s):
        """The scale after each step of the schedule: small finite gradients (as if already scaled), or an inf."""
        scales = []
        for finite in schedule:
            param = torch.nn.Parameter(torch.zeros(2))
            s.scale(param.sum())  # GradScaler sets itself up on its first scale()
            param.grad = torch.ones(2) if finite else torch.full((2,), float("inf"))
            s.step(torch.optim.SGD([param], lr=0.0))
            s.update()
            scales.append(float(s.get_scale()))
        return scales

    mine = run(impl.DynamicLossScaler(**kwargs))  # the learner's run first, then GradScaler's
    theirs = run(torch.amp.GradScaler("cpu", **kwargs))
    for i, (got, expected) in enumerate(zip(mine, theirs)):
        assert math.isclose(got, expected, rel_tol=SCALE_RTOL), (
            f"after step {i + 1} from a scale of 2**120 (growth 2**4 at every finite step): the scale is {got:.6g} "
            f"(2**{math.log2(got) if got > 0 else float('nan'):.4g}), GradScaler's is {expected:.6g}. A growth whose result exceeds "
            "torch.finfo(torch.float32).max (2**128 here) is not taken: the scale stays, the counter restarts"
        )


@pytest.mark.points(2)
def test_default_schedule(impl):
    """Defaults: scale 2**16, doubled after 2000 finite steps in a row (not 1999), halved by one overflow."""
    scaler = impl.DynamicLossScaler()
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=0.0)
    assert_same_scale(scaler.get_scale(), 2.0**16, "at the start")

    def step(finite):
        param.grad = torch.ones(3) if finite else torch.full((3,), float("inf"))
        scaler.step(optimizer)
        scaler.update()

    for _ in range(1999):
        step(True)
    assert_same_scale(scaler.get_scale(), 2.0**16, "after 1999 finite steps (growth_interval is 2000)")
    step(True)
    assert_same_scale(scaler.get_scale(), 2.0**17, "after 2000 finite steps")
    step(False)
    assert_same_scale(scaler.get_scale(), 2.0**16, "after an overflow (backoff_factor 0.5)")


@pytest.mark.points(1)
def test_scale_multiplies_the_loss(impl, device):
    """scale(loss) is loss * the current scale (by value)."""
    scaler = impl.DynamicLossScaler(init_scale=1024.0)
    loss = torch.tensor(0.75, device=device)
    out = scaler.scale(loss)
    assert isinstance(out, torch.Tensor), f"scale(loss) should return a tensor, got {type(out).__name__}"
    assert_close(out.float(), torch.tensor(768.0, device=device), what="scale(0.75) with scale 1024")


# ---------------------------------------------------------------------------------------------------
# Unscaling and skipping


@pytest.mark.points(3)
@pytest.mark.parametrize("explicit_unscale", [False, True], ids=["step_only", "unscale_then_step"])
def test_gradients_are_unscaled_exactly_once(impl, device, explicit_unscale):
    """The step uses the true gradients: divided by the scale once, whether or not unscale_ was called first."""
    model = tiny_model(device)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = impl.DynamicLossScaler(init_scale=2.0**12)
    x = torch.randn(5, 6, device=device)
    scaler.scale(model(x).pow(2).sum()).backward()
    if explicit_unscale:
        finite = scaler.unscale_(optimizer)
        assert finite is True or finite == True, f"unscale_ should return True for finite gradients, got {finite!r}"  # noqa: E712
        reference(x).pow(2).sum().backward()
        for p, q in zip(model.parameters(), reference.parameters()):
            assert_close(p.grad, q.grad, what="a gradient after unscale_ (should be the unscaled gradient)",
                         mistakes={"the gradient is still multiplied by the scale": q.grad * 2.0**12})
        reference.zero_grad()
    scaler.step(optimizer)
    scaler.update()
    reference(x).pow(2).sum().backward()
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            expected = q - 0.1 * q.grad
            assert_close(p, expected, what="a parameter after scaler.step (SGD, lr 0.1)",
                         mistakes={"the gradients were divided by the scale twice": q - 0.1 * q.grad / 2.0**12,
                                   "the gradients were never unscaled": q - 0.1 * q.grad * 2.0**12})


@pytest.mark.points(2)
def test_second_unscale_raises(impl, device):
    """A second unscale_ before update() raises RuntimeError (as GradScaler); after update() it works again."""
    model = tiny_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = impl.DynamicLossScaler()
    scaler.scale(model(torch.randn(2, 6, device=device)).sum()).backward()
    scaler.unscale_(optimizer)
    assert_raises(RuntimeError, scaler.unscale_, optimizer, when="for a second unscale_ before update()")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    scaler.scale(model(torch.randn(2, 6, device=device)).sum()).backward()
    scaler.unscale_(optimizer)  # a new step: allowed


@pytest.mark.points(3)
@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_overflowing_step_is_skipped(impl, device, bad):
    """With an inf or NaN gradient, unscale_ returns False, step leaves parameters and optimizer state untouched, update backs off."""
    model = tiny_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = impl.DynamicLossScaler(init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(torch.randn(3, 6, device=device)).sum()).backward()
    model.bias.grad[1] = float(bad)
    finite = scaler.unscale_(optimizer)
    assert finite is False or finite == False, f"unscale_ should return False when a gradient holds {bad}, got {finite!r}"  # noqa: E712
    scaler.step(optimizer)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b), f"a step with a {bad} gradient changed the parameters: it must be skipped (optimizer.step() not called)"
    assert not optimizer.state, "a skipped step created optimizer state (momentum buffers): optimizer.step() must not be called"
    scaler.update()
    assert_same_scale(scaler.get_scale(), 2.0**9, f"after a step with a {bad} gradient")


@pytest.mark.points(3)
def test_float16_gradients_survive_thanks_to_the_scale(impl, device):
    """float16 activation gradients too small for float16 (below 6e-8) survive when the LOSS is scaled: as GradScaler's."""
    x = (torch.randn(4, 6) * 1e-3).to(device).half()
    weight = 1e-5  # a tiny loss: the float16 gradients of the weight (~1e-8) underflow to 0 without scaling

    def unscaled_weight_grad(scaler):
        model = tiny_model(device)  # float32 parameters, float16 compute: autocast's pattern
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        out = torch.nn.functional.linear(x, model.weight.half(), model.bias.half())
        scaler.scale(out.float().sum() * weight).backward()
        scaler.unscale_(optimizer)
        return model.weight.grad.detach().clone()

    mine = unscaled_weight_grad(impl.DynamicLossScaler(init_scale=2.0**16))
    theirs = unscaled_weight_grad(torch.amp.GradScaler(device.type, init_scale=2.0**16))
    truth = (x.double().sum(0) * weight).expand(3, 6)
    assert bool(mine.abs().sum() > 0), (
        "the weight's gradients all underflowed to 0 in float16: multiply the LOSS by the scale before backward "
        "(scaling the gradients afterwards is too late, they are already 0)"
    )
    assert_close(mine, theirs, what="the unscaled weight gradient (float16 compute) against GradScaler's", tol=tolerance_for(torch.float16, device))
    assert_close(mine, truth, what="the unscaled weight gradient (float16 compute) against float64", dtype=torch.float32,
                 tol=tolerance_for(torch.float16, device).scaled(4))


# ---------------------------------------------------------------------------------------------------
# MasterWeightOptimizer


def mlp(seed):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


def train(model, optimizer, data, dtype):
    for x, y in data:
        optimizer.zero_grad()
        loss = (model(x.to(dtype)).float() - y).pow(2).mean()
        loss.backward()
        optimizer.step()


def half_ulp(w, dtype):
    """Half a unit in the last place of dtype at each |w| (the largest rounding error of a cast to dtype)."""
    mantissa = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    exponent = torch.floor(torch.log2(w.abs().clamp_min(2.0**-14)))
    return 2.0 ** (exponent - mantissa - 1)


@pytest.mark.points(4)
@pytest.mark.timeout(30)  # three 50-step training runs of a small MLP
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_master_weights_track_a_float32_run(impl, device, dtype):
    """50 AdamW steps on a 16-bit model: within half a 16-bit step (+ a small drift) of the float32 run, far closer than pure 16-bit training."""
    steps, lr = 50, 1e-3
    low = mlp(0).to(device=device, dtype=dtype)
    full = copy.deepcopy(low).float()  # the same starting point, in float32
    pure = copy.deepcopy(low)
    mixed = copy.deepcopy(low)
    data = [(torch.randn(16, 32, device=device), torch.randn(16, 8, device=device)) for _ in range(steps)]
    train(mixed, impl.MasterWeightOptimizer(mixed, lr=lr), data, dtype)  # the learner's run first
    train(full, torch.optim.AdamW(full.parameters(), lr=lr), data, torch.float32)
    train(pure, torch.optim.AdamW(pure.parameters(), lr=lr), data, dtype)
    for p in mixed.parameters():
        assert p.dtype == dtype, f"the model's parameters should stay {dtype}, found {p.dtype}: copy the masters back into them"
    errors, pure_errors, excess = [], [], 0.0
    for p, q, r in zip(mixed.parameters(), full.parameters(), pure.parameters()):
        diff = (p.detach().double() - q.detach().double()).abs()
        errors.append(diff.pow(2).sum())
        pure_diff = (r.detach().double() - q.detach().double()).abs().nan_to_num(nan=float("inf"))
        pure_errors.append(pure_diff.pow(2).sum())
        # docs/14_mixed_precision.md: |w_mixed - w_32| <= half_ulp(w) + drift, drift far below steps * lr
        excess = max(excess, float((diff - half_ulp(q.detach().double(), dtype)).max()))
    rms, pure_rms = float(sum(errors)) ** 0.5, float(sum(pure_errors)) ** 0.5
    moved = sum(float((q.detach().double() - s.detach().double()).pow(2).sum()) for q, s in zip(full.parameters(), low.parameters())) ** 0.5
    assert excess <= 0.1 * steps * lr, (
        f"after {steps} steps a weight is {excess:.3g} further from the float32 run than half a {dtype} step allows "
        f"(bound: half an ulp + 0.1 * steps * lr = {0.1 * steps * lr:.3g}). Step the inner optimizer on float32 masters, "
        "copy them back into the model after every step"
    )
    assert rms <= 0.25 * min(pure_rms, moved), (
        f"the master-weight run is {rms:.3g} (RMS) away from the float32 run; pure {dtype} training is {pure_rms:.3g} away and the "
        f"float32 run moved {moved:.3g}: master weights should track it far more closely. Keep the masters in float32"
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_small_updates_accumulate_in_the_masters(impl, device, dtype):
    """SGD updates below half a 16-bit step are not lost: after k steps the model holds round(w0 - k * lr * g)."""
    weight = torch.nn.Parameter(torch.ones(64, device=device, dtype=dtype) * torch.linspace(1, 2, 64, device=device).to(dtype))
    model = torch.nn.Module()
    model.weight = weight
    w0 = weight.detach().double().clone()
    g = torch.linspace(0.5, 1.0, 64, device=device).double()
    lr = 2.0**-10 if dtype == torch.bfloat16 else 2.0**-13  # each update is below half a step of w
    optimizer = impl.MasterWeightOptimizer(model, torch.optim.SGD, lr=lr)
    for _ in range(40):
        optimizer.zero_grad()
        (model.weight * g.to(dtype)).float().sum().backward()  # gradient g, whatever the weight
        optimizer.step()
    truth = w0 - 40 * lr * g.to(dtype).double()
    assert model.weight.dtype == dtype, f"the model's weight should stay {dtype}, got {model.weight.dtype}"
    assert_close(model.weight.detach(), truth, what=f"the {dtype} weight after 40 SGD steps of size {lr:.3g} * g", dtype=dtype,
                 mistakes={"the model did not move at all: small updates were rounded away (masters in 16 bits, or not copied back)": w0})


@pytest.mark.points(2)
def test_inner_optimizer_and_kwargs(impl, device):
    """optimizer_cls and its kwargs are used: SGD(lr=0.5) takes w - 0.5 * g, rounded once to the model's dtype."""
    model = tiny_model(device).to(torch.bfloat16)
    start = [p.detach().double().clone() for p in model.parameters()]
    optimizer = impl.MasterWeightOptimizer(model, torch.optim.SGD, lr=0.5)
    x = torch.randn(4, 6, device=device).to(torch.bfloat16)
    model(x).float().pow(2).sum().backward()
    grads = [p.grad.detach().double().clone() for p in model.parameters()]
    optimizer.step()
    for p, w, gr in zip(model.parameters(), start, grads):
        assert_close(p.detach(), w - 0.5 * gr, what="a bf16 parameter after one SGD(lr=0.5) step", dtype=torch.bfloat16)


@pytest.mark.points(2)
def test_zero_grad_clears_gradients(impl, device):
    """zero_grad() clears the model's gradients (None or zeros), so the next step uses only the new gradients."""
    model = tiny_model(device).to(torch.bfloat16)
    optimizer = impl.MasterWeightOptimizer(model, torch.optim.SGD, lr=0.25)
    x1, x2 = torch.randn(4, 6, device=device).to(torch.bfloat16), torch.randn(4, 6, device=device).to(torch.bfloat16)
    model(x1).float().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    for name, p in model.named_parameters():
        assert p.grad is None or not bool(p.grad.any()), f"after zero_grad() the gradient of {name} is not cleared"
    start = [p.detach().double().clone() for p in model.parameters()]
    model(x2).float().sum().backward()
    grads = [p.grad.detach().double().clone() for p in model.parameters()]
    optimizer.step()
    for p, w, gr in zip(model.parameters(), start, grads):
        assert_close(p.detach(), w - 0.25 * gr, what="a parameter after zero_grad, a new backward and a step", dtype=torch.bfloat16,
                     mistakes={"the previous step's gradient was used again: zero_grad must clear the gradients": w - 0.25 * gr * 2})


# ---------------------------------------------------------------------------------------------------
# mixed_precision_bytes


@pytest.mark.points(3)
@pytest.mark.parametrize("master_weights, optimizer, per_parameter", [
    (True, "adam", 16), (False, "adam", 12), (True, "sgd", 8), (False, "sgd", 4),
])
def test_bytes_as_in_the_zero_paper(impl, master_weights, optimizer, per_parameter):
    """mixed_precision_bytes: 2 + 2 + 12 = 16 bytes per parameter for Adam with master weights (the ZeRO paper), 12, 8, 4 without."""
    for num_params in (1, 1000, 7_500_000_000):
        got = impl.mixed_precision_bytes(num_params, master_weights=master_weights, optimizer=optimizer)
        expected = per_parameter * num_params
        assert isinstance(got, int), f"mixed_precision_bytes should return an int, got {type(got).__name__}"
        assert got == expected, (
            f"mixed_precision_bytes({num_params}, master_weights={master_weights}, optimizer={optimizer!r}) = {got}, "
            f"expected {expected} ({per_parameter} bytes per parameter: 2 (weights) + 2 (gradients)"
            f"{' + 4 (float32 master weights)' if master_weights else ''}{' + 8 (Adam: two float32 moments)' if optimizer == 'adam' else ''})"
        )
    assert impl.mixed_precision_bytes(7_500_000_000) == 120_000_000_000, "the ZeRO paper's 7.5B model takes 120 GB of model states"


@pytest.mark.points(1)
@pytest.mark.parametrize("optimizer", ["adagrad", "Adam", "lion"])
def test_unknown_optimizer_raises(impl, optimizer):
    """Any optimizer name other than 'adam' and 'sgd' raises ValueError."""
    assert_raises(ValueError, impl.mixed_precision_bytes, 1000, True, optimizer, when=f"for optimizer={optimizer!r}")
