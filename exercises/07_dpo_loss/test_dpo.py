"""Public tests of module 07 (the DPO loss). Run: pytest exercises/07_dpo_loss

These check the essentials quickly on small tensors; the grader's hidden tests check more (a real
transformers causal LM, padding, every loss type, gradients, a few training steps). Read
docs/07_dpo_loss.md.
"""

import math

import torch

from grader.harness.checks import assert_close, assert_raises, expect


def logps_by_hand(logits, labels, ignore_index=-100):
    """Gather-and-sum, one token at a time, in float64: logits[b, t] scores labels[b, t + 1]."""
    log_probs = logits.double().log_softmax(dim=-1)
    out = torch.zeros(logits.shape[0], dtype=torch.float64)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            token = int(labels[b, t + 1])
            if token != ignore_index:
                out[b] += log_probs[b, t, token]
    return out


def random_logps(batch=6):
    """Four (batch,) tensors of sequence log-probabilities: policy chosen/rejected, reference chosen/rejected."""
    return [-(torch.rand(batch) * 20 + 1) for _ in range(4)]


def test_sequence_logps_shifts_and_sums(impl):
    """sequence_logps sums log_softmax(logits[:, t])[labels[:, t + 1]] over the sequence: one value per row."""
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    unshifted = logits.double().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
    assert_close(
        impl.sequence_logps(logits, labels), logps_by_hand(logits, labels), what="sequence_logps(logits, labels)", dtype=torch.float32,
        mistakes={"logits[:, t] must score labels[:, t + 1]: shift logits and labels by one position": unshifted},
    )


def test_sequence_logps_skips_ignore_index(impl):
    """Label positions equal to ignore_index (the prompt, padding) add nothing to the sum."""
    logits = torch.randn(2, 6, 5)
    labels = torch.randint(0, 5, (2, 6))
    labels[:, :3] = -100  # the prompt
    labels[1, 5] = -100  # padding
    assert_close(impl.sequence_logps(logits, labels), logps_by_hand(logits, labels), what="sequence_logps with -100 labels", dtype=torch.float32)
    labels[labels == -100] = 4  # the same, with token 4 as the padding / ignore index
    assert_close(impl.sequence_logps(logits, labels, ignore_index=4), logps_by_hand(logits, labels, ignore_index=4),
                 what="sequence_logps(..., ignore_index=4)", dtype=torch.float32)


def test_sigmoid_loss_matches_the_formula(impl):
    """loss_type="sigmoid": -logsigmoid(beta * logits), logits = (pc - pr) - (rc - rr); rewards beta * (policy - reference)."""
    pc, pr, rc, rr = random_logps()
    beta = 0.2
    logits = ((pc - pr) - (rc - rr)).double()
    losses, chosen_rewards, rejected_rewards = impl.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert_close(losses, torch.log1p(torch.exp(-beta * logits)), what="dpo_loss(...)[0] with beta=0.2", dtype=torch.float32,
                 mistakes={"the reference log-ratio (rc - rr) is missing from logits": torch.log1p(torch.exp(-beta * (pc - pr).double())),
                           "the sign is flipped: the loss must fall as the chosen answer gains": torch.log1p(torch.exp(beta * logits))})
    assert_close(chosen_rewards, beta * (pc - rc).double(), what="chosen_rewards", dtype=torch.float32)
    assert_close(rejected_rewards, beta * (pr - rr).double(), what="rejected_rewards", dtype=torch.float32)
    at_start = impl.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta)[0]  # policy == reference, as at step 0
    assert_close(at_start, torch.full((6,), math.log(2.0), dtype=torch.float64), what="the sigmoid loss when policy equals reference (log 2)", dtype=torch.float32)


def test_label_smoothing_ipo_and_hinge(impl):
    """label_smoothing mixes in the flipped label; "ipo" is (logits - 1/(2 beta))**2; "hinge" is relu(1 - beta * logits)."""
    pc, pr, rc, rr = random_logps()
    beta, ls = 0.5, 0.2
    logits = ((pc - pr) - (rc - rr)).double()
    smoothed = -(1 - ls) * torch.nn.functional.logsigmoid(beta * logits) - ls * torch.nn.functional.logsigmoid(-beta * logits)
    assert_close(impl.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)[0], smoothed, what="sigmoid loss with label_smoothing=0.2", dtype=torch.float32)
    assert_close(impl.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")[0], (logits - 1 / (2 * beta)) ** 2, what="ipo loss with beta=0.5", dtype=torch.float32)
    assert_close(impl.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")[0], torch.relu(1 - beta * logits), what="hinge loss with beta=0.5", dtype=torch.float32)


def test_gradients_favour_chosen_and_rewards_are_detached(impl):
    """The loss falls when the chosen log-prob rises and the rejected one falls; the rewards carry no gradient."""
    pc, pr = [x.requires_grad_() for x in random_logps(4)[:2]]
    rc, rr = random_logps(4)[2:]
    losses, chosen_rewards, rejected_rewards = impl.dpo_loss(pc, pr, rc, rr)
    losses.sum().backward()
    expect(bool((pc.grad < 0).all()), f"d loss / d policy_chosen_logps should be negative (raise the chosen answer), got {pc.grad}")
    expect(bool((pr.grad > 0).all()), f"d loss / d policy_rejected_logps should be positive (lower the rejected answer), got {pr.grad}")
    expect(not chosen_rewards.requires_grad and not rejected_rewards.requires_grad, "the rewards must be detached (.detach())")


def test_bad_arguments_raise(impl):
    """Unknown loss_type, beta <= 0 and label_smoothing outside [0, 0.5] raise ValueError."""
    pc, pr, rc, rr = random_logps(2)
    assert_raises(ValueError, impl.dpo_loss, pc, pr, rc, rr, loss_type="kto", when='for loss_type="kto"')
    assert_raises(ValueError, impl.dpo_loss, pc, pr, rc, rr, beta=0.0, when="for beta=0")
    assert_raises(ValueError, impl.dpo_loss, pc, pr, rc, rr, label_smoothing=0.6, when="for label_smoothing=0.6")


def test_sigmoid_loss_stays_finite_for_large_margins(impl):
    """A margin of -1000 gives a loss of about beta * 1000, not inf: log(sigmoid(z)) is computed stably (logsigmoid)."""
    pc, pr = torch.tensor([-1100.0, -10.0]), torch.tensor([-100.0, -1010.0])
    rc, rr = torch.zeros(2), torch.zeros(2)
    beta = 1.0
    logits = ((pc - pr) - (rc - rr)).double()  # -1000 and +1000
    losses = impl.dpo_loss(pc, pr, rc, rr, beta=beta)[0]
    truth = torch.nn.functional.softplus(-beta * logits)
    assert_close(losses, truth, what="dpo_loss with margins of -1000 and +1000", dtype=torch.float32,
                 mistakes={"-log(sigmoid(z)) overflows: sigmoid(-1000) is 0 in float32, so its log is -inf; use "
                           "torch.nn.functional.logsigmoid": lambda out: not bool(torch.isfinite(out).all())})
