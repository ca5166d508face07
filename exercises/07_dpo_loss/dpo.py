"""Module 07: the DPO loss, preference tuning without a reward model or reinforcement learning.

Direct Preference Optimization trains a policy on pairs (prompt, chosen answer, rejected answer) with
a logistic loss on how much more the policy, relative to a frozen reference model, prefers the chosen
answer. Two pieces: `sequence_logps` turns a causal LM's logits into the log-probability of each answer,
`dpo_loss` turns four such numbers per pair into a loss. Conventions are those of TRL's `DPOTrainer`.
Read docs/07_dpo_loss.md first.
"""

import torch
import torch.nn.functional as F
from grader import NotImplementedYet

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
    raise NotImplementedYet("sequence_logps")


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
    raise NotImplementedYet("dpo_loss")
