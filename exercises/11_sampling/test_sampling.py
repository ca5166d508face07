"""Public tests of module 11 (sampling). Run: pytest exercises/11_sampling

These check the essentials quickly on small hand-made examples; the grader's hidden tests check more
(transformers' logits processors as oracles, dtypes, ties, extreme values, the distribution of many
draws). Read docs/11_sampling.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, expect

INF = float("-inf")


def kept(logits):
    """The token ids a filter kept in row 0 (finite logits)."""
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative(impl):
    """Seen tokens: a positive logit is divided by the penalty, a negative one multiplied, once per token however often seen."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    input_ids = torch.tensor([[0, 1, 0, 0]])  # token 0 seen three times, token 1 once
    out = impl.apply_repetition_penalty(logits, input_ids, 2.0)
    assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]), what="apply_repetition_penalty(logits, [[0, 1, 0, 0]], 2.0)", mistakes={
        "positive logits are divided by the penalty, not multiplied": torch.tensor([[4.0, -2.0, 0.5, 3.0]]),
        "the signs are swapped: divide positive logits, multiply negative ones": torch.tensor([[4.0, -0.5, 0.5, 3.0]]),
        "the penalty is applied once per token, not once per occurrence": torch.tensor([[0.25, -2.0, 0.5, 3.0]]),
    })
    expect(torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, 3.0]])),
           "apply_repetition_penalty changed its input in place: build a new tensor (torch.where), never write into logits")


def test_repetition_penalty_is_per_row_and_positive(impl):
    """Row b is penalised only for the tokens of row b of input_ids, and a penalty <= 0 raises ValueError."""
    logits = torch.tensor([[2.0, 4.0, 1.0], [2.0, 4.0, 1.0]])
    out = impl.apply_repetition_penalty(logits, torch.tensor([[0], [1]]), 2.0)
    assert_close(out, torch.tensor([[1.0, 4.0, 1.0], [2.0, 2.0, 1.0]]), what="apply_repetition_penalty(2 rows, input_ids [[0], [1]], 2.0)",
                 mistakes={"a token seen in one row was penalised in every row: mark seen tokens per row (scatter along dim 1)":
                           torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]])})
    assert_raises(ValueError, impl.apply_repetition_penalty, logits, torch.tensor([[0], [1]]), 0.0, when="for penalty=0.0")


def test_temperature_divides(impl):
    """apply_temperature(logits, t) is logits / t, and t <= 0 raises ValueError."""
    logits = torch.tensor([[1.0, -2.0, 4.0]])
    assert_close(impl.apply_temperature(logits, 0.5), torch.tensor([[2.0, -4.0, 8.0]]), what="apply_temperature(logits, 0.5)",
                 mistakes={"you multiplied by the temperature; divide by it": torch.tensor([[0.5, -1.0, 2.0]])})
    assert_raises(ValueError, impl.apply_temperature, logits, 0.0, when="for temperature=0.0")


def test_top_k_keeps_ties(impl):
    """top_k_filter keeps every logit equal to the k-th largest (ties), and k=0 turns the filter off."""
    logits = torch.tensor([[1.0, 5.0, 2.0, 2.0, -1.0]])
    out = impl.top_k_filter(logits, 2)
    expect(kept(out) == [1, 2, 3], (
        f"top_k_filter([1, 5, 2, 2, -1], k=2) kept tokens {kept(out)}, expected [1, 2, 3]: 5 and both 2s (a tie at the "
        "2nd largest value is kept). Remove only the logits strictly below the k-th largest."
    ))
    expect(torch.equal(logits, torch.tensor([[1.0, 5.0, 2.0, 2.0, -1.0]])),
           "top_k_filter changed the caller's logits in place: use masked_fill (a new tensor), not masked_fill_")
    assert_close(out, torch.tensor([[INF, 5.0, 2.0, 2.0, INF]]), what="top_k_filter(logits, 2)")
    assert_close(impl.top_k_filter(logits, 0), logits, what="top_k_filter(logits, 0) (the filter is off)")


def test_top_p_keeps_the_token_that_crosses_p(impl):
    """Probabilities 0.5, 0.3, 0.15, 0.05 with p=0.7: the 0.5 and 0.3 tokens are kept (0.3 crosses 0.7)."""
    logits = torch.tensor([[0.3, 0.05, 0.5, 0.15]]).log()
    out = impl.top_p_filter(logits, 0.7)
    expect(kept(out) == [0, 2], (
        f"top_p_filter kept tokens {kept(out)}, expected [0, 2] (probabilities 0.3 and 0.5): keep the most probable tokens "
        "until their probabilities sum to at least p; the token that crosses p is kept"
        + (". You removed the crossing token." if kept(out) == [2] else "")
    ))
    out = impl.top_p_filter(logits, 0.01, min_tokens_to_keep=3)
    expect(kept(out) == [0, 2, 3], f"top_p_filter(logits, 0.01, min_tokens_to_keep=3) kept {kept(out)}, expected the 3 most probable [0, 2, 3]")
    assert_raises(ValueError, impl.top_p_filter, logits, 0.0, when="for p=0.0")


