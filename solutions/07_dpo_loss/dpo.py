"""Module 07: the DPO loss, preference tuning without a reward model or reinforcement learning.

Direct Preference Optimization trains a policy on pairs (prompt, chosen answer, rejected answer) with
a logistic loss on how much more the policy, relative to a frozen reference model, prefers the chosen
answer. Two pieces: `sequence_logps` turns a causal LM's logits into the log-probability of each answer,
`dpo_loss` turns four such numbers per pair into a loss. Conventions are those of TRL's `DPOTrainer`.
Read docs/07_dpo_loss.md first.
"""

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Sum of the log-probabilities a causal LM gives to the label tokens of each sequence.

    A causal LM's logits at position t predict the token at position t + 1, so `logits[:, :-1]` score
    `labels[:, 1:]` (the same shift transformers' causal-LM loss makes). Label positions equal to
    `ignore_index` (the prompt, padding) add nothing.

        logps[b] = sum over t with labels[b, t+1] != ignore_index of log_softmax(logits[b, t])[labels[b, t+1]]

    Args:
        logits: `(batch, T, vocab)`, the model's output for the whole sequence (prompt + answer).
        labels: `(batch, T)` integer token ids aligned with the *input* (not yet shifted);
            `ignore_index` where a token must not count.
        ignore_index: the label value to skip (-100 as in transformers, or e.g. a pad token id).

    Returns:
        `(batch,)` in `logits.dtype`: a *sum* over tokens, not a mean (transformers' `loss` is the
        mean of the negative over all counted tokens of the batch). A row with no counted token gives 0.
        Low-precision logits should be cast to float32 before the call, as TRL does.
    """
    ### BEGIN SOLUTION
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits (batch, T, vocab) and labels (batch, T) do not match: got {tuple(logits.shape)} and {tuple(labels.shape)}")
    logits = logits[:, :-1, :]  # position t predicts token t + 1
    labels = labels[:, 1:]
    mask = labels != ignore_index  # (batch, T - 1)
    safe_labels = labels.masked_fill(~mask, 0)  # ignore_index may not be a valid index for gather
    log_probs = logits.log_softmax(dim=-1)  # (batch, T - 1, vocab)
    token_logps = log_probs.gather(dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)  # (batch, T - 1)
    return (token_logps * mask).sum(dim=-1)
    ### END SOLUTION


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of each preference pair, and the implicit rewards of both answers.

    Every argument `*_logps` is `(batch,)`, the output of `sequence_logps` for the chosen or rejected
    answer under the policy (trained) or the reference (frozen) model. With

        logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)

    the loss of each pair is, by `loss_type`:
        "sigmoid" (DPO; cDPO when label_smoothing > 0):
            -logsigmoid(beta * logits) * (1 - label_smoothing) - logsigmoid(-beta * logits) * label_smoothing
        "ipo":    (logits - 1 / (2 * beta)) ** 2
        "hinge":  relu(1 - beta * logits)            (SLiC)
    `label_smoothing` (the probability that a label is flipped) only enters "sigmoid".

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, each `(batch,)`: the per-pair losses (take the
        mean to train), and the implicit rewards `beta * (policy - reference)` of the chosen and the
        rejected answers, detached (they are for logging, not for gradients).

    Raises:
        ValueError: unknown `loss_type`, `beta <= 0`, or `label_smoothing` outside [0, 0.5].
    """
    ### BEGIN SOLUTION
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}")

    # How much more the policy prefers chosen over rejected than the reference does.
    policy_logratios = policy_chosen_logps - policy_rejected_logps
    reference_logratios = reference_chosen_logps - reference_rejected_logps
    logits = policy_logratios - reference_logratios

    if loss_type == "sigmoid":
        # Bradley-Terry likelihood of the label, and of the flipped label with probability label_smoothing.
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "ipo":
        # IPO regresses the log-ratio gap onto 1 / (2 beta) instead of pushing it to infinity.
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * logits)

    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
    ### END SOLUTION
