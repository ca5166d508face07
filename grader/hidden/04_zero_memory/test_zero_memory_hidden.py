"""Hidden suite of module 04 (ZeRO memory arithmetic): exact arithmetic (fractions) is the truth, the
ZeRO paper's published numbers and DeepSpeed's own estimators are the oracles.

Run: pytest grader/hidden/04_zero_memory --impl solutions   (or --impl path/to/submission)

Sources: Rajbhandari, Rasley, Ruwase, He, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models" (arXiv:1910.02054), Figure 1 / Section 5, Table 1 and Table 2; DeepSpeed's
`estimate_zero2_model_states_mem_needs` (deepspeed/runtime/zero/stage_1_and_2.py) and
`estimate_zero3_model_states_mem_needs` (deepspeed/runtime/zero/stage3.py).
The results are plain numbers, not tensors: nothing here depends on the device. Each test calls the learner's
function before it computes the expected value (exact arithmetic, DeepSpeed's estimator), so nothing the
learner's code could find in memory holds the answer yet.
"""

import numbers
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.harness.checks import assert_raises, tolerance_for

GB = 10**9  # the paper's gigabyte (not GiB = 2**30)

# The results are float64 evaluations of a few products, sums and quotients of the inputs: the
# harness's float64 tolerance covers their rounding, whatever the order of operations.
RTOL = tolerance_for(torch.float64).rtol

# The contract's slack for max_params: the check bytes(p) <= gpu_bytes < bytes(p + 1) is made in exact
# arithmetic, widened by 1e-9 of the budget so that a float implementation passes at an exact boundary.
SLACK = Fraction(1, 10**9)

HYPOTHESIS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def exact_bytes(psi, n, stage, p=2, g=2, k=12):
    """The paper's formula for one GPU, in exact arithmetic."""
    psi, p, g, k = Fraction(psi), Fraction(p), Fraction(g), Fraction(k)
    optimizer = k * psi / (n if stage >= 1 else 1)
    grads = g * psi / (n if stage >= 2 else 1)
    params = p * psi / (n if stage >= 3 else 1)
    return params + grads + optimizer


def known_mistakes(psi, n, stage, p=2, g=2, k=12):
    """What the usual mistakes give for these inputs, to name them when a result matches one."""
    psi_f, p, g, k = Fraction(psi), Fraction(p), Fraction(g), Fraction(k)
    mistakes = {
        "stage 1 partitions only the optimizer states; the gradients were divided by N too": (p + (g + k) / n) * psi_f if stage == 1 else None,
        "stage 2 partitions the gradients too; they were left whole": (p + g + k / n) * psi_f if stage == 2 else None,
        "the 16-bit parameters were divided by N before stage 3": ((p + g + k) / n if stage == 2 else p / n + g + k / n) * psi_f if stage in (1, 2) else None,
        "optimizer_bytes was ignored: K = 16 hard-coded": exact_bytes(psi, n, stage, p, g, 16) if k != 16 else None,
        "optimizer_bytes was ignored: K = 12 hard-coded": exact_bytes(psi, n, stage, p, g, 12) if k != 12 else None,
        "a GB/GiB conversion crept in (a factor 2**30 / 1e9 = 1.074): the result is plain bytes": exact_bytes(psi, n, stage, p, g, k) * GB / 2**30,
        "the byte sizes were mixed up: grad_bytes used for the parameters or the reverse": exact_bytes(psi, n, stage, g, p, k) if p != g else None,
        "stage 0 is plain data parallelism: nothing is divided by N": exact_bytes(psi, n, 1, p, g, k) if stage == 0 and n > 1 else None,
    }
    return {sentence: value for sentence, value in mistakes.items() if value is not None}


def close(actual, expected, rtol=RTOL):
    return abs(Fraction(actual) - Fraction(expected)) <= rtol * abs(Fraction(expected))


def assert_bytes(actual, expected, *, what, mistakes=None, rtol=RTOL):
    """`actual` is a number equal to the exact `expected` within `rtol`; a failure names the mistake it matches."""
    assert isinstance(actual, numbers.Real) and not isinstance(actual, bool), f"{what} should be a number of bytes, got {actual!r}"
    if close(actual, expected, rtol):
        return
    message = f"{what} is {float(actual):,.6g} bytes but should be {float(expected):,.6g} bytes."
    for sentence, wrong in (mistakes or {}).items():
        if close(actual, wrong, rtol):
            message += f"\n  Likely mistake: {sentence}"
            break
    raise AssertionError(message)


