"""Public tests of module 12 (the capstone). Run: pytest exercises/12_tiny_llama

Each piece is checked on its own first (RMSNorm, RoPE, the KV cache, attention, SwiGLU, one decoder
layer), then the whole model, so that a failure points at the piece that is wrong. The grader's hidden
tests check the model against transformers' LlamaForCausalLM (logits, left padding, generate). These use
a stand-in config with the same fields as a `transformers.LlamaConfig`. Read docs/12_tiny_llama.md.
"""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from grader.harness.checks import assert_close, assert_shape, expect
from grader.harness.tolerances import tolerance_for

# The model runs in float64, but the pieces may compute in float32 inside (RMSNorm's statistics,
# attention's softmax, the RoPE tables), as the earlier modules ask: compare at float32's tolerance.
FLOAT32 = tolerance_for(torch.float32)


def tiny_config(tie=False, num_kv_heads=2, layers=2, head_dim=8, eps=1e-6, theta=10000.0):
    """The fields of a transformers.LlamaConfig that TinyLlama reads."""
    return SimpleNamespace(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=num_kv_heads, head_dim=head_dim, rms_norm_eps=eps, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )


def small_model(impl, **kwargs):
    """A TinyLlama with random weights (std 0.3, so that every piece matters), in float64 (no near-ties in argmax)."""
    model = impl.TinyLlama(tiny_config(**kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("layernorm.weight") or name.endswith("norm.weight")
                    else 0.3 * torch.randn_like(p))
    return model.double().eval()


# ---------------------------------------------------------------------------------------------------
# The pieces of earlier modules, checked again


def test_rmsnorm_piece(impl):
    """RMSNorm (module 01): x / sqrt(mean(x**2) + eps) * weight over the last dimension."""
    norm = impl.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) + 0.5)
    x = torch.randn(2, 3, 16)
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    assert_close(norm(x), want, what="RMSNorm(16)(x)", dtype=torch.float32,
                 mistakes={"you subtracted the mean: that is LayerNorm": F.layer_norm(x, (16,), eps=1e-6) * norm.weight})


def test_rope_piece(impl):
    """rope_cos_sin + apply_rope (module 02) rotate pairs (i, i + d/2) by position * base**(-2i/d), the rotate-half layout."""
    positions, d = torch.arange(5), 8
    cos, sin = impl.rope_cos_sin(positions, d, 10000.0)
    assert_shape(cos, (5, 8), what="cos from rope_cos_sin(arange(5), 8)")
    x = torch.randn(1, 2, 5, d, dtype=torch.float64)
    angles = positions[:, None].double() * 10000.0 ** (-torch.arange(0, d, 2).double() / d)  # (5, 4)
    x1, x2 = x[..., :4], x[..., 4:]
    want = torch.cat([x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()], dim=-1)
    interleaved = torch.stack([x[..., ::2] * angles.cos() - x[..., 1::2] * angles.sin(),
                               x[..., 1::2] * angles.cos() + x[..., ::2] * angles.sin()], dim=-1).flatten(-2)
    assert_close(impl.apply_rope(x.float(), cos, sin), want, what="apply_rope(x, *rope_cos_sin(arange(5), 8))", dtype=torch.float32,
                 mistakes={"you rotated interleaved pairs (2i, 2i+1); Llama in transformers rotates halves (i, i + d/2)": interleaved})


def test_kv_cache_piece(impl):
    """KVCache (module 06): update appends along dim -2 per layer and returns the whole cache; get_seq_length counts."""
    cache = impl.KVCache()
    expect(cache.get_seq_length() == 0, f"an empty cache holds 0 tokens, got {cache.get_seq_length()}")
    k1, k2 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 1, 4)
    cache.update(k1, k1, 0)
    cache.update(k1, k1, 1)
    keys, _ = cache.update(k2, k2, 0)
    assert_close(keys, torch.cat([k1, k2], dim=-2), what="the keys of layer 0 after two updates")
    expect(cache.get_seq_length(0) == 4, f"layer 0 holds 3 + 1 tokens, get_seq_length(0) gave {cache.get_seq_length(0)}")


