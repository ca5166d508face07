"""Hidden suite of module 11 (sampling): transformers' logits processors are the oracles, float64 the truth.

Each filter is compared with its transformers counterpart (`RepetitionPenaltyLogitsProcessor`,
`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`) on random
logits with ties, batches and extreme values. Where a filter's decision depends on a threshold (top-p's
partial sums, min-p's ratios), the threshold is chosen away from every value it is compared with, by a
margin larger than the rounding of the dtype, so every correct order of operations decides alike.
`sample_next_token` is checked by the distribution of many seeded draws against the float64 truth
(a chi-square test whose false-alarm rate is FALSE_ALARM), never seed for seed.

The learner's functions get copies of the inputs: expected values come from the originals, computed after the
learner's call.

Run: pytest grader/hidden/11_sampling --impl solutions   (or --impl path/to/submission)
"""

import math

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FALSE_ALARM = 1e-6  # probability that a correct sampler fails one distribution test
DRAWS = 40_000
# How far a top-p threshold stays from every partial sum, and a min-p threshold (in log space) from
# every log-ratio: wider than the rounding of a softmax and a cumulative sum computed in that dtype.
MARGIN = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def hf(processor, logits, input_ids=None):
    """What a transformers processor returns for `logits` (given a copy: processors may write in place)."""
    if input_ids is None:
        input_ids = torch.zeros(logits.shape[0], 1, dtype=torch.long, device=logits.device)
    return processor(input_ids.clone(), logits.clone())


def random_logits(batch, vocab, dtype, device, scale=2.0, ties=False):
    logits = torch.randn(batch, vocab) * scale
    if ties:  # a coarse grid: many equal values in every row
        logits = (logits * 2).round() / 2
    return logits.to(device=device, dtype=dtype)


def safe_top_p(logits, dtype, tries=200):
    """Logits and a p in [0.2, 0.95] at least MARGIN[dtype] away from every partial sum of every row, and no tie
    between the last token p keeps and the first it removes (low precision ties logits often: with a tie
    there, keeping either token is correct, and which one a sort puts first is its own choice)."""
    for _ in range(tries):
        probs = logits.double().softmax(-1).sort(-1, descending=True).values.cpu()  # (batch, vocab)
        sums = probs.cumsum(-1)
        candidates = torch.linspace(0.2, 0.95, 301, dtype=torch.float64)
        distance = (candidates[:, None] - sums.flatten()[None, :]).abs().min(dim=1).values
        kept = ((sums - probs)[None] < candidates[:, None, None]).sum(-1)  # (candidates, batch): tokens each p keeps
        ranked = probs[None].expand(len(candidates), *probs.shape)
        last = ranked.gather(-1, (kept - 1)[..., None])[..., 0]
        first_removed = ranked.gather(-1, kept.clamp(max=probs.shape[-1] - 1)[..., None])[..., 0]
        tied = ((last == first_removed) & (kept < probs.shape[-1])).any(dim=1)
        distance[tied] = -1.0
        best = int(distance.argmax())
        if distance[best] >= MARGIN[dtype]:
            return logits, float(candidates[best])
        logits = random_logits(*logits.shape, dtype, logits.device, scale=3.0)
    raise RuntimeError("no safe top_p found")  # never happens in practice


def safe_min_p(logits, dtype, tries=200):
    """Logits and a min_p in [0.02, 0.8] whose log is MARGIN[dtype] away from every log(p_i / p_max)."""
    for _ in range(tries):
        log_ratios = (logits.double() - logits.double().amax(-1, keepdim=True)).flatten().cpu()
        candidates = torch.linspace(math.log(0.02), math.log(0.8), 301, dtype=torch.float64)
        distance = (candidates[:, None] - log_ratios[None, :]).abs().min(dim=1).values
        best = int(distance.argmax())
        if distance[best] >= MARGIN[dtype]:
            return logits, float(candidates[best].exp())
        logits = random_logits(*logits.shape, dtype, logits.device)
    raise RuntimeError("no safe min_p found")


# ---------------------------------------------------------------------------------------------------
# The float64 truths and the known mistakes


def penalty_truth(logits, input_ids, penalty):
    x = logits.double()
    seen = torch.zeros_like(x, dtype=torch.bool).scatter(1, input_ids, True)
    return torch.where(seen, torch.where(x < 0, x * penalty, x / penalty), x)