def assert_max_params(p, gpu_bytes, n, stage, p_bytes=2, g_bytes=2, k=12):
    """The contract's check: bytes(p) <= gpu_bytes < bytes(p + 1), exactly, with the relative slack."""
    where = f"max_params(gpu_bytes={gpu_bytes}, num_gpus={n}, stage={stage}, byte sizes {p_bytes}/{g_bytes}/{k})"
    assert isinstance(p, numbers.Integral) and not isinstance(p, bool), f"{where} should return an int, got {p!r}"
    budget = Fraction(gpu_bytes)
    slack = SLACK * budget
    need = exact_bytes(p, n, stage, p_bytes, g_bytes, k)
    assert need <= budget + slack, (
        f"{where} returned {p}, but {p} parameters need {float(need):,.6g} bytes per GPU: more than the budget. "
        "Round down: the largest psi that fits, not the first that does not.")
    more = exact_bytes(p + 1, n, stage, p_bytes, g_bytes, k)
    assert budget < more + slack, (
        f"{where} returned {p}, but {p + 1} parameters fit too ({float(more):,.6g} bytes): return the largest psi that fits.")


# ---------------------------------------------------------------------------------------------------
# The ZeRO paper's numbers


@pytest.mark.points(3)
def test_paper_figure_1_example(impl):
    """The paper's 7.5B-parameter, 64-GPU example: 120 GB, 31.4 GB, 16.6 GB and 1.9 GB (GB = 1e9 bytes) in stages 0-3."""
    psi, n = Fraction(75, 10) * GB, 64
    for stage, printed in zip(range(4), (Fraction(120), Fraction(314, 10), Fraction(166, 10), Fraction(19, 10))):
        out = impl.model_state_bytes(7.5e9, n, stage)
        assert_bytes(out, exact_bytes(psi, n, stage), what=f"model_state_bytes(7.5e9, 64, stage={stage})", mistakes=known_mistakes(psi, n, stage))
        # the paper prints one decimal: the exact value rounds to it
        assert abs(Fraction(out) / GB - printed) <= Fraction(5, 100), f"stage {stage}: {float(out) / GB:.4g} GB does not round to the paper's {float(printed)} GB"


# Table 1 of the paper: per-device model-state memory (GB) for three model sizes, stages 1, 2, 3 and
# data-parallel degrees 1 to 1024, printed to the digits shown.
TABLE_1_DP = (1, 4, 16, 64, 256, 1024)
TABLE_1 = {  # model size in parameters -> {stage: column}
    Fraction(75, 10) * GB: {1: ("120", "52.5", "35.6", "31.4", "30.4", "30.1"),
                            2: ("120", "41.3", "21.6", "16.6", "15.4", "15.1"),
                            3: ("120", "30", "7.5", "1.88", "0.47", "0.12")},
    128 * GB: {1: ("2048", "896", "608", "536", "518", "513"),
               2: ("2048", "704", "368", "284", "263", "257"),
               3: ("2048", "512", "128", "32", "8", "2")},
    1000 * GB: {1: ("16000", "7000", "4750", "4187", "4046", "4011"),
                2: ("16000", "5500", "2875", "2218", "2054", "2013"),
                3: ("16000", "4000", "1000", "250", "62.5", "15.6")},
}
# The cells the paper prints in bold: the smallest DP degree at which the model fits a 32 GB V100 (None: never).
TABLE_1_BOLD = {(Fraction(75, 10) * GB, 1): 64, (Fraction(75, 10) * GB, 2): 16, (Fraction(75, 10) * GB, 3): 4,
                (128 * GB, 1): None, (128 * GB, 2): None, (128 * GB, 3): 64,
                (1000 * GB, 1): None, (1000 * GB, 2): None, (1000 * GB, 3): 1024}


@pytest.mark.points(3)
@pytest.mark.parametrize("psi", list(TABLE_1), ids=["7.5B", "128B", "1T"])
def test_paper_table_1(impl, psi):
    """Per-GPU memory of each stage and data-parallel degree matches the paper's Table 1 to the digits it prints."""
    for stage, column in TABLE_1[psi].items():
        for n, printed in zip(TABLE_1_DP, column):
            out = impl.model_state_bytes(float(psi), n, stage)
            assert_bytes(out, exact_bytes(psi, n, stage), what=f"model_state_bytes({float(psi):.3g}, {n}, stage={stage})",
                         mistakes=known_mistakes(psi, n, stage))
            # The paper sometimes rounds (41.25 -> 41.3) and sometimes truncates (513.5 -> 513): the
            # exact value lies within one unit of the last printed digit.
            unit = Fraction(1, 10 ** len(printed.partition(".")[2]))
            assert abs(Fraction(out) / GB - Fraction(printed)) < unit, (
                f"stage {stage}, N={n}: {float(out) / GB:.6g} GB, the paper's Table 1 prints {printed} GB")


