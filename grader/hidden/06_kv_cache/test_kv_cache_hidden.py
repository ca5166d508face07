"""Hidden suite of module 06 (the KV cache): transformers' DynamicCache and LlamaForCausalLM are the oracles.

The module's TinyDecoder has a LlamaForCausalLM's state dict (without the `model.` prefix), so the
same random weights run in both: logits and greedy tokens of the learner's cache and generate are
compared with transformers' own cache and generate. Token-level comparisons run in float64, where
cached and recomputed logits agree to ~1e-15 and an argmax cannot flip on a near-tie.

Run: pytest grader/hidden/06_kv_cache --impl solutions   (or --impl path/to/submission)

A cache legally keeps (or writes into) the tensors it is given, and generate holds the model and the prompt:
the learner's code gets copies, and expected values are computed after its call, from the originals, so
nothing the learner's code could find in memory holds the answer yet.
"""

import pytest
import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape
from grader.harness.plugin import collect_only

if not collect_only():  # the oracles: seconds to import, not needed to list the tests (the judge's --collect-only)
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

VOCAB = 96
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (num_heads, num_kv_heads): multi-head, grouped-query and multi-query attention
HEADS = [(4, 4), (4, 2), (4, 1)]


def llama_pair(impl, device, dtype=torch.float64, num_layers=3, num_heads=4, num_kv_heads=2, dim=32):
    """A random LlamaForCausalLM and the module's TinyDecoder holding the same weights, in eval mode."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=False,
    )
    llama = LlamaForCausalLM(config).eval()  # float32 weights, copied exactly, then both cast alike
    tiny = impl.TinyDecoder(VOCAB, dim, num_layers, num_heads, num_kv_heads, hidden=2 * dim)
    tiny.load_state_dict({k.removeprefix("model."): v for k, v in llama.state_dict().items()})
    return tiny.to(device=device, dtype=dtype).eval(), llama.to(device=device, dtype=dtype)


def llama_greedy(llama, prompt, max_new_tokens):
    """transformers' greedy generate (with its DynamicCache): prompt followed by the new tokens."""
    return llama.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                          min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)


class Recorder:
    """Wraps a model: remembers the input shape and the last position's logits of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, input_ids, position_ids, cache=None):
        logits = self.model(input_ids, position_ids, cache)
        self.calls.append((tuple(input_ids.shape), logits[:, -1].detach().clone()))
        return logits


class HeldCache:
    """Wraps the learner's cache: keeps what each layer's update last returned (the whole layer cache)."""

    def __init__(self, cache):
        self.cache, self.held = cache, {}

    def update(self, key_states, value_states, layer_idx):
        keys, values = self.cache.update(key_states, value_states, layer_idx)
        self.held[layer_idx] = (keys, values)
        return keys, values


def random_states(batch, heads, seq, head_dim, dtype, device):
    return torch.randn(batch, heads, seq, head_dim, device=device).to(dtype), torch.randn(batch, heads, seq, head_dim, device=device).to(dtype)


# ---------------------------------------------------------------------------------------------------
# KVCache against DynamicCache


@pytest.mark.points(4)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_update_matches_dynamic_cache(impl, device, dtype):
    """Over several layers and steps of different lengths, update returns what DynamicCache.update returns."""
    mine, theirs = impl.KVCache(), DynamicCache()
    for step, new in enumerate([5, 1, 1, 3, 1]):
        for layer in range(3):
            k, v = random_states(2, 2, new, 16, dtype, device)
            keys, values = mine.update(k.clone(), v.clone(), layer)
            want_keys, want_values = (t.clone() for t in theirs.update(k.clone(), v.clone(), layer))
            when = f"at step {step} (adding {new} token(s)) of layer {layer}"
            mistakes = {"you returned only the new states: update returns the layer's whole cache": k.clone()}
            assert_close(keys, want_keys, what=f"the keys returned by update {when}", mistakes=mistakes)
            assert_close(values, want_values, what=f"the values returned by update {when}")
            length = mine.get_seq_length(layer)
            want = theirs.get_seq_length(layer)
            assert length == want, f"get_seq_length({layer}) is {length} {when}, DynamicCache says {want}: count along dim -2"


@pytest.mark.points(2)
def test_layers_do_not_share_a_cache(impl, device):
    """Each layer_idx has its own keys and values: updating layer 1 leaves layer 0's cache as it was."""
    cache = impl.KVCache()
    k0, v0 = random_states(1, 2, 4, 8, torch.float32, device)
    k1, v1 = random_states(1, 2, 4, 8, torch.float32, device)
    k_new, v_new = random_states(1, 2, 1, 8, torch.float32, device)
    cache.update(k0.clone(), v0.clone(), 0)
    keys1, _ = cache.update(k1.clone(), v1.clone(), 1)
    layer1_keys, shared_keys = k1, torch.cat([k0, k1], dim=-2)
    assert_close(keys1, layer1_keys, what="the keys of layer 1 after its first update",
                 mistakes={"layer 1 got layer 0's keys too: keep one cache per layer_idx": shared_keys})
    keys0, values0 = cache.update(k_new.clone(), v_new.clone(), 0)
    layer0_keys, layer0_values = torch.cat([k0, k_new], dim=-2), torch.cat([v0, v_new], dim=-2)
    mixed_keys = torch.cat([k0, k1, k_new], dim=-2)
    assert_close(keys0, layer0_keys, what="the keys of layer 0 after a second update",
                 mistakes={"layer 0's cache holds layer 1's keys: keep one cache per layer_idx": mixed_keys})
    assert_close(values0, layer0_values, what="the values of layer 0 after a second update")
    assert (cache.get_seq_length(0), cache.get_seq_length(1)) == (5, 4), (
        f"get_seq_length gives {(cache.get_seq_length(0), cache.get_seq_length(1))} for layers (0, 1), expected (5, 4)"
    )