def penalty_mistakes(logits, input_ids, penalty):
    x = logits.double()
    seen = torch.zeros_like(x, dtype=torch.bool).scatter(1, input_ids, True)
    counts = torch.zeros_like(x).scatter_add(1, input_ids, torch.ones_like(input_ids, dtype=x.dtype))
    per_occurrence = torch.where(x < 0, x * penalty**counts, x / penalty**counts)
    return {
        "positive logits must be divided by the penalty (and negative ones multiplied): you multiplied a positive one":
            torch.where(seen, x * penalty, x),
        "the signs are swapped: divide positive logits by the penalty, multiply negative ones":
            torch.where(seen, torch.where(x < 0, x / penalty, x * penalty), x),
        "the penalty is applied once per occurrence; it is applied once per token, however often it occurs": per_occurrence,
        "you penalised every token, not only those in input_ids": torch.where(x < 0, x * penalty, x / penalty),
    }


def keep_count_mistake(expected_count):
    """A predicate: the output keeps a different number of tokens per row than expected."""
    return lambda out: not torch.equal(torch.isfinite(out).sum(-1).cpu(), expected_count.cpu())


def top_k_mistakes(logits, k):
    x = logits.double()
    exactly_k = torch.zeros_like(x, dtype=torch.bool).scatter(-1, torch.topk(x, k, dim=-1).indices, True)
    mistakes = {
        "tokens tied with the k-th largest logit must all be kept (compare with `logits < kth`, not by index)":
            x.masked_fill(~exactly_k, float("-inf")),
    }
    if k + 1 < x.shape[-1]:
        kth_plus = torch.topk(x, k + 1, dim=-1).values[..., -1:]
        mistakes["you kept k + 1 tokens: the threshold is the k-th largest value, values[..., k - 1]"] = x.masked_fill(x < kth_plus, float("-inf"))
    kth = torch.topk(x, k, dim=-1).values[..., -1:]
    mistakes["you removed the k-th largest itself: remove only logits strictly below it"] = x.masked_fill(x <= kth, float("-inf"))
    return mistakes


def top_p_truth(logits, p, min_tokens_to_keep=1):
    x = logits.double()
    probs, order = x.softmax(-1).sort(-1, descending=True)
    remove = (probs.cumsum(-1) - probs) >= p
    remove[..., :min_tokens_to_keep] = False
    return x.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def top_p_mistakes(logits, p, min_tokens_to_keep=1):
    x = logits.double()
    probs, order = x.softmax(-1).sort(-1, descending=True)
    crossing_removed = probs.cumsum(-1) >= p
    crossing_removed[..., :min_tokens_to_keep] = False
    ignored = (probs.cumsum(-1) - probs) >= p
    unsorted = (x.softmax(-1).cumsum(-1) - x.softmax(-1)) >= p
    return {
        "the token whose probability makes the sum cross p must be kept (keep while the sum *before* a token is below p)":
            x.masked_fill(crossing_removed.scatter(-1, order, crossing_removed), float("-inf")),
        "min_tokens_to_keep was ignored: the most probable min_tokens_to_keep tokens are always kept":
            x.masked_fill(ignored.scatter(-1, order, ignored), float("-inf")),
        "the probabilities must be sorted (descending) before the cumulative sum": x.masked_fill(unsorted, float("-inf")),
        "you compared logits with p instead of probabilities": lambda out: bool((torch.isfinite(out) == (x >= p).cpu()).all()),
    }


def min_p_truth(logits, min_p):
    x = logits.double()
    probs = x.softmax(-1)
    return x.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


def min_p_mistakes(logits, min_p):
    x = logits.double()
    probs = x.softmax(-1)
    return {
        "min_p is relative: compare each probability with min_p times the TOP probability, not with min_p itself":
            x.masked_fill(probs < min_p, float("-inf")),
        "you compared logits, not probabilities, with the threshold": x.masked_fill(x < min_p * x.amax(-1, keepdim=True), float("-inf")),
    }


def unchanged(original, given, name):
    """The logits the learner's function was given still equal the original."""
    assert torch.equal(original, given), f"{name} changed its input logits in place: return a new tensor (masked_fill, not masked_fill_)"