@pytest.mark.points(2)
@pytest.mark.parametrize("psi", list(TABLE_1), ids=["7.5B", "128B", "1T"])
def test_paper_table_1_bold_cells_via_max_params(impl, psi):
    """max_params agrees with Table 1's bold cells: the smallest data-parallel degree at which each model fits a 32 GB GPU."""
    for stage in (1, 2, 3):
        fits = [n for n in TABLE_1_DP if impl.max_params(32 * GB, n, stage) >= psi * (1 - SLACK)]
        first = fits[0] if fits else None
        assert first == TABLE_1_BOLD[(psi, stage)], (
            f"a {float(psi):.3g}-parameter model in stage {stage} first fits 32 GB per GPU at N={first} according to "
            f"your max_params; the paper's Table 1 says N={TABLE_1_BOLD[(psi, stage)]}")


# Table 2 of the paper: the largest model whose model states fit 32 GB V100s, with data parallelism of
# degree GPUs / MP = 64 on top of model parallelism of degree MP (which divides each replica MP ways).
TABLE_2 = [  # (MP, GPUs, baseline, stage 1, stage 2, stage 3) as printed
    (1, 64, "2B", "7.6B", "14.4B", "128B"),
    (2, 128, "4B", "15.2B", "28.8B", "256B"),
    (4, 256, "8B", "30.4B", "57.6B", "0.5T"),
    (8, 512, "16B", "60.8B", "115.2B", "1T"),
    (16, 1024, "32B", "121.6B", "230.4B", "2T"),
]


@pytest.mark.points(3)
@pytest.mark.parametrize("row", TABLE_2, ids=[f"MP{r[0]}" for r in TABLE_2])
def test_paper_table_2_max_model_size(impl, row):
    """max_params on a 32 GB GPU with 64-way data parallelism reproduces the paper's Table 2 (largest model per stage)."""
    mp, gpus, *printed = row
    n = gpus // mp
    for stage, cell in enumerate(printed):
        p = impl.max_params(32 * GB, n, stage)
        assert_max_params(p, 32 * GB, n, stage)
        model = mp * Fraction(p)  # model parallelism of degree MP holds MP times the parameters
        value, unit = Fraction(cell[:-1]), {"B": GB, "T": 1000 * GB}[cell[-1]]
        if cell.endswith("T"):
            # 512B, 1024B and 2048B are printed as 0.5T, 1T and 2T: one significant digit, within 5%.
            ok = abs(model - value * unit) <= Fraction(5, 100) * value * unit
        else:
            # The paper rounds the MP = 1 row to 0.1B (7.64 -> 7.6) and scales that by MP (30.4 = 4 x 7.6).
            ok = abs(model - value * unit) <= mp * Fraction(5, 100) * GB
        assert ok, f"stage {stage}, MP={mp}, N={n}: {float(model) / GB:.4g}B parameters fit, the paper's Table 2 prints {cell}"


# ---------------------------------------------------------------------------------------------------
# model_state_bytes on any input


@pytest.mark.points(3)
@HYPOTHESIS
@given(psi=st.integers(0, 10**13), n=st.integers(1, 4096), stage=st.integers(0, 3),
       p=st.sampled_from([0.5, 1, 2, 4]), g=st.sampled_from([1, 2, 4]), k=st.sampled_from([0, 4, 8, 12, 16]))
def test_formula_on_random_inputs(impl, psi, n, stage, p, g, k):
    """model_state_bytes equals the paper's formula, in exact arithmetic, for random sizes, GPU counts, stages and byte sizes."""
    out = impl.model_state_bytes(psi, n, stage, param_bytes=p, grad_bytes=g, optimizer_bytes=k)
    assert_bytes(out, exact_bytes(psi, n, stage, p, g, k),
                 what=f"model_state_bytes({psi}, {n}, stage={stage}, param_bytes={p}, grad_bytes={g}, optimizer_bytes={k})",
                 mistakes=known_mistakes(psi, n, stage, p, g, k))


