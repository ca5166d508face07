"""Hidden suite of module 12 (the capstone): transformers' LlamaMLP and LlamaForCausalLM are the oracles.

Tiny configs with random weights (nothing is downloaded): multi-head, grouped-query and multi-query
attention, tied and untied embeddings, RoPE theta 1e4 and 5e5, a head_dim that is not hidden / heads.
The learner's TinyLlama loads LlamaForCausalLM's state dict strictly; its float32 logits are compared
with transformers' float64 logits (the truth) at float32 tolerance, left padding included (at real
tokens only). Two layers of sharpened weights round more than one operation does: the tolerance is
widened to four times what transformers' own float32 forward needs on the same weights and inputs
(`tolerance_as_good_as`), never narrower than float32's. Greedy tokens are compared in float64, where
an argmax cannot flip on a near-tie.

The learner's model loads a copy of LlamaForCausalLM's weights and gets copies of the inputs; it runs first, and
expected values come from the originals, computed after the learner's call.

Run: pytest grader/hidden/12_tiny_llama --impl solutions   (or --impl path/to/submission)
"""

import copy

import pytest
import torch

from grader.harness.checks import assert_close, assert_shape, tolerance_as_good_as
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaMLP

VOCAB = 101
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CONFIGS = {
    "gqa_untied_theta1e4": dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e4),
    "mha_tied_theta5e5": dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=5e5, rms_norm_eps=1e-5),
    "mqa_untied_head_dim16": dict(num_key_value_heads=1, tie_word_embeddings=False, rope_theta=5e5, head_dim=16),
}


def make_config(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e4, head_dim=None, rms_norm_eps=1e-6,
                num_hidden_layers=2):
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, num_key_value_heads=num_key_value_heads, head_dim=head_dim, rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tie_word_embeddings, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )


def sharpen(llama):
    """Weights of std 0.3 (norm weights near 1) instead of transformers' 0.02: with the default init, attention is
    nearly uniform and the greedy tokens hardly depend on positions or masks; with these, every piece matters."""
    with torch.no_grad():
        for name, p in llama.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.3 * torch.randn_like(p))
    return llama


def llama_pair(impl, device, config):
    """A random LlamaForCausalLM (float64, the truth) and the learner's TinyLlama (float32) with its weights."""
    llama = sharpen(LlamaForCausalLM(config)).eval()
    state = {k: v.clone() for k, v in llama.state_dict().items()}  # a copy: the learner's load cannot touch llama
    tiny = impl.TinyLlama(config)
    tiny.load_state_dict(state, strict=True)
    return tiny.to(device).eval(), llama.to(device=device, dtype=torch.float64)


def float32_tolerance(llama, truth, run, device):
    """float32's tolerance for `truth` (float64 logits of `llama`), widened to what transformers' own float32
    forward needs: `run(model)` gives the same logits from a float32 copy of `llama`."""
    with torch.no_grad():
        return tolerance_as_good_as(run(copy.deepcopy(llama).float()), truth, torch.float32, device)


def llama_greedy(llama, prompt, max_new_tokens, attention_mask=None):
    """transformers' greedy generate: the prompt followed by exactly max_new_tokens tokens."""
    mask = torch.ones_like(prompt) if attention_mask is None else attention_mask.long()
    return llama.generate(prompt, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=0, eos_token_id=None)


def left_padding(batch, seq, device):
    """A 0/1 mask with 3, 0, 1, ... pads on the left of each row."""
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    for row, pads in enumerate([3, 0, 1, 4][:batch]):
        mask[row, :pads] = 0
    return mask