def test_attention_piece(impl):
    """repeat_kv and attention (module 09): GQA, causal with a cache offset, pad keys masked, no NaN for a pad query."""
    x = torch.arange(2.0)[None, :, None, None].expand(1, 2, 1, 1)
    expect(impl.repeat_kv(x, 2).flatten().tolist() == [0.0, 0.0, 1.0, 1.0], (
        f"repeat_kv of heads [0, 1] with n_rep=2 gave {impl.repeat_kv(x, 2).flatten().tolist()}, expected [0, 0, 1, 1] (each head in turn)"
    ))
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    padding = torch.tensor([[False, True, True, True, True], [True] * 5])
    scores = q.double() @ k.double().repeat_interleave(2, 1).transpose(-2, -1) / 8**0.5  # (2, 4, 3, 5)
    allowed = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2) & padding[:, None, None, :]
    want = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.double().repeat_interleave(2, 1)
    assert_close(impl.attention(q, k, v, causal=True, padding_mask=padding), want, dtype=torch.float32,
                 what="attention(q, k, v, causal=True, padding_mask) with 3 queries after 2 cached keys")
    out = impl.attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], causal=True, padding_mask=padding[:, :1])
    expect(torch.isfinite(out).all(), (
        "attention gave NaN for a query that sees only pad keys (a left-padded position): mask with torch.finfo(dtype).min "
        "instead of -inf, or the NaN reaches the real tokens in the next layer"
    ))


# ---------------------------------------------------------------------------------------------------
# The new pieces


def test_swiglu(impl):
    """SwiGLU(x) = down_proj(silu(gate_proj(x)) * up_proj(x)), three linears without bias."""
    mlp = impl.SwiGLU(16, 40)
    shapes = {name: tuple(p.shape) for name, p in mlp.named_parameters()}
    want_shapes = {"gate_proj.weight": (40, 16), "up_proj.weight": (40, 16), "down_proj.weight": (16, 40)}
    expect(shapes == want_shapes, f"SwiGLU(16, 40) has parameters {shapes}, expected {want_shapes} (no bias)")
    x = torch.randn(3, 16)
    g, u, d = (getattr(mlp, n).weight.detach().double() for n in ("gate_proj", "up_proj", "down_proj"))
    gate, up = x.double() @ g.T, x.double() @ u.T
    assert_close(mlp(x), (F.silu(gate) * up) @ d.T, what="SwiGLU(16, 40)(x)", dtype=torch.float32, mistakes={
        "gate and up are swapped: silu goes on gate_proj(x)": (F.silu(up) * gate) @ d.T,
        "silu is applied to the product instead of to the gate alone": F.silu(gate * up) @ d.T,
    })


def test_decoder_layer_wiring(impl):
    """A DecoderLayer is h = x + self_attn(input_layernorm(x)), then h + mlp(post_attention_layernorm(h))."""
    layer = small_model(impl).model.layers[0]
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    positions = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        out = layer(x, positions)
        h = x + layer.self_attn(layer.input_layernorm(x), positions)
        want = h + layer.mlp(layer.post_attention_layernorm(h))
        no_residual = layer.self_attn(layer.input_layernorm(x), positions)
        no_residual = no_residual + layer.mlp(layer.post_attention_layernorm(no_residual))
    assert_close(out, want, what="DecoderLayer(x, positions)", tol=FLOAT32, mistakes={"the residual around attention is missing": no_residual})


def rotate_half_rope(x, positions, theta):
    """RoPE in float64, rotate-half layout: x (batch, heads, seq, d), positions (batch, seq)."""
    d = x.shape[-1]
    angles = positions[:, None, :, None].double() * theta ** (-torch.arange(0, d, 2).double() / d)  # (batch, 1, seq, d/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return x * cos + torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1) * sin