# ---------------------------------------------------------------------------------------------------
# apply_repetition_penalty


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_matches_transformers(impl, device, dtype, penalty):
    """apply_repetition_penalty equals RepetitionPenaltyLogitsProcessor: repeated tokens, both signs, a batch of 4."""
    logits = random_logits(4, 50, dtype, device)
    logits[0, 7] = 0.0  # zero stays zero whichever branch takes it
    input_ids = torch.randint(0, 50, (4, 12), device=device)
    input_ids[:, 1] = input_ids[:, 0]  # every row repeats a token: the penalty is applied once per token
    input_ids[:, 2] = input_ids[:, 0]
    input_ids[0, 3] = 7
    given = logits.clone()  # the learner's copy; logits stays the original
    out = impl.apply_repetition_penalty(given, input_ids.clone(), penalty)
    unchanged(logits, given, "apply_repetition_penalty")
    what = f"apply_repetition_penalty(logits, input_ids, {penalty}) for {dtype} logits"
    assert_close(out, hf(RepetitionPenaltyLogitsProcessor(penalty), logits, input_ids), what=what,
                 mistakes=penalty_mistakes(logits, input_ids, penalty))
    assert_close(out, penalty_truth(logits, input_ids, penalty), what=what + " against the float64 rule", dtype=dtype)


@pytest.mark.points(2)
def test_repetition_penalty_is_per_row(impl, device):
    """Each row is penalised by its own input_ids only: a token seen in row 0 is not penalised in row 1."""
    logits = torch.full((2, 6), 2.0, device=device)
    input_ids = torch.tensor([[1, 1, 4], [0, 0, 0]], device=device)
    out = impl.apply_repetition_penalty(logits.clone(), input_ids.clone(), 2.0)
    want = torch.tensor([[2.0, 1.0, 2.0, 2.0, 1.0, 2.0], [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]], device=device)
    assert_close(out, want, what="apply_repetition_penalty on two rows with different histories",
                 mistakes={"tokens of every row were penalised in every row: scatter into each row's own logits":
                           torch.tensor([[1.0, 1.0, 2.0, 2.0, 1.0, 2.0]] * 2)})


@pytest.mark.points(1)
@pytest.mark.parametrize("penalty", [0.0, -1.5])
def test_repetition_penalty_rejects_non_positive(impl, penalty):
    """apply_repetition_penalty with penalty <= 0 raises ValueError."""
    assert_raises(ValueError, impl.apply_repetition_penalty, torch.randn(1, 5), torch.tensor([[1]]), penalty,
                  when=f"for penalty={penalty}")


# ---------------------------------------------------------------------------------------------------
# apply_temperature


@pytest.mark.points(2)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(impl, device, dtype, temperature):
    """apply_temperature equals TemperatureLogitsWarper (logits / temperature) and keeps the dtype."""
    logits = random_logits(3, 40, dtype, device)
    logits[1, :5] = float("-inf")  # tokens an earlier filter removed stay removed
    given = logits.clone()  # the learner's copy; logits stays the original
    out = impl.apply_temperature(given, temperature)
    unchanged(logits, given, "apply_temperature")
    what = f"apply_temperature(logits, {temperature}) for {dtype} logits"
    assert_close(out, hf(TemperatureLogitsWarper(temperature), logits), what=what,
                 mistakes={"you multiplied by the temperature; divide by it": logits.double() * temperature})
    assert_close(out, logits.double() / temperature, what=what + " against float64", dtype=dtype)


@pytest.mark.points(1)
@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_temperature_rejects_non_positive(impl, temperature):
    """apply_temperature with temperature <= 0 raises ValueError."""
    assert_raises(ValueError, impl.apply_temperature, torch.randn(1, 5), temperature, when=f"for temperature={temperature}")


# ---------------------------------------------------------------------------------------------------
# top_k_filter


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 3, 10, 31])
def test_top_k_matches_transformers_with_ties(impl, device, dtype, k):
    """top_k_filter equals TopKLogitsWarper on logits with many ties (every tie at the k-th value is kept)."""
    logits = random_logits(5, 32, dtype, device, ties=True)
    given = logits.clone()  # the learner's copy; logits stays the original
    out = impl.top_k_filter(given, k)
    unchanged(logits, given, "top_k_filter")
    expected = hf(TopKLogitsWarper(k), logits)
    mistakes = top_k_mistakes(logits, k)
    mistakes[f"the number of tokens kept per row differs from {torch.isfinite(expected).sum(-1).tolist()}"] = \
        keep_count_mistake(torch.isfinite(expected).sum(-1))
    assert_close(out, expected, what=f"top_k_filter(logits, {k}) for {dtype} logits with ties", mistakes=mistakes)