def llama_padded_logits(llama, ids, mask):
    """transformers' logits of a left-padded batch, with the positions its generate uses (real tokens from 0)."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        return llama(ids, attention_mask=mask.long(), position_ids=positions).logits


# ---------------------------------------------------------------------------------------------------
# SwiGLU against LlamaMLP


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_swiglu_matches_llama_mlp(impl, device, dtype):
    """SwiGLU with LlamaMLP's state dict gives LlamaMLP's output, in float32, float16 and bfloat16."""
    mlp = LlamaMLP(make_config()).to(device=device, dtype=dtype)
    swiglu = impl.SwiGLU(32, 56)
    swiglu.load_state_dict({k: v.clone() for k, v in mlp.state_dict().items()}, strict=True)
    swiglu = swiglu.to(device=device, dtype=dtype)
    x = (torch.randn(3, 5, 32) * 2).to(device=device, dtype=dtype)
    with torch.no_grad():
        out = swiglu(x.clone())
        w = {k: v.double() for k, v in mlp.state_dict().items()}
        x64 = x.double()
        gate, up = x64 @ w["gate_proj.weight"].T, x64 @ w["up_proj.weight"].T
        truth = (torch.nn.functional.silu(gate) * up) @ w["down_proj.weight"].T
        mistakes = {
            "gate and up are swapped: silu goes on gate_proj(x), up_proj(x) stays linear":
                (torch.nn.functional.silu(up) * gate) @ w["down_proj.weight"].T,
            "silu is applied to the product gate * up instead of to the gate alone":
                torch.nn.functional.silu(gate * up) @ w["down_proj.weight"].T,
            "relu instead of silu": (torch.relu(gate) * up) @ w["down_proj.weight"].T,
        }
        assert_close(out, mlp(x), what=f"SwiGLU(32, 56)(x) for {dtype} x against LlamaMLP", mistakes=mistakes)
        assert_close(out, truth, what="SwiGLU(32, 56)(x) against down(silu(gate(x)) * up(x)) in float64", dtype=dtype, mistakes=mistakes)


@pytest.mark.points(1)
def test_swiglu_parameters(impl):
    """SwiGLU has exactly gate_proj, up_proj (hidden -> intermediate) and down_proj (intermediate -> hidden), no bias."""
    shapes = {name: tuple(p.shape) for name, p in impl.SwiGLU(32, 56).named_parameters()}
    want = {"gate_proj.weight": (56, 32), "up_proj.weight": (56, 32), "down_proj.weight": (32, 56)}
    assert shapes == want, f"SwiGLU(32, 56) has parameters {shapes}, expected {want} (as LlamaMLP; no bias)"


# ---------------------------------------------------------------------------------------------------
# The model's parameters


@pytest.mark.points(3)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_loads_strictly(impl, name):
    """TinyLlama(config) has exactly LlamaForCausalLM's parameter names and shapes: its state dict loads strictly."""
    config = make_config(**CONFIGS[name])
    tiny = impl.TinyLlama(config)
    mine = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    llama = LlamaForCausalLM(config)
    theirs = {k: tuple(v.shape) for k, v in llama.state_dict().items()}
    missing, unexpected = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
    assert not missing and not unexpected, (
        f"TinyLlama's state dict differs from LlamaForCausalLM's ({name}): missing {missing[:6]}, unexpected {unexpected[:6]}"
    )
    wrong = {k: (mine[k], theirs[k]) for k in theirs if mine[k] != theirs[k]}
    assert not wrong, (
        f"parameters with the wrong shape (yours, transformers'): {wrong}"
        + (" (config.head_dim is not hidden_size / num_attention_heads here: use config.head_dim)" if "head_dim" in name else "")
    )
    tiny.load_state_dict(llama.state_dict(), strict=True)


@pytest.mark.points(3)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_tied_embeddings_share_one_parameter(impl, tied):
    """With tie_word_embeddings, lm_head.weight is model.embed_tokens.weight (one Parameter); the counts equal num_parameters()."""
    config = make_config(tie_word_embeddings=tied)
    tiny, llama = impl.TinyLlama(config), LlamaForCausalLM(config)
    same = tiny.lm_head.weight is tiny.model.embed_tokens.weight
    assert same == tied, (
        "with tie_word_embeddings=True, lm_head.weight must be the same Parameter as model.embed_tokens.weight "
        "(self.lm_head.weight = self.model.embed_tokens.weight)" if tied else
        "with tie_word_embeddings=False, lm_head and embed_tokens must have their own weights"
    )
    count = sum(p.numel() for p in tiny.parameters())
    assert count == llama.num_parameters(), (
        f"TinyLlama has {count} parameters, LlamaForCausalLM.num_parameters() gives {llama.num_parameters()}"
    )


# ---------------------------------------------------------------------------------------------------
# Logits