@pytest.mark.points(2)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_byte_size_is_used_where_it_belongs(impl, stage):
    """param_bytes, grad_bytes and optimizer_bytes each scale their own term (distinct sizes tell them apart)."""
    psi, n, p, g, k = 1000, 10, 3, 5, 7
    out = impl.model_state_bytes(psi, n, stage, param_bytes=p, grad_bytes=g, optimizer_bytes=k)
    assert_bytes(out, exact_bytes(psi, n, stage, p, g, k), what=f"model_state_bytes(1000, 10, stage={stage}, param_bytes=3, grad_bytes=5, optimizer_bytes=7)",
                 mistakes=known_mistakes(psi, n, stage, p, g, k))


@pytest.mark.points(1)
def test_more_sharding_never_costs_more(impl):
    """Per-GPU memory never grows with the stage or with the number of GPUs, and stage 0 does not depend on N."""
    psi = 10**9
    for n in (1, 2, 8, 64):
        values = [impl.model_state_bytes(psi, n, stage) for stage in range(4)]
        assert all(a >= b for a, b in zip(values, values[1:])), f"N={n}: memory per stage {values} should not increase with the stage"
        assert close(impl.model_state_bytes(psi, n, 0), 16 * psi), "stage 0 replicates everything: 16 psi bytes whatever N"
    for stage in (1, 2, 3):
        values = [impl.model_state_bytes(psi, n, stage) for n in (1, 2, 8, 64)]
        assert all(a > b for a, b in zip(values, values[1:])), f"stage {stage}: memory {values} should shrink as N grows"
        assert close(values[0], 16 * psi), f"stage {stage} on one GPU partitions nothing: 16 psi bytes"


@pytest.mark.points(1)
def test_zero_parameters_take_zero_bytes(impl):
    """A model with no parameters needs no memory in any stage."""
    for stage in range(4):
        out = impl.model_state_bytes(0, 8, stage)
        assert isinstance(out, numbers.Real) and out == 0, f"model_state_bytes(0, 8, stage={stage}) should be 0, got {out!r}"


# ---------------------------------------------------------------------------------------------------
# DeepSpeed's estimators


def tiny_model():
    """A small language model in plain torch: embedding, two blocks, an output head tied to the embedding."""
    embedding = torch.nn.Embedding(512, 64)
    blocks = [torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)) for _ in range(2)]
    head = torch.nn.Linear(64, 512, bias=False)
    head.weight = embedding.weight  # tied: DeepSpeed counts shared parameters once
    return torch.nn.Sequential(embedding, *blocks, head)


DEEPSPEED_CASES = [(7.5e9, 8, 8), (7.5e9, 1, 1), (70e9, 4, 8), (7e9, 1, 8), (123_456_789, 3, 7), (1.3e9, 2, 5), ("tiny", 1, 3)]