@pytest.mark.points(2)
def test_top_k_keeps_every_tie(impl, device):
    """With the 2nd to 4th largest logits equal, top_k_filter(logits, 2) keeps 4 tokens, as TopKLogitsWarper."""
    logits = torch.tensor([[0.1, 3.0, 1.0, 1.0, -2.0, 1.0, 0.5]], device=device)
    out = impl.top_k_filter(logits.clone(), 2)
    kept = torch.isfinite(out).sum().item()
    assert kept == 4, (
        f"top_k_filter kept {kept} tokens of [0.1, 3.0, 1.0, 1.0, -2.0, 1.0, 0.5] with k=2; transformers keeps 4: "
        "3.0 and every logit equal to the 2nd largest (1.0). Remove only logits strictly below the k-th largest."
    )
    assert_close(out, hf(TopKLogitsWarper(2), logits), what="top_k_filter with ties at the k-th value")


@pytest.mark.points(2)
@pytest.mark.parametrize("k", [0, -1, 20, 25])
def test_top_k_disabled(impl, device, k):
    """top_k_filter with k <= 0 or k >= vocab (20) returns the logits unchanged."""
    logits = random_logits(2, 20, torch.float32, device)
    out = impl.top_k_filter(logits.clone(), k)
    assert_close(out, logits, what=f"top_k_filter(logits, {k}) with vocab 20 (the filter is off)")


# ---------------------------------------------------------------------------------------------------
# top_p_filter


@pytest.mark.points(5)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 8), (4, 32), (3, 100)], ids=str)
def test_top_p_matches_transformers(impl, device, dtype, shape):
    """top_p_filter equals TopPLogitsWarper and the float64 rule, with p away from every partial sum."""
    logits, p = safe_top_p(random_logits(*shape, dtype, device, scale=3.0), dtype)
    given = logits.clone()  # the learner's copy; logits stays the original
    out = impl.top_p_filter(given, p)
    unchanged(logits, given, "top_p_filter")
    truth = top_p_truth(logits, p)
    what = f"top_p_filter(logits, {p:.4f}) for {dtype} logits of shape {shape}"
    assert_close(out, truth, what=what, dtype=dtype, mistakes=top_p_mistakes(logits, p))
    if dtype == torch.float32:  # transformers sums the probabilities in the logits' dtype: compare in float32
        assert_close(out, hf(TopPLogitsWarper(p), logits), what=what + " against TopPLogitsWarper")


@pytest.mark.points(2)
@pytest.mark.parametrize("p", [0.6, 0.85, 0.97])
def test_top_p_keeps_the_token_that_crosses_p(impl, device, p):
    """Probabilities 0.5, 0.3, 0.15, 0.05: p=0.6 keeps 2 tokens, 0.85 keeps 3, 0.97 keeps 4 (the crossing token stays)."""
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]], dtype=torch.float64)
    logits = probs.log().float().to(device)
    out = impl.top_p_filter(logits.clone(), p)
    want = {0.6: 2, 0.85: 3, 0.97: 4}[p]
    kept = int(torch.isfinite(out).sum())
    assert kept == want, (
        f"top_p_filter kept {kept} of the tokens with probabilities (0.5, 0.3, 0.15, 0.05) for p={p}, expected {want}: "
        "keep the most probable tokens until their sum reaches p, including the token that crosses p"
    )
    assert_close(out, hf(TopPLogitsWarper(p), logits), what=f"top_p_filter(logits, {p})")


@pytest.mark.points(3)
@pytest.mark.parametrize("min_tokens_to_keep", [1, 3, 6])
def test_top_p_min_tokens_to_keep(impl, device, min_tokens_to_keep):
    """A small p keeps only the top token, unless min_tokens_to_keep asks for more, as TopPLogitsWarper."""
    logits, _ = safe_top_p(random_logits(3, 30, torch.float32, device, scale=3.0), torch.float32)
    p = 0.01  # below every top probability: the top token alone reaches it
    out = impl.top_p_filter(logits.clone(), p, min_tokens_to_keep=min_tokens_to_keep)
    expected = hf(TopPLogitsWarper(p, min_tokens_to_keep=min_tokens_to_keep), logits)
    assert_close(out, expected, what=f"top_p_filter(logits, 0.01, min_tokens_to_keep={min_tokens_to_keep})",
                 mistakes=top_p_mistakes(logits, p, min_tokens_to_keep))
    assert_close(out, top_p_truth(logits, p, min_tokens_to_keep), what="top_p_filter against the float64 rule", dtype=torch.float32)