@pytest.mark.points(8)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(impl, device, name):
    """float32 logits of a batch equal LlamaForCausalLM's float64 logits with the same weights (MHA, GQA, MQA)."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS[name]))
    ids = torch.randint(0, VOCAB, (3, 11), device=device)
    with torch.no_grad():
        out = tiny(ids.clone())
        truth = llama(ids).logits
    tol = float32_tolerance(llama, truth, lambda model: model(ids).logits, device)
    assert_close(out, truth, what=f"TinyLlama(config)(input_ids) for {name}", dtype=torch.float32, tol=tol)


@pytest.mark.points(2)
def test_one_layer_matches_transformers(impl, device):
    """A one-layer model's logits equal LlamaForCausalLM's: embedding, one block, the final norm and the head."""
    tiny, llama = llama_pair(impl, device, make_config(num_hidden_layers=1, rms_norm_eps=1e-5))
    ids = torch.randint(0, VOCAB, (2, 7), device=device)
    with torch.no_grad():
        out = tiny(ids.clone())
        truth = llama(ids).logits
    tol = float32_tolerance(llama, truth, lambda model: model(ids).logits, device)
    assert_close(out, truth, what="the logits of a one-layer TinyLlama", dtype=torch.float32, tol=tol)


@pytest.mark.points(5)
@pytest.mark.parametrize("name", ["gqa_untied_theta1e4", "mqa_untied_head_dim16"])
def test_left_padding_matches_transformers(impl, device, name):
    """With left padding (0/1 padding_mask), logits at real tokens equal transformers' and those of each sequence alone."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS[name]))
    ids = torch.randint(0, VOCAB, (4, 10), device=device)
    mask = left_padding(4, 10, device)
    real = mask.bool()
    with torch.no_grad():
        out = tiny(ids.clone(), mask.clone())
        truth = llama_padded_logits(llama, ids, mask)
    assert_shape(out, (4, 10, VOCAB), what="TinyLlama(...)(input_ids, padding_mask)")
    assert torch.isfinite(out[real]).all(), (
        "the logits of real tokens hold NaN or inf with left padding: a pad query that sees no key must not give NaN "
        "(mask with torch.finfo(dtype).min, not -inf), or the NaN reaches real tokens through 0 * NaN"
    )
    tol = float32_tolerance(llama, truth[real], lambda model: llama_padded_logits(model, ids, mask)[real], device)
    assert_close(out[real], truth[real], what=f"the logits at real tokens of a left-padded batch ({name})", dtype=torch.float32, tol=tol)
    with torch.no_grad():
        alone = llama(ids[0:1, 3:]).logits[0]
    tol = float32_tolerance(llama, alone, lambda model: model(ids[0:1, 3:]).logits[0], device)
    assert_close(out[0, 3:], alone, what="the logits of row 0 (3 pads) against the same sequence without pads", dtype=torch.float32, tol=tol)


@pytest.mark.points(1)
def test_bool_and_integer_padding_masks_agree(impl, device):
    """padding_mask may be bool or 0/1 integers: both give the same logits."""
    tiny, _ = llama_pair(impl, device, make_config())
    ids = torch.randint(0, VOCAB, (3, 8), device=device)
    mask = left_padding(3, 8, device)
    with torch.no_grad():
        as_int, as_bool = tiny(ids, mask), tiny(ids, mask.bool())
    real = mask.bool()
    assert_close(as_int[real], as_bool[real], what="logits with an integer padding_mask against a bool one")


@pytest.mark.points(5)
@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "left_padding"])
@pytest.mark.parametrize("name", ["gqa_untied_theta1e4", "mha_tied_theta5e5"])
def test_forward_with_a_dynamic_cache(impl, device, name, padded):
    """Chunks of 4, 1, 1 and 3 tokens through transformers' DynamicCache give the full forward's logits (real tokens)."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS[name]))
    ids = torch.randint(0, VOCAB, (3, 9), device=device)
    mask = left_padding(3, 9, device) if padded else torch.ones(3, 9, dtype=torch.long, device=device)
    real = mask.bool()
    chunks = [(0, 4), (4, 5), (5, 6), (6, 9)]  # 4, 1, 1 and 3 tokens
    with torch.no_grad():
        cache = DynamicCache()  # every chunk through the learner's model first
        outs = [tiny(ids[:, start:stop].clone(), mask[:, :stop].clone() if padded else None, cache)  # the cached and the new tokens
                for start, stop in chunks]
        truth = llama_padded_logits(llama, ids, mask)
    tol = float32_tolerance(llama, truth[real], lambda model: llama_padded_logits(model, ids, mask)[real], device)
    for (start, stop), out in zip(chunks, outs):
        where = real[:, start:stop]
        assert_close(out[where], truth[:, start:stop][where], dtype=torch.float32, tol=tol,
                     what=f"the logits of tokens {start}..{stop - 1} after {start} cached tokens" + (" (left padding)" if padded else ""),
                     mistakes={"the new tokens' positions are wrong: they continue after the cached tokens, counting "
                               "real tokens only when there is a padding mask": lambda got, s=start: s > 0})
    assert cache.get_seq_length() == 9, f"after 9 tokens the DynamicCache holds {cache.get_seq_length()}: call cache.update in every layer"


# ---------------------------------------------------------------------------------------------------
# generate


@pytest.mark.points(6)
@pytest.mark.parametrize("name", ["gqa_untied_theta1e4", "mha_tied_theta5e5"])
def test_generate_matches_transformers(impl, device, name):
    """generate(prompt, 8) equals LlamaForCausalLM.generate(do_sample=False) token for token (float64, batch 3)."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS[name]))
    tiny = tiny.double()
    prompt = torch.randint(0, VOCAB, (3, 5), device=device)
    got = tiny.generate(prompt.clone(), 8)
    want = llama_greedy(llama, prompt, 8)
    assert_shape(got, tuple(want.shape), what="generate(prompt of shape (3, 5), 8): the prompt followed by exactly 8 tokens")
    assert torch.equal(got[:, :5], prompt), "generate should return the prompt followed by the new tokens"
    assert torch.equal(got, want), f"generate gave new tokens\n{got[:, 5:].tolist()}\ntransformers' greedy generate gives\n{want[:, 5:].tolist()}"


