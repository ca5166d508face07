"""Public tests of module 11 (sampling). Run: pytest exercises/11_sampling

These check the essentials quickly on small hand-made examples; the grader's hidden tests check more
(transformers' logits processors as oracles, dtypes, ties, extreme values, the distribution of many
draws). Read docs/11_sampling.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape

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
    assert torch.equal(logits, torch.tensor([[2.0, -1.0, 0.5, 3.0]])), "apply_repetition_penalty changed its input in place"


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
    assert kept(out) == [1, 2, 3], (
        f"top_k_filter([1, 5, 2, 2, -1], k=2) kept tokens {kept(out)}, expected [1, 2, 3]: 5 and both 2s (a tie at the "
        "2nd largest value is kept). Remove only the logits strictly below the k-th largest."
    )
    assert_close(out, torch.tensor([[INF, 5.0, 2.0, 2.0, INF]]), what="top_k_filter(logits, 2)")
    assert_close(impl.top_k_filter(logits, 0), logits, what="top_k_filter(logits, 0) (the filter is off)")


def test_top_p_keeps_the_token_that_crosses_p(impl):
    """Probabilities 0.5, 0.3, 0.15, 0.05 with p=0.7: the 0.5 and 0.3 tokens are kept (0.3 crosses 0.7)."""
    logits = torch.tensor([[0.3, 0.05, 0.5, 0.15]]).log()
    out = impl.top_p_filter(logits, 0.7)
    assert kept(out) == [0, 2], (
        f"top_p_filter kept tokens {kept(out)}, expected [0, 2] (probabilities 0.3 and 0.5): keep the most probable tokens "
        "until their probabilities sum to at least p; the token that crosses p is kept"
        + (". You removed the crossing token." if kept(out) == [2] else "")
    )
    out = impl.top_p_filter(logits, 0.01, min_tokens_to_keep=3)
    assert kept(out) == [0, 2, 3], f"top_p_filter(logits, 0.01, min_tokens_to_keep=3) kept {kept(out)}, expected the 3 most probable [0, 2, 3]"
    assert_raises(ValueError, impl.top_p_filter, logits, 0.0, when="for p=0.0")


def test_min_p_is_relative_to_the_top_probability(impl):
    """min_p_filter drops tokens below min_p times the top token's probability (not below min_p itself)."""
    logits = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    out = impl.min_p_filter(logits, 0.3)  # threshold 0.3 * 0.4 = 0.12
    assert kept(out) == [0, 1, 2], (
        f"min_p_filter(probabilities (0.4, 0.3, 0.15, 0.1, 0.05), 0.3) kept {kept(out)}, expected [0, 1, 2]: "
        "the threshold is min_p * max probability = 0.12"
        + (". You compared with min_p itself (0.3)." if kept(out) == [0, 1] else "")
    )


def test_greedy_at_temperature_zero(impl):
    """temperature=0 gives the argmax after the repetition penalty, one token per row."""
    logits = torch.tensor([[1.0, 3.0, 2.5], [0.0, -1.0, 2.0]])
    out = impl.sample_next_token(logits, torch.tensor([[1], [0]]), temperature=0.0, repetition_penalty=2.0)
    assert_shape(out, (2,), what="sample_next_token(logits of shape (2, 3), temperature=0)")
    assert out.tolist() == [2, 2], (
        f"greedy decoding gave {out.tolist()}, expected [2, 2]: the penalty (3.0 / 2 = 1.5) moves row 0's argmax to token 2"
    )


def test_sampling_frequencies(impl):
    """20,000 draws with top_k=2 and temperature 0.5 fall on the two top tokens in the ratio softmax gives."""
    logits = torch.tensor([[1.0, 0.0, 0.5, -1.0]]).repeat(20_000, 1)
    draws = impl.sample_next_token(logits, temperature=0.5, top_k=2, generator=torch.Generator().manual_seed(0))
    assert_shape(draws, (20_000,), what="sample_next_token on 20,000 rows")
    counts = torch.bincount(draws, minlength=4).double() / 20_000
    assert counts[1] == 0 and counts[3] == 0, f"tokens 1 and 3 are outside the top 2 but were drawn (frequencies {counts.tolist()})"
    want = torch.tensor([2.0, 1.0]).softmax(-1)[0].item()  # (1.0, 0.5) / 0.5 -> (2, 1)
    assert abs(counts[0].item() - want) < 0.02, (
        f"token 0 was drawn with frequency {counts[0].item():.3f}, expected about {want:.3f} = softmax((1, 0.5) / 0.5)[0]: "
        "sample from the softmax of the filtered logits (temperature first, then top-k), with torch.multinomial"
    )