@pytest.mark.points(2)
def test_seq_length_is_zero_when_empty(impl, device):
    """get_seq_length is 0 for an empty cache and for a layer not updated yet, as DynamicCache's."""
    mine, theirs = impl.KVCache(), DynamicCache()
    for layer in (0, 2):
        assert mine.get_seq_length(layer) == theirs.get_seq_length(layer) == 0, (
            f"an empty cache should give get_seq_length({layer}) == 0, got {mine.get_seq_length(layer)}"
        )
    assert mine.get_seq_length() == 0, f"an empty cache should give get_seq_length() == 0, got {mine.get_seq_length()}"
    k, v = random_states(2, 2, 3, 8, torch.float32, device)
    mine.update(k.clone(), v.clone(), 0)
    theirs.update(k, v, 0)
    assert mine.get_seq_length() == 3, f"after 3 tokens in layer 0, get_seq_length() (layer 0 by default) is {mine.get_seq_length()}"
    assert mine.get_seq_length(1) == theirs.get_seq_length(1) == 0, (
        f"layer 1 holds nothing yet, but get_seq_length(1) is {mine.get_seq_length(1)}: layers are separate"
    )


MISMATCHES = {
    "dtype": ((1, 2, 1, 8), torch.float16, "float16 states added to a float32 layer"),
    "batch": ((2, 2, 1, 8), torch.float32, "a batch of 2 added to a layer holding a batch of 1"),
    "heads": ((1, 4, 1, 8), torch.float32, "4 heads added to a layer holding 2"),
    "head_dim": ((1, 2, 1, 16), torch.float32, "head_dim 16 added to a layer holding head_dim 8"),
}


@pytest.mark.points(3)
@pytest.mark.parametrize("kind", list(MISMATCHES))
def test_update_rejects_a_mismatch(impl, device, kind):
    """update raises ValueError when new states do not match the dtype or shape the layer holds."""
    shape, dtype, when = MISMATCHES[kind]
    cache = impl.KVCache()
    k, v = random_states(1, 2, 3, 8, torch.float32, device)
    cache.update(k, v, 0)
    bad_k, bad_v = random_states(*shape, dtype, device)
    assert_raises(ValueError, cache.update, bad_k, bad_v, 0, when=f"for {when}")
    ok_k, ok_v = random_states(1, 2, 2, 8, torch.float32, device)
    keys, _ = cache.update(ok_k, ok_v, 0)
    assert_shape(keys, (1, 2, 5, 8), what="the keys after a rejected update and a valid one (the rejected states must not be stored)")


@pytest.mark.points(1)
def test_value_dtype_is_checked_too(impl, device):
    """update raises ValueError when only the values' dtype differs from what the layer holds."""
    cache = impl.KVCache()
    k, v = random_states(1, 2, 3, 8, torch.float32, device)
    cache.update(k, v, 0)
    k2, v2 = random_states(1, 2, 1, 8, torch.float32, device)
    assert_raises(ValueError, cache.update, k2, v2.double(), 0, when="for float64 values added to a float32 layer")


# ---------------------------------------------------------------------------------------------------
# The cache inside the model: incremental decoding equals a full recompute