@pytest.mark.points(5)
def test_generate_with_left_padding_matches_transformers(impl, device):
    """generate(prompt, 8, padding_mask) with left padding equals transformers' generate with that attention_mask."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS["mqa_untied_head_dim16"]))
    tiny = tiny.double()
    prompt = torch.randint(0, VOCAB, (3, 7), device=device)
    mask = left_padding(3, 7, device)
    got = tiny.generate(prompt.clone(), 8, mask.clone())
    want = llama_greedy(llama, prompt, 8, mask)
    assert_shape(got, tuple(want.shape), what="generate(left-padded prompt of shape (3, 7), 8, padding_mask)")
    assert torch.equal(got, want), (
        f"with left padding, generate gave new tokens\n{got[:, 7:].tolist()}\ntransformers gives\n{want[:, 7:].tolist()}\n"
        "Positions count real tokens only (the first real token is at 0), in the prefill and in every step; "
        "extend the padding mask by one real token per step."
    )


@pytest.mark.points(3)
@pytest.mark.parametrize("padded", [False, True], ids=["no_padding", "left_padding"])
def test_generate_equals_its_own_decoding_without_a_cache(impl, device, padded):
    """generate's cached tokens equal greedy decoding that re-runs the whole sequence through forward each step."""
    tiny, _ = llama_pair(impl, device, make_config(**CONFIGS["gqa_untied_theta1e4"]))
    tiny = tiny.double()
    prompt = torch.randint(0, VOCAB, (3, 6), device=device)
    mask = left_padding(3, 6, device) if padded else None
    got = tiny.generate(prompt.clone(), 10, None if mask is None else mask.clone())
    tokens = prompt
    with torch.no_grad():
        for _ in range(10):
            full_mask = None if mask is None else torch.cat([mask, torch.ones(3, tokens.shape[1] - 6, dtype=mask.dtype, device=device)], 1)
            next_token = tiny(tokens, full_mask)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], 1)
    assert torch.equal(got, tokens), (
        f"generate (with its KV cache) gave\n{got[:, 6:].tolist()}\nbut re-running forward on the whole sequence gives\n"
        f"{tokens[:, 6:].tolist()}\nThe cached steps must see the same positions and mask as a full recompute."
    )


@pytest.mark.points(2)
def test_generate_prefills_once_then_feeds_one_token(impl, device):
    """generate embeds the prompt once, then one token per step: it decodes with a KV cache."""
    tiny, _ = llama_pair(impl, device, make_config())
    shapes = []
    hook = tiny.model.embed_tokens.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    try:
        tiny.generate(torch.randint(0, VOCAB, (2, 5), device=device), 4)
    finally:
        hook.remove()
    want = [(2, 5), (2, 1), (2, 1), (2, 1)]
    assert shapes == want, (
        f"model.embed_tokens saw inputs of shapes {shapes}, expected {want}: prefill the prompt once into a KV cache, "
        "then feed only the newest token (4 new tokens need 1 prefill + 3 steps)"
    )


@pytest.mark.points(1)
def test_generate_one_token(impl, device):
    """generate(prompt, 1) appends the argmax of the prompt's last logits."""
    tiny, llama = llama_pair(impl, device, make_config(**CONFIGS["mha_tied_theta5e5"]))
    tiny = tiny.double()
    prompt = torch.randint(0, VOCAB, (4, 6), device=device)
    got = tiny.generate(prompt.clone(), 1)
    with torch.no_grad():
        want = llama(prompt).logits[:, -1].argmax(-1)
    assert_shape(got, (4, 7), what="generate(prompt of shape (4, 6), 1)")
    assert torch.equal(got[:, -1], want), f"the new token is {got[:, -1].tolist()}, the argmax of the last logits is {want.tolist()}"