@pytest.mark.points(1)
def test_top_p_of_one_keeps_everything(impl, device):
    """top_p_filter(logits, 1.0) keeps every token."""
    logits = random_logits(2, 30, torch.float32, device)
    assert_close(impl.top_p_filter(logits.clone(), 1.0), logits, what="top_p_filter(logits, 1.0)")


@pytest.mark.points(1)
@pytest.mark.parametrize("p", [0.0, -0.2, 1.5])
def test_top_p_rejects_p_outside_0_1(impl, p):
    """top_p_filter with p outside (0, 1] raises ValueError."""
    assert_raises(ValueError, impl.top_p_filter, torch.randn(1, 5), p, when=f"for p={p}")


# ---------------------------------------------------------------------------------------------------
# min_p_filter


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 10), (4, 32), (2, 100)], ids=str)
def test_min_p_matches_transformers(impl, device, dtype, shape):
    """min_p_filter equals MinPLogitsWarper: drop tokens below min_p times the top probability."""
    logits, min_p = safe_min_p(random_logits(*shape, dtype, device), dtype)
    given = logits.clone()  # the learner's copy; logits stays the original
    out = impl.min_p_filter(given, min_p)
    unchanged(logits, given, "min_p_filter")
    what = f"min_p_filter(logits, {min_p:.4f}) for {dtype} logits of shape {shape}"
    assert_close(out, min_p_truth(logits, min_p), what=what, dtype=dtype, mistakes=min_p_mistakes(logits, min_p))
    assert_close(out, hf(MinPLogitsWarper(min_p), logits), what=what + " against MinPLogitsWarper")


@pytest.mark.points(1)
@pytest.mark.parametrize("min_p", [0.0, 1.0])
def test_min_p_extremes(impl, device, min_p):
    """min_p=0 keeps every token; min_p=1 keeps only the most probable one."""
    logits = random_logits(3, 20, torch.float32, device)
    out = impl.min_p_filter(logits.clone(), min_p)
    assert_close(out, hf(MinPLogitsWarper(min_p), logits), what=f"min_p_filter(logits, {min_p})")


# ---------------------------------------------------------------------------------------------------
# Extreme values: removed tokens, large logits


@pytest.mark.points(2)
def test_filters_handle_extreme_logits(impl, device):
    """Rows holding -inf (already removed) and logits around 1e4 give transformers' results, with no NaN."""
    logits = random_logits(3, 24, torch.float32, device, scale=3.0)
    logits[0, ::3] = float("-inf")
    logits[1] += 1e4
    logits[2] -= 1e4
    logits, p = safe_top_p(logits, torch.float32)
    outs = [
        ("top_k_filter(logits, 5)", impl.top_k_filter(logits.clone(), 5)),
        (f"top_p_filter(logits, {p:.4f})", impl.top_p_filter(logits.clone(), p)),
        ("min_p_filter(logits, 0.1)", impl.min_p_filter(logits.clone(), 0.1)),
        ("apply_temperature(logits, 0.5)", impl.apply_temperature(logits.clone(), 0.5)),
    ]
    wants = [hf(TopKLogitsWarper(5), logits), top_p_truth(logits, p).float(), min_p_truth(logits, 0.1).float(),
             hf(TemperatureLogitsWarper(0.5), logits)]
    for (what, out), expected in zip(outs, wants):
        assert not torch.isnan(out).any(), f"{what} gave NaN on logits with -inf entries or values around ±1e4: use softmax, not exp / sum"
        assert_close(out, expected, what=what + " on rows with -inf and ±1e4 logits")


# ---------------------------------------------------------------------------------------------------
# sample_next_token: the distribution of many draws


