"""Public tests of module 06 (the KV cache). Run: pytest exercises/06_kv_cache

These check the essentials quickly; the grader's hidden tests check more (transformers' DynamicCache
and LlamaForCausalLM.generate as oracles, dtypes, devices, bad inputs). Read docs/06_kv_cache.md.
"""

import torch

from grader.harness.checks import assert_close, assert_raises, assert_shape, expect


def small_model(impl, num_kv_heads=2):
    """A 2-layer TinyDecoder in float64, so that cached and recomputed logits agree to ~1e-15."""
    return impl.TinyDecoder(vocab_size=50, dim=32, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads).double().eval()


def test_update_appends_along_the_sequence(impl):
    """update returns the layer's whole cache: old and new keys (and values) concatenated along dim -2."""
    cache = impl.KVCache()
    k1, v1 = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    k2, v2 = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8)
    cache.update(k1, v1, 0)
    keys, values = cache.update(k2, v2, 0)
    mistakes = {"you returned only the new keys: return the whole cache of the layer": k2}
    assert_shape(keys, (2, 3, 6, 8), what="the keys returned by the second update of layer 0")
    assert_close(keys, torch.cat([k1, k2], dim=-2), what="the keys returned by update", mistakes=mistakes)
    assert_close(values, torch.cat([v1, v2], dim=-2), what="the values returned by update")


def test_seq_length_per_layer(impl):
    """get_seq_length is 0 when empty, counts the tokens of each layer, and layers do not share a cache."""
    cache = impl.KVCache()
    expect(cache.get_seq_length() == 0, f"an empty cache should hold 0 tokens, got {cache.get_seq_length()}")
    cache.update(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), 0)
    cache.update(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), 1)
    cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8), 0)
    lengths = (cache.get_seq_length(0), cache.get_seq_length(1))
    expect(lengths == (5, 4), f"after 4 + 1 tokens in layer 0 and 4 in layer 1, get_seq_length gives {lengths}, expected (5, 4): "
        "each layer has its own keys and values (index them by layer_idx), counted along dim -2")


def test_update_rejects_a_mismatch(impl):
    """update raises ValueError for new states whose dtype or head_dim differs from what the layer holds."""
    cache = impl.KVCache()
    cache.update(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), 0)
    half = torch.randn(1, 2, 1, 8, dtype=torch.float16)
    assert_raises(ValueError, cache.update, half, half, 0, when="for float16 states added to a float32 layer")
    wide = torch.randn(1, 2, 1, 16)
    assert_raises(ValueError, cache.update, wide, wide, 0, when="for states of head_dim 16 added to a layer of head_dim 8")


def test_llama_2_7b_cache_is_2_gib(impl):
    """kv_cache_bytes for Llama-2-7B (32 layers, 32 kv heads, head_dim 128), 4096 tokens, fp16, batch 1 is 2 GiB."""
    got = impl.kv_cache_bytes(32, 32, 128, 4096, 1)
    expect(got == 2 * 2**30, (
        f"kv_cache_bytes(32, 32, 128, 4096, 1) gave {got}, expected {2 * 2**30} (2 GiB)"
        + (": you forgot the factor 2, the cache holds keys AND values" if got == 2**30 else "")
    ))
    expect(type(got) is int, f"kv_cache_bytes should return an int (a count of bytes), got {type(got).__name__} {got!r}: avoid 2.0, / and float factors")


def test_incremental_logits_equal_full_recompute(impl):
    """Prefill, then one token at a time through your KVCache: each step's logits equal a full recompute."""
    model = small_model(impl)
    ids = torch.randint(0, 50, (2, 9))
    full = model(ids, torch.arange(9))  # (2, 9, vocab): every position in one pass, no cache
    cache = impl.KVCache()
    prefill = model(ids[:, :6], torch.arange(6), cache)
    assert_close(prefill, full[:, :6], what="the logits of the prefill with a KVCache")
    for t in range(6, 9):
        step = model(ids[:, t:t + 1], torch.tensor([t]), cache)
        assert_close(step[:, 0], full[:, t], what=f"the logits of token {t} fed alone after {t} cached tokens",
                     mistakes={"the cache did not grow: does update return the whole cache of the layer?": lambda out: cache.get_seq_length() != t + 1})


def test_generate_with_and_without_cache_agree(impl):
    """generate returns prompt + new tokens, the same with use_cache=True and use_cache=False (batch 2)."""
    model = small_model(impl)
    prompt = torch.randint(0, 50, (2, 5))
    without = impl.generate(model, prompt, 6, use_cache=False)
    with_cache = impl.generate(model, prompt, 6, use_cache=True)
    assert_shape(without, (2, 11), what="generate(model, prompt of shape (2, 5), 6, use_cache=False)")
    assert_shape(with_cache, (2, 11), what="generate(model, prompt of shape (2, 5), 6, use_cache=True)")
    expect(torch.equal(with_cache[:, :5], prompt), "generate should return the prompt followed by the new tokens")
    expect(torch.equal(with_cache, without), f"generate with the cache gave\n{with_cache[:, 5:].tolist()}\nbut the full recompute gave\n{without[:, 5:].tolist()}\n"
        "With a cache, prefill the prompt once, then feed only the newest token, at position cache.get_seq_length().")