def test_attention_layer_wiring(impl):
    """self_attn(x, positions): project, rotate q and k (not v) with the config's rope_theta, causal GQA attention, o_proj."""
    model = small_model(impl, theta=100.0)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    positions = torch.arange(6).expand(2, 6)
    W = {n: getattr(attn, n).weight.detach() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}

    def reference(theta, rotate_v=False):
        q = (x @ W["q_proj"].T).view(2, 6, 4, 8).transpose(1, 2)
        k = (x @ W["k_proj"].T).view(2, 6, 2, 8).transpose(1, 2)
        v = (x @ W["v_proj"].T).view(2, 6, 2, 8).transpose(1, 2)
        q, k = rotate_half_rope(q, positions, theta), rotate_half_rope(k, positions, theta)
        if rotate_v:
            v = rotate_half_rope(v, positions, theta)
        k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        scores = (q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 32) @ W["o_proj"].T

    with torch.no_grad():
        out = attn(x, positions)
    assert_close(out, reference(100.0), what="self_attn(x, positions) of a model whose config has rope_theta=100", tol=FLOAT32, mistakes={
        "RoPE used the default base 10000: pass config.rope_parameters['rope_theta'] to the attention layer": reference(10000.0),
        "the values were rotated too: RoPE rotates only the queries and the keys": reference(100.0, rotate_v=True),
    })


def test_model_forward_wiring(impl):
    """TinyLlama(ids) is lm_head(model.norm(the layers applied to embed_tokens(ids))): the final RMSNorm is not optional."""
    model = small_model(impl)
    ids = torch.randint(0, 61, (2, 7))
    positions = torch.arange(7).expand(2, 7)
    with torch.no_grad():
        hidden = model.model.embed_tokens(ids)
        for layer in model.model.layers:
            hidden = layer(hidden, positions)
        want, no_final_norm = model.lm_head(model.model.norm(hidden)), model.lm_head(hidden)
        out = model(ids)
    assert_close(out, want, what="TinyLlama(input_ids)", tol=FLOAT32,
                 mistakes={"the final RMSNorm (model.norm) is missing before lm_head": no_final_norm})


def test_rmsnorms_use_the_config_eps(impl):
    """Every RMSNorm of the model (two per layer and model.norm) uses config.rms_norm_eps, not RMSNorm's default."""
    model = small_model(impl, eps=0.5, layers=1)
    x = 0.1 * torch.randn(3, 32, dtype=torch.float64)
    for name in ("model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"):
        norm = model.get_submodule(name)
        weight = norm.weight.detach()
        with torch.no_grad():
            out = norm(x)
        assert_close(out, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 0.5) * weight, tol=FLOAT32,
                     what=f"{name}(x) with config.rms_norm_eps = 0.5",
                     mistakes={"the RMSNorm kept its default eps: build it with RMSNorm(hidden_size, config.rms_norm_eps)":
                               x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight})


def test_parameter_names_match_llama_for_causal_lm(impl):
    """TinyLlama's state dict has LlamaForCausalLM's names and shapes (model.embed_tokens, model.layers.0..., lm_head)."""
    names = {k: tuple(v.shape) for k, v in impl.TinyLlama(tiny_config(layers=1)).state_dict().items()}
    want = {
        "model.embed_tokens.weight": (61, 32), "model.layers.0.self_attn.q_proj.weight": (32, 32),
        "model.layers.0.self_attn.k_proj.weight": (16, 32), "model.layers.0.self_attn.v_proj.weight": (16, 32),
        "model.layers.0.self_attn.o_proj.weight": (32, 32), "model.layers.0.mlp.gate_proj.weight": (48, 32),
        "model.layers.0.mlp.up_proj.weight": (48, 32), "model.layers.0.mlp.down_proj.weight": (32, 48),
        "model.layers.0.input_layernorm.weight": (32,), "model.layers.0.post_attention_layernorm.weight": (32,),
        "model.norm.weight": (32,), "lm_head.weight": (61, 32),
    }
    expect(names == want, (
        f"TinyLlama's state dict is\n{names}\nexpected (as LlamaForCausalLM)\n{want}\n"
        "missing: " + str(sorted(set(want) - set(names))) + ", unexpected: " + str(sorted(set(names) - set(want)))
    ))
    wide = {k: tuple(v.shape) for k, v in impl.TinyLlama(tiny_config(layers=1, head_dim=16)).state_dict().items() if "self_attn" in k}
    want_wide = {"model.layers.0.self_attn.q_proj.weight": (64, 32), "model.layers.0.self_attn.k_proj.weight": (32, 32),
                 "model.layers.0.self_attn.v_proj.weight": (32, 32), "model.layers.0.self_attn.o_proj.weight": (32, 64)}
    expect(wide == want_wide, (
        f"with config.head_dim = 16 (not hidden_size / heads = 8) the attention weights are {wide}, expected {want_wide}: "
        "read head_dim from the config, and fall back to hidden_size // num_attention_heads only when it is missing"
    ))