def hf_distribution(logits, input_ids, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    """The float64 probabilities after transformers' processors, in transformers' order."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0 and input_ids is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    if min_p:
        processors.append(MinPLogitsWarper(min_p))
    ids = input_ids if input_ids is not None else torch.zeros(logits.shape[0], 1, dtype=torch.long)
    return processors(ids.cpu(), logits.double().cpu()).softmax(-1)


def chi_square(draws, probs, what, mistakes=None):
    """The draws (N,) fit the probabilities (vocab,): no impossible token, and a chi-square p-value above FALSE_ALARM."""
    assert_shape(draws, (DRAWS,), what=what)
    assert draws.dtype == torch.long, f"{what} should be int64 token ids, got {draws.dtype}"
    counts = torch.bincount(draws.cpu(), minlength=probs.numel()).double()
    assert counts.numel() == probs.numel(), f"{what} drew token ids outside the vocabulary: {draws.max().item()}"
    impossible = (probs == 0) & (counts > 0)
    table = "\n".join(f"    token {t:2d}: expected {probs[t].item():.4f}, drawn {counts[t].item() / DRAWS:.4f}" for t in range(probs.numel()))
    if impossible.any():
        tokens = impossible.nonzero().flatten().tolist()
        raise AssertionError(f"{what} drew token(s) {tokens}, which the filters remove (probability 0):\n{table}"
                             + _fitting_mistake(counts, mistakes))
    kept = probs > 0
    expected = probs[kept] * DRAWS
    statistic = ((counts[kept] - expected) ** 2 / expected).sum()
    dof = int(kept.sum()) - 1
    if dof == 0:
        return
    p_value = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2).item()
    if p_value < FALSE_ALARM:
        raise AssertionError(
            f"{what}: the frequencies of {DRAWS} draws do not fit the expected distribution "
            f"(chi-square {statistic.item():.1f} with {dof} degrees of freedom, p-value {p_value:.2g} < {FALSE_ALARM}):\n{table}"
            + _fitting_mistake(counts, mistakes)
        )


def _fitting_mistake(counts, mistakes):
    """The first known mistake whose distribution the observed counts fit."""
    for sentence, probs in (mistakes or {}).items():
        if ((probs == 0) & (counts > 0)).any():
            continue
        kept = probs > 0
        expected = probs[kept] * DRAWS
        statistic = ((counts[kept] - expected) ** 2 / expected).sum()
        dof = max(int(kept.sum()) - 1, 1)
        if torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2).item() > 1e-3:
            return f"\n  Likely mistake: {sentence}"
    return ""


VOCAB_LOGITS = [3.0, 2.6, 2.2, 1.7, 1.2, 0.8, 0.3, -0.3, -1.0, -1.8, -2.5, -3.5]


def crafted_logits(device):
    """One row of 12 logits at fixed gaps (jittered by 0.02), in a random order of the vocabulary."""
    base = torch.tensor(VOCAB_LOGITS) + 0.02 * torch.rand(len(VOCAB_LOGITS))
    order = torch.randperm(len(VOCAB_LOGITS))
    return base[order][None].to(device), order  # order[j] = the rank of vocabulary id j


def midpoint_between(sums, i):
    """A threshold halfway between partial sums i - 1 and i (keeps exactly i + 1 tokens)."""
    return float((sums[i - 1] + sums[i]) / 2)


def top_p_case(logits, temperature=1.0, keep=4, top_k=0):
    """A top_p that keeps `keep` tokens after the temperature (and top-k): halfway between two partial sums."""
    x = logits.double().cpu() / temperature
    if top_k:
        x = hf(TopKLogitsWarper(top_k), x)
    sums = x.softmax(-1).sort(-1, descending=True).values.cumsum(-1)[0]
    return midpoint_between(sums, keep - 1)


def min_p_case(logits, temperature, keep):
    """A min_p that keeps `keep` tokens after the temperature: between two log-ratios."""
    log_ratios = ((logits.double().cpu() - logits.double().cpu().max()) / temperature).sort(descending=True).values[0]
    return float(((log_ratios[keep - 1] + log_ratios[keep]) / 2).exp())


def sampling_case(name, logits, history):
    """The kwargs of sample_next_token for one named case (thresholds placed between partial sums)."""
    if name == "plain":
        return {}
    if name == "temperature":
        return {"temperature": 0.6}
    if name == "temperature_top_k":
        return {"temperature": 1.6, "top_k": 4}
    if name == "temperature_top_p":  # the temperature changes which tokens top-p keeps
        return {"temperature": 1.8, "top_p": top_p_case(logits, 1.8, keep=4)}
    if name == "top_k_then_top_p":  # top-p sees the renormalised top-k tokens
        x = logits.double().cpu()
        full = x.softmax(-1).sort(-1, descending=True).values.cumsum(-1)[0]
        renormalised = hf(TopKLogitsWarper(4), x).softmax(-1).sort(-1, descending=True).values.cumsum(-1)[0]
        low = max(float(renormalised[1]), float(full[2]))
        return {"top_k": 4, "top_p": (low + float(renormalised[2])) / 2}
    if name == "temperature_min_p":
        return {"temperature": 0.5, "min_p": min_p_case(logits, 0.5, keep=3)}
    if name == "repetition_penalty":
        return {"repetition_penalty": 1.6}
    if name == "everything":  # top-p keeps 5 of top-k's 7, then min-p keeps 4 of them
        penalised = penalty_truth(logits.cpu(), history.cpu(), 1.2)
        return {"repetition_penalty": 1.2, "temperature": 0.9, "top_k": 7, "top_p": top_p_case(penalised, 0.9, keep=5, top_k=7),
                "min_p": min_p_case(penalised, 0.9, keep=4)}
    raise KeyError(name)


CASES = ["plain", "temperature", "temperature_top_k", "temperature_top_p", "top_k_then_top_p", "temperature_min_p",
         "repetition_penalty", "everything"]


def sampling_mistakes(logits, history, kwargs):
    """Distributions that known mistakes give for these settings."""
    t = kwargs.get("temperature", 1.0)
    x = logits.double().cpu()
    ids = history.cpu()
    penalty = kwargs.get("repetition_penalty", 1.0)
    after_penalty = penalty_truth(x, ids, penalty) if penalty != 1.0 else x
    mistakes = {}
    if t != 1.0:  # filters first, temperature last
        filtered = after_penalty
        if kwargs.get("top_k"):
            filtered = hf(TopKLogitsWarper(kwargs["top_k"]), filtered)
        if kwargs.get("top_p", 1.0) < 1.0:
            filtered = hf(TopPLogitsWarper(kwargs["top_p"]), filtered)
        if kwargs.get("min_p"):
            filtered = hf(MinPLogitsWarper(kwargs["min_p"]), filtered)
        mistakes["the temperature must be applied before the filters (transformers' order: penalty, temperature, "
                 "top-k, top-p, min-p)"] = (filtered / t).softmax(-1)[0]
    if kwargs.get("top_k") and kwargs.get("top_p", 1.0) < 1.0:
        y = after_penalty / t
        y = hf(TopKLogitsWarper(kwargs["top_k"]), hf(TopPLogitsWarper(kwargs["top_p"]), y))
        mistakes["top-p ran before top-k: the order is top-k, then top-p on what top-k kept"] = y.softmax(-1)[0]
    if penalty != 1.0:
        counts = torch.zeros_like(x).scatter_add(1, ids, torch.ones_like(ids, dtype=x.dtype))
        mistakes["the penalty was applied once per occurrence instead of once per token"] = \
            hf_distribution(torch.where(x < 0, x * penalty**counts, x / penalty**counts), None, **{**kwargs, "repetition_penalty": 1.0})[0]
        mistakes["the repetition penalty multiplied positive logits"] = \
            hf_distribution(torch.where(torch.zeros_like(x, dtype=torch.bool).scatter(1, ids, True), x * penalty, x), None,
                            **{**kwargs, "repetition_penalty": 1.0})[0]
    mistakes["you sampled from the logits (clamped at 0) instead of the softmax probabilities"] = (x.clamp(min=0) / x.clamp(min=0).sum())[0]
    return mistakes


def history_for(logits, device):
    """A history that repeats the two most probable tokens (3 and 2 times) and holds one negative-logit token."""
    ranked = logits[0].argsort(descending=True)
    return torch.tensor([[ranked[0], ranked[5], ranked[0], ranked[1], ranked[0], ranked[1], ranked[10]]], device=device)


@pytest.mark.points(10)
@pytest.mark.parametrize("case", CASES)
def test_sampling_distribution_matches_transformers(impl, device, case):
    """40,000 draws of sample_next_token fit the distribution of transformers' processors (chi-square test)."""
    logits, _ = crafted_logits(device)
    history = history_for(logits, device)
    kwargs = sampling_case(case, logits, history)  # order: the thresholds are inputs, placed between partial sums
    generator = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31, ())))  # from the test's seed
    batch_logits = logits.repeat(DRAWS, 1)  # one draw per row: DRAWS independent draws
    batch_history = history.repeat(DRAWS, 1)
    draws = impl.sample_next_token(batch_logits, batch_history, generator=generator, **kwargs)
    probs = hf_distribution(logits, history, **kwargs)[0]
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items()) or "defaults"
    chi_square(draws, probs, f"sample_next_token({shown})", mistakes=sampling_mistakes(logits, history, kwargs))


