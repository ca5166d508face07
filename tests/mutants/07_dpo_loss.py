"""Mutants of module 07 (the DPO loss): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

SHIFT = "    logits = logits[:, :-1, :]  # position t predicts token t + 1\n    labels = labels[:, 1:]\n"
SUM = "    return (token_logps * mask).sum(dim=-1)"
MASK = "    mask = labels != ignore_index  # (batch, T - 1)"
LOGITS = "    logits = policy_logratios - reference_logratios"
SIGMOID = "        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing"
CHOSEN_REWARDS = "    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()"
REJECTED_REWARDS = "    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()"
# The reference's sequence_logps from the shift to the sum.
GATHER_AND_SUM = (SHIFT + MASK + "\n"
                  "    safe_labels = labels.masked_fill(~mask, 0)  # ignore_index may not be a valid index for gather\n"
                  "    log_probs = logits.log_softmax(dim=-1)  # (batch, T - 1, vocab)\n"
                  "    token_logps = log_probs.gather(dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)  # (batch, T - 1)\n"
                  + SUM)
# The DPO authors' _get_batch_logps (eric-mitchell/direct-preference-optimization), with ignore_index for -100.
DPO_AUTHORS_LOGPS = ("    labels = labels[:, 1:]{clone}\n"
                     "    logits = logits[:, :-1, :]\n"
                     "    loss_mask = labels != ignore_index\n"
                     "    labels[labels == ignore_index] = 0  # dummy token; the mask drops it\n"
                     "    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)\n"
                     "    return (per_token_logps * loss_mask).sum(-1)")
# transformers' ForCausalLMLoss: pad the labels with ignore_index and shift them, keep every logit.
TRANSFORMERS_LOSS = ("    shift_labels = F.pad(labels, (0, 1), value=ignore_index)[:, 1:]  # the last position predicts nothing\n"
                     "    nll = F.cross_entropy({logits}.transpose(1, 2), shift_labels, ignore_index=ignore_index, reduction='none')\n"
                     "    return -nll.sum(dim=-1)")

MUTANTS = [
    # sequence_logps
    Mutant("no_shift", "forgets the one-token shift: logits[:, t] scores labels[:, t]",
           [(SHIFT, "")]),
    Mutant("shift_labels_only_wrong_way", "shifts both by dropping the first logit and the first label (no relative shift)",
           [(SHIFT, "    logits = logits[:, 1:, :]\n    labels = labels[:, 1:]\n")]),
    Mutant("mean_over_tokens", "averages the token log-probabilities instead of summing them",
           [(SUM, "    return (token_logps * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)")]),
    Mutant("ignore_index_not_masked", "gathers at ignored positions and sums everything (counts the prompt and padding)",
           [(SUM, "    return token_logps.sum(dim=-1)")]),
    Mutant("hardcoded_minus_100", "masks -100 whatever ignore_index says",
           [(MASK, "    mask = labels != -100")]),
    Mutant("log_softmax_wrong_dim", "normalises over the sequence instead of the vocabulary",
           [("    log_probs = logits.log_softmax(dim=-1)", "    log_probs = logits.log_softmax(dim=1)")]),
    Mutant("probabilities_not_logs", "sums softmax probabilities instead of log-probabilities",
           [("    log_probs = logits.log_softmax(dim=-1)", "    log_probs = logits.softmax(dim=-1)")]),
    # dpo_loss
    Mutant("margin_sign_swapped", "subtracts the policy log-ratio from the reference's (the loss pushes the wrong way)",
           [(LOGITS, "    logits = reference_logratios - policy_logratios")]),
    Mutant("reference_forgotten", "leaves the reference log-ratio out of the margin",
           [(LOGITS, "    logits = policy_logratios")]),
    Mutant("beta_outside_logsigmoid", "multiplies the loss by beta instead of the margin inside the sigmoid",
           [(SIGMOID, "        losses = -beta * F.logsigmoid(logits) * (1 - label_smoothing) - beta * F.logsigmoid(-logits) * label_smoothing")]),
    Mutant("unstable_log_sigmoid", "computes -log(sigmoid(x)), which is inf once sigmoid underflows",
           [(SIGMOID, "        losses = -torch.log(torch.sigmoid(beta * logits)) * (1 - label_smoothing) - torch.log(torch.sigmoid(-beta * logits)) * label_smoothing")]),
    Mutant("label_smoothing_swapped", "weights the label by label_smoothing and the flipped label by 1 - label_smoothing",
           [(SIGMOID, "        losses = -F.logsigmoid(beta * logits) * label_smoothing - F.logsigmoid(-beta * logits) * (1 - label_smoothing)")]),
    Mutant("label_smoothing_ignored", "drops the flipped-label term",
           [(SIGMOID, "        losses = -F.logsigmoid(beta * logits)")]),
    Mutant("ipo_target_beta", "regresses IPO's margin onto beta instead of 1 / (2 beta)",
           [("        losses = (logits - 1 / (2 * beta)) ** 2", "        losses = (logits - beta) ** 2")]),
    Mutant("hinge_without_beta", "forgets beta in the hinge",
           [("        losses = torch.relu(1 - beta * logits)", "        losses = torch.relu(1 - logits)")]),
    Mutant("rewards_not_detached", "returns rewards that still carry the graph",
           [(CHOSEN_REWARDS, "    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)"),
            (REJECTED_REWARDS, "    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)")]),
    Mutant("rewards_without_beta", "returns the log-ratios without beta as rewards",
           [(CHOSEN_REWARDS, "    chosen_rewards = (policy_chosen_logps - reference_chosen_logps).detach()"),
            (REJECTED_REWARDS, "    rejected_rewards = (policy_rejected_logps - reference_rejected_logps).detach()")]),
    Mutant("detached_the_wrong_side", "meaning to keep gradients out of the reference, detaches the policy log-ratio (the loss trains nothing)",
           [(LOGITS, "    logits = policy_logratios.detach() - reference_logratios")]),
    Mutant("reference_from_policy", "uses the policy's own detached log-probs as the reference (the margin is always 0)",
           [("    reference_logratios = reference_chosen_logps - reference_rejected_logps",
             "    reference_logratios = (policy_chosen_logps - policy_rejected_logps).detach()")]),
    Mutant("beta_zero_allowed", "accepts beta = 0 (checks beta < 0)",
           [("    if beta <= 0:", "    if beta < 0:")]),
    Mutant("label_smoothing_unchecked", "accepts any label_smoothing",
           [("    if not 0.0 <= label_smoothing <= 0.5:", "    if False:")]),
    Mutant("unknown_loss_type_is_hinge", "falls back to the hinge for an unknown loss_type",
           [("    if loss_type not in LOSS_TYPES:", "    if False:")]),
    # Well-known implementations that break the contract, named with the reason
    Mutant("dpo_authors_logps_without_clone", "the DPO authors' _get_batch_logps without its .clone(): labels[labels == -100] = 0 "
           "writes into the caller's labels, so the reference model's call on the same labels scores the prompt too",
           [(GATHER_AND_SUM, DPO_AUTHORS_LOGPS.format(clone=""))]),
    Mutant("transformers_loss_upcasts_to_float32", "transformers' ForCausalLMLoss calls logits.float(): float64 logits give a float32 "
           "result where the contract keeps logits.dtype",
           [(GATHER_AND_SUM, TRANSFORMERS_LOSS.format(logits="logits.float()"))]),
]

ALTERNATIVES = [
    Mutant("cross_entropy", "sequence_logps as minus the per-token cross-entropy with ignore_index",
           [("    mask = labels != ignore_index  # (batch, T - 1)\n"
             "    safe_labels = labels.masked_fill(~mask, 0)  # ignore_index may not be a valid index for gather\n"
             "    log_probs = logits.log_softmax(dim=-1)  # (batch, T - 1, vocab)\n"
             "    token_logps = log_probs.gather(dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)  # (batch, T - 1)\n"
             "    return (token_logps * mask).sum(dim=-1)",
             "    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=ignore_index, reduction='none')  # (batch, T - 1)\n"
             "    return -nll.sum(dim=-1)")]),
    Mutant("where_mask", "masks with torch.where and gathers from logits minus logsumexp",
           [("    log_probs = logits.log_softmax(dim=-1)  # (batch, T - 1, vocab)\n"
             "    token_logps = log_probs.gather(dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)  # (batch, T - 1)\n"
             "    return (token_logps * mask).sum(dim=-1)",
             "    picked = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)\n"
             "    return torch.where(mask, picked, torch.zeros_like(picked)).sum(dim=-1)")]),
    Mutant("softplus_and_rewards_first", "rewards first, the sigmoid loss as softplus of their difference, the hinge with clamp",
           [(SIGMOID,
             "        margin = beta * (policy_chosen_logps - reference_chosen_logps) - beta * (policy_rejected_logps - reference_rejected_logps)\n"
             "        losses = (1 - label_smoothing) * F.softplus(-margin) + label_smoothing * F.softplus(margin)"),
            ("        losses = torch.relu(1 - beta * logits)", "        losses = (1 - beta * logits).clamp(min=0)")]),
    # Conventions of public code bases (written here from their description)
    Mutant("dpo_authors_preference_loss", "as the DPO authors' code: _get_batch_logps (labels cloned, ignored ones set to a dummy 0 "
           "in place, masked after the gather) and preference_loss's `ipo` flag, pi_logratios - ref_logratios",
           [(GATHER_AND_SUM, DPO_AUTHORS_LOGPS.format(clone=".clone()")),
            ("    if loss_type == \"sigmoid\":", "    ipo = loss_type == \"ipo\"\n    if loss_type == \"sigmoid\" and not ipo:"),
            ("    elif loss_type == \"ipo\":", "    elif ipo:")]),
    Mutant("trl_roll_and_logratios_per_answer", "as TRL: labels rolled by one (torch.roll) instead of sliced, token log-probs as the "
           "gathered logit minus logsumexp row by row (selective_log_softmax), zeroed where masked; logits = "
           "(chosen - ref_chosen) - (rejected - ref_rejected)",
           [(GATHER_AND_SUM,
             "    labels = torch.roll(labels, shifts=-1, dims=1)  # labels[:, t] is now the token logits[:, t] predicts\n"
             "    mask = labels != ignore_index\n"
             "    mask[:, -1] = False  # the last logits predict past the end\n"
             "    index = labels.masked_fill(~mask, 0).unsqueeze(-1)\n"
             "    selected = torch.gather(logits, dim=-1, index=index).squeeze(-1)\n"
             "    logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # one row at a time, as TRL\n"
             "    per_token_logps = (selected - logsumexp).masked_fill(~mask, 0)\n"
             "    return per_token_logps.sum(dim=-1)"),
            (LOGITS, "    chosen_logratios = policy_chosen_logps - reference_chosen_logps\n"
                     "    rejected_logratios = policy_rejected_logps - reference_rejected_logps\n"
                     "    logits = chosen_logratios - rejected_logratios")]),
    Mutant("transformers_pad_shift", "as transformers' ForCausalLMLoss (in the logits' own dtype): the labels padded with ignore_index "
           "and shifted left, cross-entropy over every position with reduction='none', summed per row",
           [(GATHER_AND_SUM, TRANSFORMERS_LOSS.format(logits="logits"))]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "transformers_loss_upcasts_to_float32": "it differs only for half-precision logits; the public tests use float32 ones, the hidden suite bfloat16 too",
}
