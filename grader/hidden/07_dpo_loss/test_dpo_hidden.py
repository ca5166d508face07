"""Hidden suite of module 07 (the DPO loss): a direct gather-and-sum and transformers' causal-LM loss are
the oracles of `sequence_logps`; the formulas of the contract (TRL's `dpo_loss` conventions), written
here in float64, are the oracles of `dpo_loss`; a few training steps of a tiny Llama check the effect.

Run: pytest grader/hidden/07_dpo_loss --impl solutions   (or --impl path/to/submission)

The learner's functions get copies of the inputs (`copies`), and expected values come from the originals,
computed after the learner's call, so nothing the learner's code could find in memory holds the answer yet;
only the training test hands over its own labels, and checks them.
"""

import copy
import math

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, tolerance_as_good_as
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.loss.loss_utils import ForCausalLMLoss

VOCAB = 48
LOSS_TYPES = ["sigmoid", "ipo", "hinge"]


# ---------------------------------------------------------------------------------------------------
# Truths, written independently of any implementation


def copies(*tensors):
    """Clones to hand to the learner's code: the test keeps the originals for its expected values."""
    return tuple(t.clone() for t in tensors)


def logps_by_hand(logits, labels, ignore_index=-100):
    """Gather-and-sum one token at a time, in float64: log_softmax(logits[b, t])[labels[b, t + 1]]."""
    log_probs = logits.detach().double().cpu().log_softmax(dim=-1)
    labels = labels.cpu()
    out = torch.zeros(labels.shape[0], dtype=torch.float64)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            token = int(labels[b, t + 1])
            if token != ignore_index:
                out[b] += log_probs[b, t, token]
    return out


def logps_float64(logits, labels, ignore_index=-100):
    """The same sum, vectorised and differentiable (float64), for gradients and training curves."""
    return logps_vectorised(logits.double(), labels, ignore_index)


def logps_vectorised(logits, labels, ignore_index=-100):
    """The same sum, vectorised, in the logits' dtype."""
    log_probs = logits.log_softmax(dim=-1)[:, :-1]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    picked = log_probs.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def logps_tolerance(logits, labels, truth, ignore_index=-100):
    """The logits' dtype's tolerance, widened to what torch's own gather-and-sum in that dtype needs against the float64
    `truth`: a row's sum can be far smaller than its terms (one token of probability near 1 gives -1e-4 from logits
    of size 10), and its rounding is the terms'."""
    return tolerance_as_good_as(logps_vectorised(logits.detach(), labels, ignore_index), truth, logits.dtype, logits.device)


def sequence_mistakes(logits, labels, ignore_index=-100):
    """What the usual mistakes of sequence_logps give, to name them in a failure."""
    log_probs = logits.detach().double().cpu().log_softmax(dim=-1)
    labels = labels.cpu()
    shifted, mask = labels[:, 1:], labels[:, 1:] != ignore_index
    safe = shifted.masked_fill(~mask, 0)
    picked = log_probs[:, :-1].gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    full_mask = labels != ignore_index
    unshifted = log_probs.gather(-1, labels.masked_fill(~full_mask, 0).unsqueeze(-1)).squeeze(-1)
    return {
        "logits[:, t] predicts labels[:, t + 1]: drop the last logit and the first label before gathering": (unshifted * full_mask).sum(-1),
        "you averaged over the tokens; DPO needs the sum of the token log-probabilities": (picked * mask).sum(-1) / mask.sum(-1).clamp(min=1),
        "positions labelled ignore_index were counted (as the log-probability of token 0): mask them out": picked.sum(-1),
        "you took log_softmax over the wrong dimension: it must normalise over the vocabulary (dim=-1)": (
            logits.detach().double().cpu().log_softmax(dim=1)[:, :-1].gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask
        ).sum(-1),
    }