@pytest.mark.points(2)
def test_sampling_without_input_ids_skips_the_penalty(impl, device):
    """input_ids=None skips the repetition penalty, whatever repetition_penalty says."""
    logits, _ = crafted_logits(device)
    generator = torch.Generator(device=device).manual_seed(7)
    draws = impl.sample_next_token(logits.repeat(DRAWS, 1), None, repetition_penalty=3.0, generator=generator)
    chi_square(draws, hf_distribution(logits, None)[0], "sample_next_token(logits, None, repetition_penalty=3.0)")


@pytest.mark.points(2)
def test_sampling_a_batch_of_different_rows(impl, device):
    """Each row is sampled from its own distribution: two rows with different supports, top_k=2."""
    logits = torch.tensor([[4.0, 3.5, -1.0, -2.0, 0.0], [-3.0, 0.0, 2.0, 2.5, -1.0]], device=device)
    draws = impl.sample_next_token(logits.repeat(DRAWS // 2, 1), top_k=2,
                                   generator=torch.Generator(device=device).manual_seed(3))
    assert_shape(draws, (DRAWS,), what="sample_next_token on a batch of 40,000 rows")
    first, second = set(draws[0::2].tolist()), set(draws[1::2].tolist())
    assert first <= {0, 1} and second <= {2, 3}, (
        f"row 0 may only draw tokens 0 or 1 and row 1 tokens 2 or 3 (top_k=2), but they drew {sorted(first)} and {sorted(second)}: "
        "filter and sample each row of the batch on its own"
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_greedy_at_temperature_zero(impl, device, dtype):
    """temperature=0 returns the argmax after the repetition penalty (which here moves the argmax), no draw."""
    logits = torch.tensor([[2.0, 5.0, 4.0, -1.0], [0.5, -2.0, 1.0, 0.9], [3.0, 2.9, -0.5, 0.0]], device=device).to(dtype)
    history = torch.tensor([[1, 1, 0], [2, 3, 3], [3, 3, 3]], device=device)
    out = impl.sample_next_token(logits.clone(), history.clone(), temperature=0.0, repetition_penalty=2.0)
    want = penalty_truth(logits, history, 2.0).argmax(-1)
    assert_shape(out, (3,), what="sample_next_token(..., temperature=0) on a batch of 3")
    assert out.dtype == torch.long, f"sample_next_token should return int64 token ids, got {out.dtype}"
    assert torch.equal(out.cpu(), want.cpu()), (
        f"with temperature=0 and repetition_penalty=2.0, sample_next_token gave {out.tolist()}, expected {want.tolist()}: "
        + ("you took the argmax before the repetition penalty; greedy is the argmax after it"
           if torch.equal(out.cpu(), logits.argmax(-1).cpu()) else "greedy is the argmax of each row after the repetition penalty")
    )


@pytest.mark.points(2)
def test_the_generator_makes_draws_reproducible(impl, device):
    """The same seeded generator gives the same draws, and the global random state is not used."""
    logits = random_logits(64, 30, torch.float32, device)
    first = impl.sample_next_token(logits, generator=torch.Generator(device=device).manual_seed(1234), top_k=10)
    state = torch.random.get_rng_state()
    second = impl.sample_next_token(logits, generator=torch.Generator(device=device).manual_seed(1234), top_k=10)
    assert torch.equal(first, second), "two calls with generators seeded alike gave different tokens: pass generator= to torch.multinomial"
    assert torch.equal(state, torch.random.get_rng_state()), (
        "sample_next_token drew from torch's global random generator: draw with the generator it is given"
    )
    assert first.device.type == device.type, f"the tokens should be on {device}, got {first.device}"


@pytest.mark.points(1)
def test_sampling_leaves_its_inputs_unchanged(impl, device):
    """sample_next_token does not modify logits or input_ids in place."""
    logits = random_logits(4, 30, torch.float32, device)
    input_ids = torch.randint(0, 30, (4, 6), device=device)
    before, before_ids = logits.clone(), input_ids.clone()
    impl.sample_next_token(logits, input_ids, temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, repetition_penalty=1.3,
                           generator=torch.Generator(device=device).manual_seed(0))
    unchanged(before, logits, "sample_next_token")
    assert torch.equal(before_ids, input_ids), "sample_next_token changed input_ids in place"


@pytest.mark.points(2)
@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.2}], ids=["temperature", "top_p_0", "top_p_above_1"])
def test_sampling_rejects_bad_arguments(impl, kwargs):
    """sample_next_token raises ValueError for temperature < 0 and for top_p outside (0, 1]."""
    assert_raises(ValueError, impl.sample_next_token, torch.randn(2, 10), None, when=f"for {kwargs}", **kwargs)