@pytest.mark.points(4)
@pytest.mark.parametrize("heads", HEADS, ids=["mha", "gqa", "mqa"])
def test_incremental_logits_equal_full_recompute(impl, device, heads):
    """Prefill, then chunks of 1 and 3 tokens through KVCache: logits equal LlamaForCausalLM's full recompute."""
    num_heads, num_kv_heads = heads
    tiny, llama = llama_pair(impl, device, num_heads=num_heads, num_kv_heads=num_kv_heads)
    ids = torch.randint(0, VOCAB, (3, 14), device=device)
    with torch.no_grad():
        cache = impl.KVCache()
        steps, start = [], 0  # (start, size, logits, cached length after the step)
        for size in [5, 1, 1, 3, 1, 1, 2]:
            chunk = ids[:, start:start + size].clone()
            positions = torch.arange(start, start + size, device=device)
            logits = tiny(chunk, positions, cache)
            steps.append((start, size, logits.clone(), cache.get_seq_length()))
            start += size
        full = llama(ids).logits  # (3, 14, vocab)
        for start, size, logits, cached in steps:
            assert_close(logits, full[:, start:start + size],
                         what=f"the logits of tokens {start}..{start + size - 1} fed after {start} cached tokens",
                         mistakes={"the cache does not hold every token fed so far": lambda out, n=start + size, cached=cached: cached != n})
        assert cache.get_seq_length() == 14, f"after feeding 14 tokens, get_seq_length() is {cache.get_seq_length()}"