def loss_truth(pc, pr, rc, rr, beta, label_smoothing=0.0, loss_type="sigmoid"):
    """The contract's formulas in float64 (TRL's dpo_loss): logits = (pc - pr) - (rc - rr)."""
    pc, pr, rc, rr = (x.double() for x in (pc, pr, rc, rr))
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        # -log sigmoid(z) = log(1 + exp(-z)) = softplus(-z)
        softplus = torch.nn.functional.softplus
        return (1 - label_smoothing) * softplus(-beta * logits) + label_smoothing * softplus(beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    return torch.clamp(1 - beta * logits, min=0)


def loss_mistakes(pc, pr, rc, rr, beta, label_smoothing=0.0, loss_type="sigmoid"):
    pc, pr, rc, rr = (x.double() for x in (pc, pr, rc, rr))
    logits = (pc - pr) - (rc - rr)
    softplus = torch.nn.functional.softplus
    if loss_type == "sigmoid":
        return {
            "the sign is flipped: the loss must fall as the chosen answer gains on the rejected one": loss_truth(pr, pc, rr, rc, beta, label_smoothing),
            "the reference log-ratio (reference_chosen - reference_rejected) is missing from logits": loss_truth(pc, pr, 0 * rc, 0 * rr, beta, label_smoothing),
            "beta multiplies the loss instead of the logits inside the sigmoid": beta * ((1 - label_smoothing) * softplus(-logits) + label_smoothing * softplus(logits)),
            "label smoothing is the wrong way round: (1 - ls) goes with logsigmoid(beta * logits)": loss_truth(pc, pr, rc, rr, beta, 1 - label_smoothing),
        }
    if loss_type == "ipo":
        return {
            "IPO's target is 1 / (2 * beta), not beta": (logits - beta) ** 2,
            "IPO's target is 1 / (2 * beta), not 1 / beta": (logits - 1 / beta) ** 2,
            "the reference log-ratio is missing from logits": (pc - pr - 1 / (2 * beta)) ** 2,
        }
    return {
        "the hinge is relu(1 - beta * logits): beta is missing": torch.clamp(1 - logits, min=0),
        "the hinge is relu(1 - beta * logits), not relu(beta * (1 - logits))": torch.clamp(beta * (1 - logits), min=0),
        "the reference log-ratio is missing from logits": torch.clamp(1 - beta * (pc - pr), min=0),
    }


def preference_logps(batch, device, dtype=torch.float32, exact=True):
    """Four (batch,) sequence log-probabilities: policy chosen/rejected near the reference's.

    With exact=True they are multiples of 1/64 below 64 in magnitude, so every difference is exact in
    float32 whatever the order of subtraction; the only rounding left is the loss's own.
    """
    reference = -(torch.rand(2, batch) * 30 + 2)
    policy = reference + torch.randn(2, batch) * 4
    values = torch.cat([policy, reference])
    if exact:
        values = torch.round(values * 64) / 64
    return [v.to(device=device, dtype=dtype) for v in values]


def tiny_llama(device, layers=2):
    """A LlamaForCausalLM with random weights, built from a config (nothing is downloaded)."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="eager",
    )
    return LlamaForCausalLM(config).to(device)


def prompt_and_answer(batch, prompt_lengths, total, device):
    """Token ids (batch, total) and labels with the prompt (its length per row) set to -100."""
    ids = torch.randint(1, VOCAB, (batch, total))
    labels = ids.clone()
    for b, length in enumerate(prompt_lengths):
        labels[b, :length] = -100
    return ids.to(device), labels.to(device)


# ---------------------------------------------------------------------------------------------------
# sequence_logps


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 2, 5), (3, 7, 11), (4, 16, 50)], ids=str)
def test_sequence_logps_matches_gather_and_sum(impl, device, dtype, shape):
    """sequence_logps equals a token-by-token gather-and-sum of log_softmax (shifted by one), in the logits' dtype."""
    batch, length, vocab = shape
    logits = (torch.randn(shape) * 3).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (batch, length))
    labels[:, : length // 3] = -100
    labels = labels.to(device)
    out = impl.sequence_logps(*copies(logits, labels))
    expected, mistakes = logps_by_hand(logits, labels), sequence_mistakes(logits, labels)
    assert_close(out, expected, what=f"sequence_logps for {dtype} logits of shape {shape}", dtype=dtype, mistakes=mistakes,
                 tol=logps_tolerance(logits, labels, expected))


@pytest.mark.points(4)
def test_sequence_logps_matches_transformers_causal_lm_loss(impl, device):
    """On a tiny LlamaForCausalLM, sequence_logps is minus the model's loss times its token count: a sum, not a mean."""
    model = tiny_llama(device)
    ids, labels = prompt_and_answer(3, [2, 4, 6], 12, device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # the input; the model's losses (the expected values) come after
    logps = impl.sequence_logps(*copies(logits, labels))
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        per_row = [model(input_ids=ids[b : b + 1], labels=labels[b : b + 1]).loss for b in range(3)]
    counted = (labels[:, 1:] != -100).sum(-1)  # tokens each row's loss averages over
    mistakes = sequence_mistakes(logits, labels)
    # transformers' loss is the mean negative log-likelihood over the counted tokens.
    expected_rows = -torch.stack(per_row) * counted
    assert_close(logps, expected_rows, what="sequence_logps against -(LlamaForCausalLM loss of each row) x (its counted tokens)", mistakes=mistakes)
    assert_close(-logps.sum() / counted.sum(), out.loss, what="-sum(sequence_logps) / (counted tokens), against the batch's LlamaForCausalLM loss")


@pytest.mark.points(3)
@pytest.mark.parametrize("ignore_index", [-1, 0, 7])
def test_custom_ignore_index_matches_transformers(impl, device, ignore_index):
    """ignore_index (here a pad id, possibly a real token id) is skipped exactly as transformers' ForCausalLMLoss skips it."""
    model = tiny_llama(device)
    ids, labels = prompt_and_answer(2, [3, 1], 10, device)
    labels[labels == -100] = ignore_index
    labels[1, -3:] = ignore_index  # padding at the end of the second row
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    logps = impl.sequence_logps(*copies(logits, labels), ignore_index=ignore_index)
    counted = (labels[:, 1:] != ignore_index).sum()
    expected = -ForCausalLMLoss(logits, labels, VOCAB, ignore_index=ignore_index) * counted
    by_hand, mistakes = logps_by_hand(logits, labels, ignore_index), sequence_mistakes(logits, labels, ignore_index)
    assert_shape(logps, (2,), what=f"sequence_logps(..., ignore_index={ignore_index})")
    assert_close(logps.sum(), expected, what=f"the sum of sequence_logps(..., ignore_index={ignore_index}) against transformers' ForCausalLMLoss")
    assert_close(logps, by_hand, what=f"sequence_logps(..., ignore_index={ignore_index})", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(3)
def test_right_padding_changes_nothing(impl, device):
    """A right-padded batch (pad labels -100) gives each row the log-probability of that row run alone, unpadded."""
    model = tiny_llama(device)
    lengths, total, prompt = [9, 6, 11], 11, 3
    ids = torch.zeros(3, total, dtype=torch.long)
    attention_mask = torch.zeros(3, total, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, VOCAB, (n,))
        attention_mask[b, :n] = 1
    labels = ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt] = -100
    ids, attention_mask, labels = ids.to(device), attention_mask.to(device), labels.to(device)
    with torch.no_grad():
        padded_logits = model(input_ids=ids, attention_mask=attention_mask).logits
        alone_logits = [model(input_ids=ids[b : b + 1, :n]).logits for b, n in enumerate(lengths)]
    padded = impl.sequence_logps(*copies(padded_logits, labels))
    alone = torch.stack([impl.sequence_logps(*copies(logits, labels[b : b + 1, :n]))[0] for b, (logits, n) in enumerate(zip(alone_logits, lengths))])
    expected = torch.stack([logps_by_hand(logits, labels[b : b + 1, :n])[0] for b, (logits, n) in enumerate(zip(alone_logits, lengths))])
    assert_close(alone, expected, what="sequence_logps of each row alone", dtype=torch.float32)
    assert_close(padded, expected, what="sequence_logps of the right-padded batch", dtype=torch.float32,
                 mistakes={"padding was counted: positions labelled -100 must add nothing": lambda out: bool((out < expected.to(out) - 1e-3).any())})


@pytest.mark.points(2)
def test_left_padding_and_garbage_logits(impl, device):
    """Left padding: whatever the logits at padded positions hold (even huge values), they add nothing."""
    logits = torch.randn(2, 9, 13)
    labels = torch.randint(0, 13, (2, 9))
    labels[0, :4] = -100  # left padding + prompt
    labels[1, :2] = -100
    clean = logits.clone()  # the reference is computed from the logits before the garbage
    logits[0, :3] = 1e4 * torch.randn(3, 13)  # positions 0..2 score labels 1..3, all ignored
    logits[1, 0] = -1e4
    out = impl.sequence_logps(logits.to(device, copy=True), labels.to(device, copy=True))
    reference = logps_by_hand(clean, labels)
    mistakes = sequence_mistakes(logits, labels)
    assert_close(out, reference, what="sequence_logps with garbage logits at ignored positions", dtype=torch.float32, mistakes=mistakes)


@pytest.mark.points(1)
def test_only_label_positions_one_to_end_count(impl, device):
    """labels[:, 0] is never scored and logits[:, -1] score nothing (they predict past the end)."""
    logits = torch.randn(3, 6, 10, device=device)
    labels = torch.randint(0, 10, (3, 6), device=device)
    labels2, logits2 = labels.clone(), logits.clone()
    labels2[:, 0] = (labels[:, 0] + 1) % 10
    logits2[:, -1] = torch.randn(3, 10, device=device) * 10
    base = impl.sequence_logps(*copies(logits, labels))
    assert_close(impl.sequence_logps(logits2, labels2), base.detach(), what="sequence_logps after changing labels[:, 0] and logits[:, -1]",
                 mistakes={"logits[:, t] predicts labels[:, t + 1]: shift by one": lambda out: True})


@pytest.mark.points(1)
def test_a_row_with_nothing_to_score_gives_zero(impl, device):
    """A row whose labels are all ignore_index gives exactly 0 (not NaN), and the other rows are unaffected."""
    logits = torch.randn(2, 5, 8, device=device)
    labels = torch.randint(0, 8, (2, 5), device=device)
    labels[0] = -100
    out = impl.sequence_logps(*copies(logits, labels))
    expected = logps_by_hand(logits, labels)
    assert_close(out, expected, what="sequence_logps with an all-ignored first row", dtype=torch.float32,
                 mistakes={"an all-ignored row gave NaN: a mean over zero tokens? DPO sums": lambda out: bool(torch.isnan(out).any())})


@pytest.mark.points(2)
def test_sequence_logps_gradient(impl, device):
    """The gradient with respect to the logits equals that of the float64 gather-and-sum (zero at ignored positions)."""
    logits = torch.randn(3, 7, 9, device=device, requires_grad=True)
    labels = torch.randint(0, 9, (3, 7), device=device)
    labels[:, :2] = -100
    labels[2, 5:] = -100
    weights = torch.randn(3, device=device)
    (impl.sequence_logps(logits, labels.clone()) * weights).sum().backward()
    logits64 = logits.detach().double().requires_grad_()
    (logps_float64(logits64, labels) * weights.double()).sum().backward()
    assert logits.grad is not None, "sequence_logps gave no gradient for the logits: keep it differentiable (no .detach(), no argmax)"
    assert_close(logits.grad, logits64.grad, what="the gradient of sequence_logps with respect to the logits", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# dpo_loss: formulas


@pytest.mark.points(6)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_matches_the_formula(impl, device, loss_type, beta, dtype):
    """Each loss type equals its formula (TRL's conventions) for several beta, per pair, in the inputs' dtype."""
    pc, pr, rc, rr = preference_logps(16, device, dtype)
    losses, _, _ = impl.dpo_loss(*copies(pc, pr, rc, rr), beta=beta, loss_type=loss_type)
    expected, mistakes = loss_truth(pc, pr, rc, rr, beta, loss_type=loss_type), loss_mistakes(pc, pr, rc, rr, beta, loss_type=loss_type)
    assert_close(losses, expected, what=f"dpo_loss(..., beta={beta}, loss_type={loss_type!r}) losses", dtype=dtype, mistakes=mistakes)


@pytest.mark.points(3)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.25, 0.5])
def test_label_smoothing(impl, device, label_smoothing):
    """With label_smoothing the sigmoid loss mixes in the flipped pair: (1 - ls) * -logsigmoid(bz) + ls * -logsigmoid(-bz)."""
    pc, pr, rc, rr = preference_logps(16, device)
    losses, _, _ = impl.dpo_loss(*copies(pc, pr, rc, rr), beta=0.3, label_smoothing=label_smoothing)
    assert_close(losses, loss_truth(pc, pr, rc, rr, 0.3, label_smoothing), what=f"the sigmoid loss with label_smoothing={label_smoothing}",
                 dtype=torch.float32, mistakes=loss_mistakes(pc, pr, rc, rr, 0.3, label_smoothing))
    # cDPO: binary cross-entropy of sigmoid(beta * logits) against the soft target 1 - label_smoothing.
    logits = ((pc - pr) - (rc - rr)).double()
    soft_target = torch.full_like(logits, 1 - label_smoothing)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(0.3 * logits, soft_target, reduction="none")
    assert_close(losses, bce, what=f"the sigmoid loss with label_smoothing={label_smoothing} against BCE with target 1 - label_smoothing",
                 dtype=torch.float32)


@pytest.mark.points(2)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_sigmoid_loss_is_the_papers_bradley_terry_likelihood(impl, device, beta):
    """The sigmoid loss is the DPO paper's -log sigmoid(reward_chosen - reward_rejected), with the rewards it returns."""
    pc, pr, rc, rr = preference_logps(12, device)
    losses, chosen_rewards, rejected_rewards = impl.dpo_loss(*copies(pc, pr, rc, rr), beta=beta)
    # arXiv:2305.18290, eq. 7, written per answer: r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)).
    r_chosen, r_rejected = beta * (pc.double() - rc.double()), beta * (pr.double() - rr.double())
    paper = -torch.log(torch.sigmoid(r_chosen - r_rejected))  # float64: no underflow for these margins
    assert_close(losses, paper, what=f"dpo_loss(..., beta={beta}) against the paper's -log sigmoid(r_chosen - r_rejected)", dtype=torch.float32,
                 mistakes=loss_mistakes(pc, pr, rc, rr, beta))
    from_rewards = torch.nn.functional.softplus(-(chosen_rewards.double() - rejected_rewards.double()))
    assert_close(losses, from_rewards, what="the loss against -logsigmoid(chosen_rewards - rejected_rewards) of the rewards it returns", dtype=torch.float32,
                 mistakes={"chosen and rejected rewards are swapped": torch.nn.functional.softplus(chosen_rewards.double() - rejected_rewards.double())})


@pytest.mark.points(1)
def test_defaults(impl, device):
    """Without keyword arguments: beta=0.1, no label smoothing, loss_type="sigmoid"."""
    pc, pr, rc, rr = preference_logps(8, device)
    losses, chosen_rewards, _ = impl.dpo_loss(*copies(pc, pr, rc, rr))
    assert_close(losses, loss_truth(pc, pr, rc, rr, 0.1), what="dpo_loss with default arguments", dtype=torch.float32,
                 mistakes=loss_mistakes(pc, pr, rc, rr, 0.1))
    assert_close(chosen_rewards, 0.1 * (pc - rc).double(), what="chosen_rewards with the default beta", dtype=torch.float32)


@pytest.mark.points(2)
def test_landmarks_of_each_loss(impl, device):
    """Where policy equals reference the sigmoid loss is log 2; IPO is 0 at logits = 1/(2 beta); the hinge is 0 beyond 1/beta."""
    beta = 0.25
    ref = preference_logps(6, device, exact=True)[2:]
    zero_margin = impl.dpo_loss(ref[0].clone(), ref[1].clone(), ref[0], ref[1], beta=beta)[0]
    assert_close(zero_margin, torch.full((6,), math.log(2.0), dtype=torch.float64), what="the sigmoid loss at policy == reference", dtype=torch.float32)
    at_target = impl.dpo_loss(ref[0] + 1 / (2 * beta), ref[1], ref[0], ref[1], beta=beta, loss_type="ipo")[0]
    assert_close(at_target, torch.zeros(6, dtype=torch.float64), what="the IPO loss at logits = 1/(2 beta)", dtype=torch.float32,
                 mistakes={"IPO's target is 1 / (2 * beta)": lambda out: True})
    beyond = impl.dpo_loss(ref[0] + 1 / beta + 2, ref[1], ref[0], ref[1], beta=beta, loss_type="hinge")[0]
    assert_close(beyond, torch.zeros(6, dtype=torch.float64), what="the hinge loss at logits > 1/beta", dtype=torch.float32)


@pytest.mark.points(1)
def test_large_margins_stay_finite(impl, device):
    """beta * logits of +-1000 give finite losses (0 and 1000): use logsigmoid, not log(sigmoid(...))."""
    zeros = torch.zeros(2, device=device)
    pc = torch.tensor([1e4, -1e4], device=device)
    losses, _, _ = impl.dpo_loss(*copies(pc, zeros, zeros, zeros), beta=0.1)
    assert_close(losses, torch.tensor([0.0, 1000.0], dtype=torch.float64), what="the sigmoid loss for beta * logits = [1000, -1000]", dtype=torch.float32,
                 mistakes={"log(sigmoid(x)) underflows to log(0) = -inf: use torch.nn.functional.logsigmoid": lambda out: bool(torch.isinf(out).any())})


# ---------------------------------------------------------------------------------------------------
# dpo_loss: rewards and gradients


@pytest.mark.points(3)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_rewards_are_detached_log_ratios(impl, device, loss_type):
    """chosen/rejected rewards are beta * (policy - reference), without gradient, whatever the loss type."""
    pc, pr, rc, rr = preference_logps(10, device)
    pc.requires_grad_()
    pr.requires_grad_()
    losses, chosen_rewards, rejected_rewards = impl.dpo_loss(*copies(pc, pr, rc, rr), beta=0.5, loss_type=loss_type)
    assert_close(chosen_rewards, 0.5 * (pc - rc).double(), what="chosen_rewards", dtype=torch.float32,
                 mistakes={"beta is missing from the rewards": (pc - rc).detach(), "chosen and rejected rewards are swapped": 0.5 * (pr - rr).detach()})
    assert_close(rejected_rewards, 0.5 * (pr - rr).double(), what="rejected_rewards", dtype=torch.float32)
    for name, reward in (("chosen_rewards", chosen_rewards), ("rejected_rewards", rejected_rewards)):
        assert not reward.requires_grad and reward.grad_fn is None, f"{name} must be detached (they are for logging): call .detach()"
    assert losses.requires_grad, "the losses must keep their gradient with respect to the policy log-probabilities"


@pytest.mark.points(2)
def test_implicit_reward_accuracy_and_margin(impl, device):
    """The reward margin (chosen - rejected) is beta * logits, and reward accuracy (margin > 0) matches the pairs' ordering."""
    pc, pr, rc, rr = preference_logps(64, device)
    _, chosen_rewards, rejected_rewards = impl.dpo_loss(*copies(pc, pr, rc, rr), beta=0.2)
    margin = 0.2 * ((pc - pr) - (rc - rr)).double()
    assert_close(chosen_rewards - rejected_rewards, margin, what="the reward margin chosen_rewards - rejected_rewards", dtype=torch.float32)
    accuracy = (chosen_rewards > rejected_rewards).double().mean().cpu()
    expected = (margin > 0).double().mean().cpu()
    assert_close(accuracy, expected, what="the implicit reward accuracy mean(chosen_rewards > rejected_rewards)")


@pytest.mark.points(3)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradients_raise_chosen_and_lower_rejected(impl, device, loss_type):
    """Near policy == reference, d loss/d chosen < 0 and d loss/d rejected > 0; and the gradients equal the formula's."""
    beta = 0.5
    rc, rr = preference_logps(8, device)[2:]
    pc = (rc + 0.1 * torch.randn(8, device=device)).requires_grad_()
    pr = (rr + 0.1 * torch.randn(8, device=device)).requires_grad_()
    pc64, pr64 = pc.detach().double().requires_grad_(), pr.detach().double().requires_grad_()
    losses, _, _ = impl.dpo_loss(pc, pr, *copies(rc, rr), beta=beta, loss_type=loss_type)
    losses.sum().backward()
    loss_truth(pc64, pr64, rc, rr, beta, loss_type=loss_type).sum().backward()
    assert pc.grad is not None and pr.grad is not None, "dpo_loss gave no gradient to the policy log-probabilities"
    assert bool((pc.grad < 0).all()), f"{loss_type}: d loss / d policy_chosen_logps should be negative (push the chosen answer up), got {pc.grad.tolist()}"
    assert bool((pr.grad > 0).all()), f"{loss_type}: d loss / d policy_rejected_logps should be positive (push the rejected answer down), got {pr.grad.tolist()}"
    assert_close(pc.grad, pc64.grad, what=f"d loss / d policy_chosen_logps ({loss_type})", dtype=torch.float32)
    assert_close(pr.grad, pr64.grad, what=f"d loss / d policy_rejected_logps ({loss_type})", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# dpo_loss: bad arguments


@pytest.mark.points(3)
@pytest.mark.parametrize(
    "kwargs",
    [{"loss_type": "kto"}, {"loss_type": "dpo"}, {"beta": 0.0}, {"beta": -0.1}, {"label_smoothing": -0.1}, {"label_smoothing": 0.6},
     {"label_smoothing": 1.0}, {"loss_type": "ipo", "beta": 0.0}],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_bad_arguments_raise_value_error(impl, kwargs):
    """Unknown loss_type, beta <= 0 or label_smoothing outside [0, 0.5] raise ValueError with a message."""
    pc, pr, rc, rr = preference_logps(4, "cpu")
    assert_raises(ValueError, impl.dpo_loss, pc, pr, rc, rr, when=f"for dpo_loss(..., {kwargs})", **kwargs)


# ---------------------------------------------------------------------------------------------------
# End to end: a few DPO steps on a tiny policy


@pytest.mark.points(4)
def test_a_few_dpo_steps_widen_the_margin(impl, device):
    """A few Adam steps of a tiny Llama with sequence_logps + dpo_loss raise chosen over rejected against a frozen reference."""
    policy = tiny_llama(device, layers=1).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    pairs, prompt, answer = 6, 4, 5
    prompts = torch.randint(1, VOCAB, (pairs, prompt))
    chosen = torch.randint(1, VOCAB, (pairs, answer))
    rejected = torch.randint(1, VOCAB, (pairs, answer))

    def batch(answers):
        ids = torch.cat([prompts, answers], dim=1).to(device)
        labels = ids.clone()
        labels[:, :prompt] = -100
        return ids, labels

    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = batch(chosen), batch(rejected)
    kept = {"chosen": chosen_labels.clone(), "rejected": rejected_labels.clone()}  # the test's own copies
    steps = 4  # with lr 1e-2 the correct loss gives margins of about 8 nats after 4 steps, the minimum over pairs above 5

    def margins():
        """(policy - reference) log-ratio gap of chosen over rejected, measured with the test's own float64 sum."""
        with torch.no_grad():
            gap = [logps_float64(m(input_ids=i).logits, l) for m in (policy, reference) for i, l in ((chosen_ids, kept["chosen"]), (rejected_ids, kept["rejected"]))]
        return ((gap[0] - gap[1]) - (gap[2] - gap[3])).cpu()

    before = margins()  # order: the margins before training must be measured before the learner's steps move the policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses_seen = []
    for _ in range(steps):
        policy_chosen = impl.sequence_logps(policy(input_ids=chosen_ids).logits, chosen_labels)
        policy_rejected = impl.sequence_logps(policy(input_ids=rejected_ids).logits, rejected_labels)
        with torch.no_grad():
            reference_chosen = impl.sequence_logps(reference(input_ids=chosen_ids).logits, chosen_labels)
            reference_rejected = impl.sequence_logps(reference(input_ids=rejected_ids).logits, rejected_labels)
        losses, _, _ = impl.dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1)
        loss = losses.mean()
        losses_seen.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = margins()
    for name, labels in (("chosen", chosen_labels), ("rejected", rejected_labels)):
        assert torch.equal(labels, kept[name]), (
            f"sequence_logps changed the {name} labels it was given (the ignored positions?): the reference model's call on the same "
            "labels then scores other tokens. Write into a copy (labels = labels[:, 1:].clone()), never into the caller's tensor"
        )
    assert torch.allclose(before, torch.zeros_like(before), atol=1e-4), "the policy and its reference copy should start equal"
    assert abs(losses_seen[0] - math.log(2)) < 1e-3, f"the first DPO loss (policy == reference) should be log 2 = 0.693, got {losses_seen[0]:.4f}"
    assert float(after.mean()) > 2.0 and bool((after > 0).all()), (
        f"after {steps} DPO steps the chosen-over-rejected margin against the reference should have grown; got margins {after.tolist()} "
        "(a negative margin means the loss pushes the wrong way: check the sign of logits)"
    )
    assert losses_seen[-1] < losses_seen[0], f"the DPO loss did not fall over {steps} steps: {losses_seen}"