def test_tied_embeddings(impl):
    """With tie_word_embeddings, lm_head.weight is the same Parameter as model.embed_tokens.weight."""
    tied, untied = impl.TinyLlama(tiny_config(tie=True)), impl.TinyLlama(tiny_config(tie=False))
    expect(tied.lm_head.weight is tied.model.embed_tokens.weight, (
        "tie_word_embeddings=True: make lm_head.weight the same Parameter (self.lm_head.weight = self.model.embed_tokens.weight)"
    ))
    expect(untied.lm_head.weight is not untied.model.embed_tokens.weight, "tie_word_embeddings=False: lm_head needs its own weight")


# ---------------------------------------------------------------------------------------------------
# The whole model


def test_cached_forward_equals_full_forward(impl):
    """Feeding 5 tokens, then 1, 1 and 2 through a KVCache gives the logits of one full forward."""
    model = small_model(impl)
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        full = model(ids)
        assert_shape(full, (2, 9, 61), what="TinyLlama(...)(input_ids of shape (2, 9))")
        cache, start = impl.KVCache(), 0
        for size in [5, 1, 1, 2]:
            out = model(ids[:, start:start + size], cache=cache)
            assert_close(out, full[:, start:start + size], tol=FLOAT32,
                         what=f"the logits of tokens {start}..{start + size - 1} after {start} cached ones",
                         mistakes={"the positions restart at 0 after the cache: new tokens sit at cache.get_seq_length() onwards":
                                   lambda got, s=start: s > 0})
            start += size


def test_left_padding_does_not_change_real_tokens(impl):
    """A sequence left-padded with 3 pads gives, at its real tokens, the logits it gives alone."""
    model = small_model(impl)
    ids = torch.randint(0, 61, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        padded = model(ids, mask)
        alone = model(ids[0:1, 3:])
        unmasked = model(ids)[0, 3:]  # what attending to the pads gives
    expect(torch.isfinite(padded[0, 3:]).all(), "real tokens got NaN logits with left padding: see the attention piece's test")
    assert_close(padded[0, 3:], alone[0], tol=FLOAT32, what="the logits of a left-padded row at its real tokens, against the row alone",
                 mistakes={"the pads were attended to: mask the keys where padding_mask is 0": unmasked})


def test_generate_with_the_cache_equals_recomputing(impl):
    """generate(prompt, 6) returns prompt + 6 tokens, equal to greedy decoding that re-runs forward on everything each step."""
    model = small_model(impl)
    prompt = torch.randint(0, 61, (2, 4))
    got = model.generate(prompt, 6)
    assert_shape(got, (2, 10), what="generate(prompt of shape (2, 4), 6)")
    tokens = prompt
    with torch.no_grad():
        for _ in range(6):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    expect(torch.equal(got, tokens), (
        f"generate gave {got[:, 4:].tolist()}, greedy decoding without a cache gives {tokens[:, 4:].tolist()}: prefill the prompt "
        "into a fresh KVCache, then feed one token a step (its position follows the cached tokens)"
    ))


def test_generate_with_left_padding_equals_the_row_alone(impl):
    """A prompt left-padded with 3 pads generates, with its padding_mask, the tokens it generates alone."""
    model = small_model(impl)
    ids = torch.randint(0, 61, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    got = model.generate(ids, 6, padding_mask=mask)
    assert_shape(got, (2, 13), what="generate(prompt of shape (2, 7), 6, padding_mask)")
    alone = model.generate(ids[0:1, 3:], 6)
    expect(torch.equal(got[0, 7:], alone[0, 4:]), (
        f"the left-padded row generated {got[0, 7:].tolist()}, alone it generates {alone[0, 4:].tolist()}. Likely mistakes: "
        "the padding mask is not extended with a 1 for each generated token (the new tokens are masked as pads), or the "
        "generated tokens' positions count the pads (past + i) while the prompt's count real tokens only (cumsum of the mask)"
    ))
