"""Public tests of module 04 (ZeRO memory arithmetic). Run: pytest exercises/04_zero_memory

These check the formulas on small numbers you can verify by hand; the grader's hidden tests check more
(the ZeRO paper's tables, DeepSpeed's own estimator, random inputs). Read docs/04_zero_memory.md.
"""

from fractions import Fraction

import torch

from grader.harness.checks import assert_raises, expect, tolerance_for

# The results are float64 evaluations of a few products and quotients, so they may differ from the
# exact value in the last bits: compare with the float64 tolerance of the harness.
RTOL = tolerance_for(torch.float64).rtol


def assert_bytes(actual, expected, *, what, mistakes=None):
    """`actual` equals the exact number `expected` up to float64 rounding; otherwise name the mistake."""
    expect(isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{what} should be a number, got {actual!r}")
    if abs(Fraction(actual) - Fraction(expected)) <= RTOL * abs(Fraction(expected)):
        return
    message = f"{what} is {actual:,.6g} bytes but should be {float(expected):,.6g} bytes."
    for sentence, wrong in (mistakes or {}).items():
        if abs(Fraction(actual) - Fraction(wrong)) <= RTOL * abs(Fraction(wrong)):
            message += f"\n  Likely mistake: {sentence}"
            break
    raise AssertionError(message)


def test_stage_0_replicates_16_bytes_per_parameter(impl):
    """Without ZeRO (stage 0) every GPU holds 2 + 2 + 12 = 16 bytes per parameter, whatever the number of GPUs."""
    for num_gpus in (1, 8):
        assert_bytes(impl.model_state_bytes(1000, num_gpus, 0), 16_000, what=f"model_state_bytes(1000, {num_gpus}, stage=0)",
                     mistakes={"stage 0 is plain data parallelism: nothing is divided by num_gpus": 16_000 / num_gpus})


def test_each_stage_on_a_small_example(impl):
    """1000 parameters on 4 GPUs: 16000, 7000, 5500 and 4000 bytes per GPU in stages 0, 1, 2 and 3."""
    psi, n = 1000, 4
    expected = {0: 16 * psi, 1: 4 * psi + Fraction(12 * psi, n), 2: 2 * psi + Fraction(14 * psi, n), 3: Fraction(16 * psi, n)}
    mistakes = {
        1: {"stage 1 partitions only the optimizer states; you divided the gradients by N too": expected[2]},
        2: {"stage 2 partitions the gradients as well as the optimizer states": expected[1],
            "stage 2 keeps the 16-bit parameters whole on every GPU; only stage 3 divides them by N": expected[3]},
        3: {"stage 3 partitions the parameters too: all three terms are divided by N": expected[2]},
    }
    for stage, value in expected.items():
        assert_bytes(impl.model_state_bytes(psi, n, stage), value, what=f"model_state_bytes({psi}, {n}, stage={stage})",
                     mistakes=mistakes.get(stage))


def test_byte_sizes_are_arguments(impl):
    """param_bytes, grad_bytes and optimizer_bytes replace the 2, 2 and K = 12 of the formulas."""
    # stage 2 on 2 GPUs: param_bytes * psi + (grad_bytes + optimizer_bytes) * psi / 2
    out = impl.model_state_bytes(10, 2, 2, param_bytes=4, grad_bytes=6, optimizer_bytes=8)
    assert_bytes(out, 4 * 10 + (6 + 8) * 10 / 2, what="model_state_bytes(10, 2, 2, param_bytes=4, grad_bytes=6, optimizer_bytes=8)",
                 mistakes={"optimizer_bytes was ignored (K = 12 hard-coded)": 40 + (6 + 12) * 5,
                           "optimizer_bytes was ignored (K = 16 hard-coded)": 40 + (6 + 16) * 5,
                           "grad_bytes was ignored (2 hard-coded)": 40 + (2 + 8) * 5})


def test_max_params_is_the_largest_that_fits(impl):
    """max_params returns the largest p with model_state_bytes(p) <= gpu_bytes < model_state_bytes(p + 1)."""
    # (gpu_bytes, num_gpus, stage, bytes per parameter as a fraction)
    cases = [(100, 1, 0, Fraction(16)), (160, 8, 0, Fraction(16)), (1000, 4, 1, Fraction(7)), (1000, 4, 3, Fraction(4)), (50, 3, 2, 2 + Fraction(14, 3))]
    for gpu_bytes, n, stage, per_param in cases:
        p = impl.max_params(gpu_bytes, n, stage)
        where = f"max_params({gpu_bytes}, {n}, stage={stage})"
        expect(isinstance(p, int), f"{where} should return an int, got {p!r}")
        expect(p * per_param <= gpu_bytes, f"{where} = {p}, but {p} parameters need {float(p * per_param):g} bytes: more than the budget")
        expect(gpu_bytes < (p + 1) * per_param, f"{where} = {p}, but {p + 1} parameters would still fit ({float((p + 1) * per_param):g} bytes)")


def test_max_params_uses_the_given_byte_sizes(impl):
    """max_params passes the byte sizes on: 4 + 4 + 12 = 20 bytes a parameter, so 200 bytes hold 10 parameters."""
    p = impl.max_params(200, 1, 0, param_bytes=4, grad_bytes=4, optimizer_bytes=12)
    where = "max_params(200, 1, stage=0, param_bytes=4, grad_bytes=4, optimizer_bytes=12)"
    mistake = "\n  Likely mistake: the byte sizes are not passed on to model_state_bytes (its defaults, 16 bytes, are used)" if p == 12 else ""
    expect(p == 10, f"{where} is {p!r}, expected 10 (20 bytes per parameter).{mistake}")


def test_communication_volume(impl):
    """Per step each GPU moves 2 psi elements in stages 0-2 and 3 psi in stage 3, times param_bytes."""
    for stage in (0, 1, 2):
        assert_bytes(impl.communication_bytes(1000, stage), 4000, what=f"communication_bytes(1000, stage={stage})")
    assert_bytes(impl.communication_bytes(1000, 3), 6000, what="communication_bytes(1000, stage=3)",
                 mistakes={"stage 3 all-gathers the parameters twice (forward and backward) and reduce-scatters the gradients: 3 psi": 4000})
    assert_bytes(impl.communication_bytes(1000, 3, param_bytes=4), 12000, what="communication_bytes(1000, stage=3, param_bytes=4)")


def test_bad_arguments_raise_value_error(impl):
    """A stage outside 0..3, num_gpus < 1, num_params < 0 or gpu_bytes < 0 raise ValueError."""
    assert_raises(ValueError, impl.model_state_bytes, 1000, 4, 4, when="for stage=4")
    assert_raises(ValueError, impl.model_state_bytes, 1000, 0, 1, when="for num_gpus=0")
    assert_raises(ValueError, impl.model_state_bytes, -1, 4, 1, when="for num_params=-1")
    assert_raises(ValueError, impl.max_params, -1, 4, 1, when="for max_params with gpu_bytes=-1")