@pytest.mark.points(3)
@pytest.mark.parametrize("psi, nodes, gpus_per_node", DEEPSPEED_CASES)
def test_stage_2_matches_deepspeed(impl, psi, nodes, gpus_per_node):
    """Stage 2 with optimizer_bytes=16 equals DeepSpeed's estimate_zero2_model_states_mem_needs GPU figure (which truncates to whole bytes)."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs, model_to_params

    if psi == "tiny":
        psi = model_to_params(tiny_model())
    n = nodes * gpus_per_node
    out = impl.model_state_bytes(psi, n, 2, optimizer_bytes=16)
    # DeepSpeed: 2 psi + int(18 psi / N), with 18 = 2 (fp16 grads) + 16 (fp32 grads, master params, Adam's two moments).
    _, ds_gpu = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False)
    # out is exact up to float rounding (RTOL); DeepSpeed's int() drops less than one byte (and its own
    # float rounding may cost one more at an exact integer): ds_gpu <= out <= ds_gpu + 1.
    eps = RTOL * Fraction(ds_gpu)
    assert Fraction(ds_gpu) - eps <= Fraction(out) <= Fraction(ds_gpu) + 1 + eps, (
        f"model_state_bytes({psi}, {n}, stage=2, optimizer_bytes=16) = {out:,.0f} bytes; DeepSpeed estimates {ds_gpu:,} bytes per GPU"
        + _named(out, known_mistakes(psi, n, 2, k=16)))


@pytest.mark.points(2)
@pytest.mark.parametrize("psi, nodes, gpus_per_node", DEEPSPEED_CASES)
def test_stage_3_differs_from_deepspeed_as_explained(impl, psi, nodes, gpus_per_node):
    """DeepSpeed's stage-3 estimate is ours (optimizer_bytes=16) minus the fp16 parameter shard 2 psi/N plus 4 bytes per parameter of the largest layer."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params

    if psi == "tiny":
        psi, largest = model_to_params(tiny_model())
    else:
        largest = int(psi) // 50  # e.g. an embedding matrix of 2% of the model
    n = nodes * gpus_per_node
    out = impl.model_state_bytes(psi, n, 3, optimizer_bytes=16)  # (2 + 2 + 16) psi / N
    _, ds_gpu, largest_memory = estimate_zero3_model_states_mem_needs(
        psi, largest, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False, cpu_offload_params=False)
    assert largest_memory == 4 * largest  # fp16 parameters and gradients of the layer being computed, gathered whole
    # DeepSpeed: 4 L + int(18 psi / N). It leaves out our 2 psi / N of fp16 parameter shard and adds the
    # gathered largest layer. Up to DeepSpeed's truncation to whole bytes (< 1 byte, +1 at an exact integer):
    pinned = Fraction(out) - Fraction(2) * Fraction(psi) / n + 4 * largest
    eps = RTOL * Fraction(ds_gpu)
    assert Fraction(ds_gpu) - eps <= pinned <= Fraction(ds_gpu) + 1 + eps, (
        f"model_state_bytes({psi}, {n}, stage=3, optimizer_bytes=16) = {out:,.0f} bytes; with DeepSpeed's accounting "
        f"(minus 2 psi/N, plus 4 x largest layer) that gives {float(pinned):,.0f}, DeepSpeed estimates {ds_gpu:,}"
        + _named(out, known_mistakes(psi, n, 3, k=16)))


def _named(out, mistakes):
    for sentence, wrong in mistakes.items():
        if close(out, wrong):
            return f"\n  Likely mistake: {sentence}"
    return ""


# ---------------------------------------------------------------------------------------------------
# max_params: the inverse of model_state_bytes


@pytest.mark.points(3)
@HYPOTHESIS
@given(gpu_bytes=st.integers(0, 10**7), n=st.integers(1, 1024), stage=st.integers(0, 3),
       p=st.sampled_from([1, 2, 4]), g=st.sampled_from([1, 2, 4]), k=st.sampled_from([0, 4, 12, 16]))
def test_max_params_inverts_on_small_budgets(impl, gpu_bytes, n, stage, p, g, k):
    """max_params(gpu_bytes, ...) is the largest psi with bytes(psi) <= gpu_bytes < bytes(psi + 1), for random small budgets."""
    out = impl.max_params(gpu_bytes, n, stage, param_bytes=p, grad_bytes=g, optimizer_bytes=k)
    assert_max_params(out, gpu_bytes, n, stage, p, g, k)


@pytest.mark.points(2)
@HYPOTHESIS
@given(gpu_bytes=st.one_of(st.integers(0, 10**15), st.floats(0, 1e15, allow_nan=False, allow_infinity=False)),
       n=st.integers(1, 4096), stage=st.integers(0, 3), k=st.sampled_from([12, 16]))
def test_max_params_inverts_on_real_budgets(impl, gpu_bytes, n, stage, k):
    """max_params is the inverse of model_state_bytes for budgets up to 1 PB, integer or float."""
    out = impl.max_params(gpu_bytes, n, stage, optimizer_bytes=k)
    assert_max_params(out, gpu_bytes, n, stage, 2, 2, k)


@pytest.mark.points(2)
@pytest.mark.parametrize("gpu_bytes, n, stage, expected", [
    (100, 1, 0, 6), (111, 1, 0, 6), (112, 1, 0, 7), (80, 1, 3, 5), (1000, 4, 1, 142), (999, 4, 1, 142), (994, 4, 1, 142), (993, 4, 1, 141),
    (55, 2, 2, 6), (15, 8, 3, 7), (16, 8, 3, 8), (0, 4, 2, 0), (15, 1, 0, 0),
])
def test_max_params_by_hand(impl, gpu_bytes, n, stage, expected):
    """max_params on small budgets worked out by hand: rounds down, never up."""
    out = impl.max_params(gpu_bytes, n, stage)
    assert out == expected, (
        f"max_params({gpu_bytes}, {n}, stage={stage}) returned {out!r}, expected {expected}: "
        + ("one too many: round down (floor), not up or to nearest" if out == expected + 1 else
           "one too few: the largest psi that fits, bytes(psi) <= gpu_bytes, may use the budget exactly" if out == expected - 1 else
           "compare with bytes per parameter = model_state_bytes(1, ...)"))


