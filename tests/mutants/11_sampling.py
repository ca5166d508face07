"""Mutants of module 11 (sampling): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

SEEN = "    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, input_ids, True)  # (batch, vocab)\n"
PENALISED = "penalised = torch.where(logits < 0, logits * penalty, logits / penalty)"
TOP_K_MASK = 'return logits.masked_fill(logits < kth_largest, float("-inf"))'
BEFORE = "before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above each one"
THRESHOLD = "threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (batch, 1)"
CHAIN = (
    "    logits = apply_temperature(logits, temperature)\n"
    "    logits = top_k_filter(logits, top_k)\n"
    "    logits = top_p_filter(logits, top_p)\n"
    "    logits = min_p_filter(logits, min_p)\n"
)
SAMPLE_PROBS = "probs = logits.float().softmax(dim=-1)  # sample from probabilities, never from logits"
DRAW = "return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)"

MUTANTS = [
    # top-k
    Mutant("top_k_drops_ties", "keeps exactly k tokens by index (topk's indices), dropping ties at the k-th value",
           [(TOP_K_MASK, 'keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1).indices, True)\n'
                         '    return logits.masked_fill(~keep, float("-inf"))')]),
    Mutant("top_k_keeps_k_plus_1", "takes the (k+1)-th largest value as the threshold, keeping k + 1 tokens",
           [("kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]", "kth_largest = torch.topk(logits, k + 1, dim=-1).values[..., -1:]")]),
    Mutant("top_k_removes_the_kth", "removes logits <= the k-th largest, keeping k - 1 tokens",
           [(TOP_K_MASK, 'return logits.masked_fill(logits <= kth_largest, float("-inf"))')]),
    Mutant("top_k_zero_not_disabled", "treats only k >= vocab as 'off': top_k=0 crashes or removes everything",
           [("if k <= 0 or k >= vocab:", "if k >= vocab:")]),
    Mutant("top_k_in_place", "filters the caller's logits in place (masked_fill_)",
           [(TOP_K_MASK, 'return logits.masked_fill_(logits < kth_largest, float("-inf"))')]),
    # top-p
    Mutant("top_p_excludes_crossing_token", "removes the token whose probability makes the sum cross p",
           [(BEFORE, "before = sorted_probs.cumsum(dim=-1)")]),
    Mutant("top_p_min_tokens_ignored", "ignores min_tokens_to_keep (only the top token is protected)",
           [("remove_sorted[..., :min_tokens_to_keep] = False", "remove_sorted[..., :1] = False")]),
    Mutant("top_p_unsorted", "sums the probabilities in vocabulary order instead of sorting them first",
           [("sorted_probs, order = probs.sort(dim=-1, descending=True)",
             "sorted_probs, order = probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)")]),
    Mutant("top_p_on_logits", "compares the cumulative sum of logits, not probabilities, with p",
           [("probs = logits.float().softmax(dim=-1)\n    sorted_probs", "probs = logits.float()\n    sorted_probs")]),
    Mutant("top_p_no_validation", "accepts p outside (0, 1]",
           [('    if not 0 < p <= 1:\n        raise ValueError(f"top_p must be in (0, 1], got {p}")\n    if p == 1:',
             "    if p >= 1:")]),
    # min-p
    Mutant("min_p_against_one", "compares probabilities with min_p itself instead of min_p times the top probability",
           [(THRESHOLD, "threshold = torch.full_like(probs[..., :1], min_p)")]),
    Mutant("min_p_on_logits", "compares logits with min_p times the top logit",
           [("return logits.masked_fill(probs < threshold, float(\"-inf\"))",
             "return logits.masked_fill(logits < min_p * logits.amax(dim=-1, keepdim=True), float(\"-inf\"))")]),
    # repetition penalty
    Mutant("penalty_multiplies_positive", "multiplies every seen logit by the penalty (a positive logit grows)",
           [(PENALISED, "penalised = logits * penalty")]),
    Mutant("penalty_signs_swapped", "divides negative logits and multiplies positive ones",
           [(PENALISED, "penalised = torch.where(logits < 0, logits / penalty, logits * penalty)")]),
    Mutant("penalty_per_occurrence", "applies the penalty once per occurrence of a token instead of once per token",
           [(SEEN, "    for column in input_ids.unbind(dim=1):  # once per occurrence\n"
                   "        picked = logits.gather(1, column[:, None])\n"
                   "        logits = logits.scatter(1, column[:, None], torch.where(picked < 0, picked * penalty, picked / penalty))\n"
                   "    return logits\n" + SEEN)]),
    Mutant("penalty_all_rows", "penalises a token in every row when any row has seen it",
           [(SEEN, "    seen = torch.zeros_like(logits, dtype=torch.bool)\n    seen[:, input_ids.flatten()] = True\n")]),
    Mutant("penalty_accepts_zero", "accepts a penalty of 0",
           [("if penalty <= 0:", "if penalty < 0:")]),
    # temperature and the chain
    Mutant("temperature_multiplies", "multiplies the logits by the temperature",
           [("return logits / temperature", "return logits * temperature")]),
    Mutant("temperature_after_filters", "applies the temperature after the filters instead of before them",
           [(CHAIN, "    logits = top_k_filter(logits, top_k)\n    logits = top_p_filter(logits, top_p)\n"
                    "    logits = min_p_filter(logits, min_p)\n    logits = apply_temperature(logits, temperature)\n")]),
    Mutant("top_p_before_top_k", "runs top-p before top-k (transformers' order is top-k, then top-p)",
           [(CHAIN, "    logits = apply_temperature(logits, temperature)\n    logits = top_p_filter(logits, top_p)\n"
                    "    logits = top_k_filter(logits, top_k)\n    logits = min_p_filter(logits, min_p)\n")]),
    Mutant("sample_from_logits", "samples in proportion to the (clamped) logits instead of the softmax probabilities",
           [(SAMPLE_PROBS, "probs = logits.float().clamp(min=0)")]),
    Mutant("greedy_before_penalty", "at temperature 0 takes the argmax before the repetition penalty",
           [("    if temperature == 0:\n        return logits.argmax(dim=-1)\n", ""),
            ("    if input_ids is not None and repetition_penalty != 1.0:",
             "    if temperature == 0:\n        return logits.argmax(dim=-1)\n    if input_ids is not None and repetition_penalty != 1.0:")]),
    Mutant("generator_ignored", "draws from torch's global generator instead of the one given",
           [(DRAW, "return torch.multinomial(probs, num_samples=1).squeeze(-1)")]),
    Mutant("penalty_without_input_ids_check", "applies the penalty with the ids of the logits' argmax when input_ids is None",
           [("    if input_ids is not None and repetition_penalty != 1.0:\n        logits = apply_repetition_penalty(logits, input_ids, repetition_penalty)",
             "    if repetition_penalty != 1.0:\n        ids = input_ids if input_ids is not None else logits.argmax(dim=-1, keepdim=True)\n"
             "        logits = apply_repetition_penalty(logits, ids, repetition_penalty)")]),
]

ALTERNATIVES = [
    Mutant("top_p_ascending_like_transformers", "top-p as transformers writes it: ascending sort, remove where cumsum <= 1 - p, in the logits' dtype",
           [("    probs = logits.float().softmax(dim=-1)\n    sorted_probs, order = probs.sort(dim=-1, descending=True)\n"
             "    " + BEFORE + "\n    remove_sorted = before >= p\n    remove_sorted[..., :min_tokens_to_keep] = False\n",
             "    sorted_logits, order = torch.sort(logits, descending=False)\n"
             "    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)\n"
             "    remove_sorted = cumulative <= (1 - p)\n"
             "    remove_sorted[..., -min_tokens_to_keep:] = False\n")]),
    Mutant("penalty_gather_scatter", "the repetition penalty with gather and scatter, as transformers' processor",
           [(SEEN + "    " + PENALISED + "\n    return torch.where(seen, penalised, logits)",
             "    score = torch.gather(logits, 1, input_ids)\n"
             "    score = torch.where(score < 0, score * penalty, score / penalty)\n"
             "    return logits.scatter(1, input_ids, score)")]),
    Mutant("top_k_by_sorting", "top-k's threshold from a descending sort (values[..., k - 1]), as llama.cpp-style samplers",
           [("kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]",
             "kth_largest = logits.sort(dim=-1, descending=True).values[..., k - 1 : k]")]),
    Mutant("min_p_in_log_space", "min-p in log space: drop logits below max + log(min_p)",
           [("    probs = logits.float().softmax(dim=-1)\n    " + THRESHOLD + "\n    return logits.masked_fill(probs < threshold, float(\"-inf\"))",
             "    log_threshold = logits.float().amax(dim=-1, keepdim=True) + torch.tensor(min_p, device=logits.device).log()\n"
             "    return logits.masked_fill(logits.float() < log_threshold, float(\"-inf\"))")]),
    Mutant("exponential_race_draw", "draws with the exponential race (argmax of probs / Exp(1) noise), as vLLM's sampler",
           [(DRAW, "noise = torch.empty_like(probs).exponential_(1.0, generator=generator)\n"
                   "    return (probs / noise).argmax(dim=-1)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