def test_min_p_is_relative_to_the_top_probability(impl):
    """min_p_filter drops tokens below min_p times the top token's probability (not below min_p itself)."""
    logits = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    out = impl.min_p_filter(logits, 0.3)  # threshold 0.3 * 0.4 = 0.12
    expect(kept(out) == [0, 1, 2], (
        f"min_p_filter(probabilities (0.4, 0.3, 0.15, 0.1, 0.05), 0.3) kept {kept(out)}, expected [0, 1, 2]: "
        "the threshold is min_p * max probability = 0.12"
        + (". You compared with min_p itself (0.3)." if kept(out) == [0, 1] else "")
    ))


def test_greedy_at_temperature_zero(impl):
    """temperature=0 gives the argmax after the repetition penalty, one token per row."""
    logits = torch.tensor([[1.0, 3.0, 2.5], [0.0, -1.0, 2.0]])
    out = impl.sample_next_token(logits, torch.tensor([[1], [0]]), temperature=0.0, repetition_penalty=2.0)
    assert_shape(out, (2,), what="sample_next_token(logits of shape (2, 3), temperature=0)")
    expect(out.tolist() == [2, 2], (
        f"greedy decoding gave {out.tolist()}, expected [2, 2]: the penalty (3.0 / 2 = 1.5) moves row 0's argmax to token 2"
    ))
    out = impl.sample_next_token(torch.tensor([[3.0, 2.0]]), None, temperature=0.0, repetition_penalty=2.0)
    expect(out.tolist() == [0], (
        f"sample_next_token(logits [[3, 2]], input_ids=None, temperature=0, repetition_penalty=2.0) gave {out.tolist()}, "
        "expected [0]: with no input_ids there is nothing to penalise, so skip the repetition penalty"
    ))


def test_sampling_frequencies(impl):
    """20,000 draws with top_k=2 and temperature 0.5 fall on the two top tokens in the ratio softmax gives."""
    logits = torch.tensor([[1.0, 0.0, 0.5, -1.0]]).repeat(20_000, 1)
    draws = impl.sample_next_token(logits, temperature=0.5, top_k=2, generator=torch.Generator().manual_seed(0))
    assert_shape(draws, (20_000,), what="sample_next_token on 20,000 rows")
    counts = torch.bincount(draws, minlength=4).double() / 20_000
    expect(counts[1] == 0 and counts[3] == 0, f"tokens 1 and 3 are outside the top 2 but were drawn (frequencies {counts.tolist()})")
    want = torch.tensor([2.0, 1.0]).softmax(-1)[0].item()  # (1.0, 0.5) / 0.5 -> (2, 1)
    expect(abs(counts[0].item() - want) < 0.02, (
        f"token 0 was drawn with frequency {counts[0].item():.3f}, expected about {want:.3f} = softmax((1, 0.5) / 0.5)[0]: "
        "sample from the softmax of the filtered logits (temperature first, then top-k), with torch.multinomial"
    ))


def test_filters_run_in_transformers_order(impl):
    """Temperature comes before the filters, and top-k before top-p: each filter sees the distribution the previous one left."""
    rows = 2_000
    # probabilities (0.5, 0.3, 0.2); at temperature 0.5 they become (0.66, 0.24, 0.11): min_p=0.5 then keeps token 0 only
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(rows, 1)
    draws = impl.sample_next_token(logits, temperature=0.5, min_p=0.5, generator=torch.Generator().manual_seed(0))
    expect(bool((draws == 0).all()), (
        f"with probabilities (0.5, 0.3, 0.2), temperature 0.5 and min_p=0.5 only token 0 may be drawn, but tokens "
        f"{sorted(set(draws.tolist()))} were: apply the temperature before the filters (it changes which tokens they keep)"
    ))
    # probabilities (0.4, 0.3, 0.2, 0.1); top_k=2 leaves (0.57, 0.43), then top_p=0.5 keeps token 0 only
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log().repeat(rows, 1)
    draws = impl.sample_next_token(logits, top_k=2, top_p=0.5, generator=torch.Generator().manual_seed(0))
    expect(bool((draws == 0).all()), (
        f"with probabilities (0.4, 0.3, 0.2, 0.1), top_k=2 and top_p=0.5 only token 0 may be drawn, but tokens "
        f"{sorted(set(draws.tolist()))} were: run top-k before top-p (top-p then sees the renormalised top-k probabilities)"
    ))


def test_the_generator_decides_the_draws(impl):
    """Two calls with generators seeded alike draw the same tokens, whatever torch's global random state."""
    logits = torch.zeros(1_000, 8)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first = impl.sample_next_token(logits, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(2)
        second = impl.sample_next_token(logits, generator=torch.Generator().manual_seed(0))
    expect(torch.equal(first, second), (
        "two calls with torch.Generator().manual_seed(0) drew different tokens: pass generator=generator to "
        "torch.multinomial, or the draws come from torch's global generator and cannot be reproduced"
    ))
