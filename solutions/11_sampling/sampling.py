"""Module 11: sampling the next token: greedy, temperature, top-k, nucleus (top-p), min-p, repetition penalty.

A language model gives one row of logits per sequence; decoding turns that row into a token. Each
function here is one of transformers' logits processors, written by hand: it takes logits and returns
new logits (filtered tokens become `-inf`, so the softmax gives them probability 0). `sample_next_token`
chains them in transformers' order and draws. Read docs/11_sampling.md first.

Ground rules for every function: `logits` is `(batch, vocab)` float (any float dtype), `input_ids`
`(batch, seq)` int64; return a new tensor of the same shape and dtype as `logits`, and never modify an
input in place (`masked_fill`, not `masked_fill_`).
"""

import torch


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make the tokens already in `input_ids` less likely (CTRL's rule, `RepetitionPenaltyLogitsProcessor`).

    For every token that occurs in row b of `input_ids` (once or many times: the penalty is applied
    once per token, not once per occurrence), its logit in row b of `logits` is divided by `penalty`
    if it is positive and multiplied by `penalty` if it is negative. With `penalty > 1` both moves
    push the token down.

    Args:
        logits: `(batch, vocab)`.
        input_ids: `(batch, seq)` token ids in `[0, vocab)`.
        penalty: > 0 (1.0 changes nothing), else ValueError.
    """
    ### BEGIN SOLUTION
    if penalty <= 0:
        raise ValueError(f"the repetition penalty must be > 0, got {penalty}")
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, input_ids, True)  # (batch, vocab)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)
    ### END SOLUTION


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits / temperature`: below 1 sharpens the distribution, above 1 flattens it.

    `temperature <= 0` -> ValueError (temperature 0 means greedy decoding, which `sample_next_token`
    handles itself: dividing by 0 is not it).
    """
    ### BEGIN SOLUTION
    if temperature <= 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    return logits / temperature
    ### END SOLUTION


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row; every logit below the k-th largest becomes `-inf`.

    Ties at the k-th value are all kept (so a row may keep more than `k` tokens), as transformers'
    `TopKLogitsWarper` does. `k <= 0` or `k >= vocab` returns the logits unchanged.
    """
    ### BEGIN SOLUTION
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits.clone()
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))
    ### END SOLUTION


def top_p_filter(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus sampling's filter: keep the smallest set of most probable tokens whose probability reaches `p`.

    Sort each row's probabilities in descending order and keep tokens while the probability of the
    tokens *before* them is still below `p`: the token that makes the sum cross `p` is kept. Everything
    else becomes `-inf`, except that the `min_tokens_to_keep` most probable tokens are always kept
    (`TopPLogitsWarper`). `p` outside `(0, 1]` -> ValueError; `p == 1` keeps every token.
    """
    ### BEGIN SOLUTION
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits.clone()
    probs = logits.float().softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above each one
    remove_sorted = before >= p
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))
    ### END SOLUTION


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop the tokens whose probability is below `min_p` times the most probable token's (`MinPLogitsWarper`).

    The threshold scales with the model's confidence: a peaked row keeps few tokens, a flat row many.
    `min_p == 0` keeps everything; the top token is always kept.
    """
    ### BEGIN SOLUTION
    probs = logits.float().softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (batch, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))
    ### END SOLUTION


def sample_next_token(
    logits: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row: the processors in transformers' order, then one draw from the softmax.

    Order: repetition penalty (skipped when `input_ids` is None), temperature, top-k, top-p, min-p;
    then `torch.multinomial(probs, 1, generator=generator)`. A filter at its neutral value (`top_k=0`,
    `top_p=1.0`, `min_p=0.0`, `repetition_penalty=1.0`) changes nothing. `temperature == 0` means
    greedy: the argmax of each row after the repetition penalty, with no draw.

    Returns:
        `(batch,)` int64 token ids. `temperature < 0` or `top_p` outside `(0, 1]` -> ValueError.
    """
    ### BEGIN SOLUTION
    if temperature < 0:
        raise ValueError(f"the temperature must be >= 0 (0 means greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if input_ids is not None and repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, input_ids, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, temperature)
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    logits = min_p_filter(logits, min_p)
    probs = logits.float().softmax(dim=-1)  # sample from probabilities, never from logits
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    ### END SOLUTION