@pytest.mark.points(2)
def test_incremental_logits_in_float32(impl, device):
    """In float32, token-by-token logits with KVCache equal the float64 full recompute within float32 tolerance."""
    tiny, llama = llama_pair(impl, device)
    ids = torch.randint(0, VOCAB, (2, 10), device=device)
    with torch.no_grad():
        tiny = tiny.float()
        cache = impl.KVCache()
        tiny(ids[:, :4].clone(), torch.arange(4, device=device), cache)
        steps = {t: tiny(ids[:, t:t + 1].clone(), torch.tensor([t], device=device), cache).clone() for t in range(4, 10)}
        full = llama(ids).logits
        for t, step in steps.items():
            assert_close(step[:, 0], full[:, t], what=f"float32 logits of token {t} after {t} cached tokens", dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# generate


@pytest.mark.points(4)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_generate_matches_transformers(impl, device, use_cache):
    """generate(model, prompt, n, use_cache) gives the tokens of transformers' greedy generate, batch of 3."""
    tiny, llama = llama_pair(impl, device)
    prompt = torch.randint(0, VOCAB, (3, 6), device=device)
    got = impl.generate(tiny, prompt.clone(), 8, use_cache=use_cache)
    want = llama_greedy(llama, prompt.clone(), 8)
    assert_shape(got, tuple(want.shape), what=f"generate(model, prompt of shape (3, 6), 8, use_cache={use_cache})")
    assert got.dtype == torch.long and got.device.type == device.type, f"generate should return token ids (torch.long) on {device}, got {got.dtype} on {got.device}"
    assert torch.equal(got[:, :6], prompt), "generate should return the prompt followed by the new tokens"
    assert torch.equal(got, want), (
        f"generate(use_cache={use_cache}) gave new tokens\n{got[:, 6:].tolist()}\ntransformers' greedy generate gives\n{want[:, 6:].tolist()}"
    )


@pytest.mark.points(2)
def test_generate_with_and_without_cache_agree(impl, device):
    """generate with use_cache=True and use_cache=False give the same tokens, for MQA and a longer run."""
    tiny, _ = llama_pair(impl, device, num_kv_heads=1)
    prompt = torch.randint(0, VOCAB, (2, 3), device=device)
    with_cache = impl.generate(tiny, prompt.clone(), 20, use_cache=True)
    without = impl.generate(tiny, prompt.clone(), 20, use_cache=False)
    assert torch.equal(with_cache, without), (
        f"with the cache: {with_cache[:, 3:].tolist()}\nwithout:        {without[:, 3:].tolist()}"
    )


@pytest.mark.points(3)
def test_generate_prefills_once_then_one_token_per_step(impl, device):
    """With the cache, the model sees the whole prompt once, then one token per call, and its logits match a full recompute."""
    tiny, llama = llama_pair(impl, device)
    prompt = torch.randint(0, VOCAB, (2, 5), device=device)
    recorder = Recorder(tiny)
    tokens = impl.generate(recorder, prompt.clone(), 6, use_cache=True)
    shapes = [shape for shape, _ in recorder.calls]
    want_shapes = [(2, 5)] + [(2, 1)] * 5
    assert shapes == want_shapes, (
        f"the model was called with input shapes {shapes}, expected {want_shapes}: "
        "prefill the whole prompt once, then feed only the newest token, once per new token"
    )
    with torch.no_grad():
        full = llama(tokens).logits  # the logits every position should have had
    for i, (_, last) in enumerate(recorder.calls):
        assert_close(last, full[:, 4 + i], what=f"the last logits of model call {i} inside generate")


@pytest.mark.points(1)
def test_generate_without_cache_recomputes_everything(impl, device):
    """With use_cache=False, every call of the model sees the whole sequence so far (prompt and new tokens)."""
    tiny, _ = llama_pair(impl, device, num_layers=1)
    prompt = torch.randint(0, VOCAB, (2, 4), device=device)
    recorder = Recorder(tiny)
    impl.generate(recorder, prompt.clone(), 4, use_cache=False)
    shapes = [shape for shape, _ in recorder.calls]
    want_shapes = [(2, 4), (2, 5), (2, 6), (2, 7)]
    assert shapes == want_shapes, (
        f"with use_cache=False the model was called with input shapes {shapes}, expected {want_shapes}: "
        "without a cache, each step runs the model over the whole sequence again"
    )


@pytest.mark.points(1)
def test_generate_one_token(impl, device):
    """max_new_tokens=1 appends the argmax of the prompt's last logits (one call, the prefill)."""
    tiny, llama = llama_pair(impl, device)
    prompt = torch.randint(0, VOCAB, (4, 7), device=device)
    got = impl.generate(tiny, prompt.clone(), 1)
    with torch.no_grad():
        want = llama(prompt).logits[:, -1].argmax(-1)
    assert_shape(got, (4, 8), what="generate(model, prompt of shape (4, 7), 1)")
    assert torch.equal(got[:, -1], want), f"the new token is {got[:, -1].tolist()}, the argmax of the last logits is {want.tolist()}"


# ---------------------------------------------------------------------------------------------------
# kv_cache_bytes


@pytest.mark.points(2)
def test_bytes_of_llama_2_7b(impl):
    """Llama-2-7B shapes (32 layers, 32 kv heads, head_dim 128), 4096 tokens, batch 1, default fp16: exactly 2 GiB, an int."""
    got = impl.kv_cache_bytes(32, 32, 128, 4096, 1)
    assert isinstance(got, int), f"kv_cache_bytes should return an int, got {type(got).__name__}"
    assert got == 2 * 2**30, f"kv_cache_bytes(32, 32, 128, 4096, 1) is {got}, expected 2 GiB = {2 * 2**30}" + (
        ": the factor 2 for keys AND values is missing" if got == 2**30 else "")


# (layers, kv heads, head_dim) of real models
REAL = {"llama2_70b": (80, 8, 128), "mistral_7b": (32, 8, 128), "gpt2": (12, 12, 64)}


@pytest.mark.points(2)
@pytest.mark.parametrize("model", list(REAL))
@pytest.mark.parametrize("bytes_per_element", [1, 2, 4])
def test_bytes_of_real_configs(impl, model, bytes_per_element):
    """kv_cache_bytes for real model shapes, several lengths, batches and element sizes."""
    layers, heads, head_dim = REAL[model]
    for seq_len, batch in [(1, 1), (4096, 1), (32768, 8)]:
        got = impl.kv_cache_bytes(layers, heads, head_dim, seq_len, batch, bytes_per_element)
        want = 2 * layers * heads * head_dim * seq_len * batch * bytes_per_element
        assert got == want, f"kv_cache_bytes({layers}, {heads}, {head_dim}, {seq_len}, {batch}, {bytes_per_element}) is {got}, expected {want}"


@pytest.mark.points(3)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bytes_match_what_the_caches_hold(impl, device, dtype):
    """kv_cache_bytes equals the bytes DynamicCache and your KVCache hold after a prefill of a GQA model."""
    tiny, llama = llama_pair(impl, device, dtype=dtype, num_layers=3, num_heads=4, num_kv_heads=2, dim=32)
    ids = torch.randint(0, VOCAB, (2, 7), device=device)
    element = torch.tensor([], dtype=dtype).element_size()
    with torch.no_grad():
        mine = HeldCache(impl.KVCache())
        tiny(ids.clone(), torch.arange(7, device=device), mine)
        got = impl.kv_cache_bytes(3, 2, 8, 7, 2, element)
        theirs = DynamicCache()
        llama(ids, cache=theirs, use_cache=True)
    held_by_dynamic = sum(layer.keys.nbytes + layer.values.nbytes for layer in theirs.layers)
    held_by_yours = sum(k.nbytes + v.nbytes for k, v in mine.held.values())
    assert got == held_by_dynamic, f"kv_cache_bytes(3, 2, 8, 7, 2, {element}) is {got}, DynamicCache holds {held_by_dynamic} bytes"
    assert held_by_yours == held_by_dynamic, f"your KVCache holds {held_by_yours} bytes of keys and values, DynamicCache {held_by_dynamic}"