@pytest.mark.points(1)
def test_max_params_uses_the_byte_sizes(impl):
    """max_params passes param_bytes, grad_bytes and optimizer_bytes on: 8-bit Adam states (K = 6) fit more parameters."""
    assert_max_params(impl.max_params(24e9, 8, 1, optimizer_bytes=6), 24e9, 8, 1, 2, 2, 6)
    assert_max_params(impl.max_params(24e9, 8, 2, param_bytes=4, grad_bytes=4, optimizer_bytes=8), 24e9, 8, 2, 4, 4, 8)


# ---------------------------------------------------------------------------------------------------
# communication_bytes


@pytest.mark.points(2)
@pytest.mark.parametrize("psi", [1, 7.5e9, 123_456_789])
def test_communication_volume_as_in_the_paper(impl, psi):
    """2 psi elements per GPU and step in stages 0-2 (reduce-scatter + all-gather), 3 psi in stage 3, times param_bytes."""
    for param_bytes in (2, 4):
        for stage in range(4):
            out = impl.communication_bytes(psi, stage, param_bytes=param_bytes)
            elements = 3 if stage == 3 else 2
            expected = elements * Fraction(psi) * param_bytes
            mistakes = {
                "stage 3 moves 3 psi: the parameters are all-gathered twice (forward, backward) and the gradients reduce-scattered once": 2 * Fraction(psi) * param_bytes,
                "stages 1 and 2 move the same 2 psi as plain data parallelism; only stage 3 moves 3 psi": 3 * Fraction(psi) * param_bytes,
                "the result counts elements: multiply by param_bytes": elements * Fraction(psi),
            }
            assert_bytes(out, expected,
                         what=f"communication_bytes({psi}, stage={stage}, param_bytes={param_bytes})", mistakes=mistakes)


@pytest.mark.points(1)
def test_stage_3_communicates_one_and_a_half_times_the_baseline(impl):
    """Stage 3 costs 1.5 times the communication of plain data parallelism; stages 1 and 2 cost nothing extra."""
    base = impl.communication_bytes(10**9, 0)
    assert close(impl.communication_bytes(10**9, 3), Fraction(3, 2) * Fraction(base)), "stage 3 should move 1.5x the data of stage 0"
    assert close(impl.communication_bytes(10**9, 2), base) and close(impl.communication_bytes(10**9, 1), base), "stages 1 and 2 move as much as stage 0"
    assert close(base, 4 * 10**9), "stage 0 moves 2 psi elements of 2 bytes"


# ---------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.points(1)
@pytest.mark.parametrize("stage", [-1, 4, 5])
def test_stage_outside_0_to_3_is_rejected(impl, stage):
    """A stage outside 0..3 raises ValueError."""
    assert_raises(ValueError, impl.model_state_bytes, 10**9, 8, stage, when=f"for model_state_bytes with stage={stage}")
    assert_raises(ValueError, impl.max_params, 32e9, 8, stage, when=f"for max_params with stage={stage}")


@pytest.mark.points(1)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fewer_than_one_gpu_is_rejected(impl, stage):
    """num_gpus < 1 raises ValueError in every stage."""
    for n in (0, -4):
        assert_raises(ValueError, impl.model_state_bytes, 10**9, n, stage, when=f"for model_state_bytes with num_gpus={n}, stage={stage}")
        assert_raises(ValueError, impl.max_params, 32e9, n, stage, when=f"for max_params with num_gpus={n}, stage={stage}")


@pytest.mark.points(1)
def test_negative_sizes_are_rejected(impl):
    """num_params < 0 and gpu_bytes < 0 raise ValueError."""
    for stage in range(4):
        assert_raises(ValueError, impl.model_state_bytes, -1, 8, stage, when=f"for model_state_bytes with num_params=-1, stage={stage}")
        assert_raises(ValueError, impl.max_params, -1, 8, stage, when=f"for max_params with gpu_bytes=-1, stage={stage}")
    assert_raises(ValueError, impl.max_params, -0.5, 8, 3, when="for max_params with gpu_bytes=-0.5")
