"""Mutants of module 06 (the KV cache): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

CAT_KEYS = "self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)"
CAT_VALUES = "self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)"
POSITIONS = "positions = torch.arange(past, past + new.shape[1], device=new.device)  # after the cached tokens"
PREFILL = "new = input_ids  # the prefill feeds the whole prompt once"
DTYPE_CHECK = "if new.dtype != held.dtype:"
SHAPE_CHECK = "if new.dim() != 4 or new.shape[:2] != held.shape[:2] or new.shape[-1] != held.shape[-1]:"

# The reference's storage: lists of per-layer tensors, grown by torch.cat.
INIT = ("        self.keys: list[torch.Tensor] = []  # keys[layer_idx]: (batch, kv_heads, seq, head_dim)\n"
        "        self.values: list[torch.Tensor] = []\n")
UPDATE_START = ("        while len(self.keys) <= layer_idx:  # layers are created on first use\n"
                "            self.keys.append(None)\n            self.values.append(None)\n"
                "        if self.keys[layer_idx] is None:\n"
                "            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states\n"
                "            return key_states, value_states\n"
                "        for new, held, name in ((key_states, self.keys[layer_idx], \"key_states\"), (value_states, self.values[layer_idx], \"value_states\")):\n")
UPDATE_END = ("        self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)\n"
              "        self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)\n"
              "        return self.keys[layer_idx], self.values[layer_idx]\n")
SEQ_LENGTH = ("        if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:\n            return 0\n"
              "        return self.keys[layer_idx].shape[-2]\n")

# Meta's LLaMA and gpt-fast preallocate one buffer per layer and write into it; here it doubles when full.
PREALLOCATED_INIT = "        self.k_cache, self.v_cache, self.length = {}, {}, {}  # per layer: buffers (batch, kv_heads, capacity, head_dim)\n"
PREALLOCATED_UPDATE_START = (
    "        if layer_idx not in self.k_cache:\n"
    "            self.length[layer_idx] = 0\n"
    "            self.k_cache[layer_idx] = key_states.new_zeros(*key_states.shape[:2], 0, key_states.shape[-1])\n"
    "            self.v_cache[layer_idx] = value_states.new_zeros(*value_states.shape[:2], 0, value_states.shape[-1])\n"
    "        for new, held, name in ((key_states, self.k_cache[layer_idx], \"key_states\"), (value_states, self.v_cache[layer_idx], \"value_states\")):\n")
PREALLOCATED_FILL = (
    "        start = self.length[layer_idx]\n"
    "        end = start + key_states.shape[-2]\n"
    "        if end > self.k_cache[layer_idx].shape[-2]:  # full: move to a buffer twice as long\n"
    "            for store in (self.k_cache, self.v_cache):\n"
    "                old = store[layer_idx]\n"
    "                store[layer_idx] = old.new_zeros(*old.shape[:2], max(16, 2 * end), old.shape[-1])\n"
    "                store[layer_idx][:, :, :start] = old[:, :, :start]\n"
    "        self.k_cache[layer_idx][:, :, start:end] = key_states\n"
    "        self.v_cache[layer_idx][:, :, start:end] = value_states\n"
    "        self.length[layer_idx] = end\n")
PREALLOCATED_SEQ_LENGTH = "        return self.length.get(layer_idx, 0)\n"

GENERATE_WITH_CACHE = (
    "    cache = KVCache()\n"
    "    new = input_ids  # the prefill feeds the whole prompt once\n"
    "    for _ in range(max_new_tokens):\n"
    "        past = cache.get_seq_length()\n"
    "        " + POSITIONS + "\n"
    "        logits = model(new, positions, cache)\n"
    "        new = logits[:, -1].argmax(dim=-1, keepdim=True)  # (batch, 1): the only token fed next step\n"
    "        tokens = torch.cat([tokens, new], dim=1)\n"
    "    return tokens\n")
# gpt-fast's generate: prefill gives the first token, decode_n_tokens(max_new_tokens - 1) the others.
GPT_FAST_DECODE = (
    "    cache = KVCache()\n"
    "    prompt_len = input_ids.shape[1]\n"
    "    logits = model(input_ids, torch.arange(prompt_len, device=input_ids.device), cache)  # prefill\n"
    "    next_token = logits[:, -1].argmax(dim=-1, keepdim=True)\n"
    "    input_pos = torch.tensor([prompt_len], device=input_ids.device)\n"
    "    generated = []\n"
    "    for _ in range(max_new_tokens - 1):  # decode_n_tokens\n"
    "        generated.append(next_token)\n"
    "        logits = model(next_token, input_pos, cache)\n"
    "        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)\n"
    "        input_pos = input_pos + 1\n")

MUTANTS = [
    Mutant("cat_wrong_dim", "concatenates along the heads dimension (1) instead of the sequence (-2)",
           [(CAT_KEYS, CAT_KEYS.replace("dim=-2", "dim=1")), (CAT_VALUES, CAT_VALUES.replace("dim=-2", "dim=1"))]),
    Mutant("cat_last_dim", "concatenates along head_dim (-1) instead of the sequence (-2)",
           [(CAT_KEYS, CAT_KEYS.replace("dim=-2", "dim=-1")), (CAT_VALUES, CAT_VALUES.replace("dim=-2", "dim=-1"))]),
    Mutant("positions_restart_at_zero", "feeds each new token at position 0.. instead of after the cached tokens",
           [(POSITIONS, "positions = torch.arange(new.shape[1], device=new.device)")]),
    Mutant("one_cache_for_all_layers", "ignores layer_idx: every layer appends to the same cache",
           [("        while len(self.keys) <= layer_idx:", "        layer_idx = 0  # one cache for everything\n        while len(self.keys) <= layer_idx:")]),
    Mutant("returns_only_new_states", "update returns the new keys and values instead of the layer's whole cache",
           [("        return self.keys[layer_idx], self.values[layer_idx]\n", "        return key_states, value_states\n")]),
    Mutant("prefill_twice", "runs the prompt through the model with the cache, then again in the first step",
           [(PREFILL, PREFILL + "\n    model(new, torch.arange(new.shape[1], device=new.device), cache)")]),
    Mutant("prefill_last_token_only", "prefills only the prompt's last token, so the cache never holds the prompt",
           [(PREFILL, "new = input_ids[:, -1:]")]),
    Mutant("prefill_first_logits", "after the prefill, takes the argmax of the first position's logits instead of the last",
           [("new = logits[:, -1].argmax(dim=-1, keepdim=True)", "new = logits[:, 0].argmax(dim=-1, keepdim=True)")]),
    Mutant("refeed_whole_sequence_with_cache", "feeds the whole sequence every step and also appends it to the cache",
           [(POSITIONS + "\n        logits = model(new, positions, cache)",
             "positions = torch.arange(tokens.shape[1], device=new.device)\n        logits = model(tokens, positions, cache)")]),
    Mutant("bytes_without_factor_2", "counts keys only (forgets that values are cached too)",
           [("return 2 * num_layers * num_kv_heads", "return num_layers * num_kv_heads")]),
    Mutant("bytes_as_float", "returns a float (e.g. after dividing by 1 or using **)",
           [("return 2 * num_layers * num_kv_heads", "return 2.0 * num_layers * num_kv_heads")]),
    Mutant("no_dtype_check", "accepts states of another dtype (torch.cat silently promotes them)",
           [(DTYPE_CHECK, "if False:")]),
    Mutant("no_shape_check", "lets torch.cat fail with a RuntimeError instead of raising ValueError",
           [(SHAPE_CHECK, "if False:")]),
    Mutant("seq_length_counts_heads", "get_seq_length reads dim 1 (heads) instead of the sequence dimension",
           [("return self.keys[layer_idx].shape[-2]", "return self.keys[layer_idx].shape[1]")]),
    Mutant("seq_length_fails_when_empty", "get_seq_length indexes a layer that does not exist yet",
           [("        if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:\n            return 0\n", "")]),
    Mutant("ignores_use_cache", "always decodes with the cache, even for use_cache=False",
           [("    if not use_cache:\n", "    if False:\n")]),
    # Well-known implementations that break the contract, named with the reason
    Mutant("gpt_fast_returns_the_whole_buffer", "gpt-fast's KVCache.update returns its whole preallocated buffer (zeros past the "
           "filled positions) and relies on the model's mask; the contract (DynamicCache.update) returns the past + new states "
           "only, and this module's model attends to every key it is given",
           [(INIT, PREALLOCATED_INIT), (UPDATE_START, PREALLOCATED_UPDATE_START),
            (UPDATE_END, PREALLOCATED_FILL + "        return self.k_cache[layer_idx], self.v_cache[layer_idx]\n"),
            (SEQ_LENGTH, PREALLOCATED_SEQ_LENGTH)]),
    Mutant("gpt_fast_generate_one_token_crash", "gpt-fast's generate: torch.cat of the tokens decode_n_tokens(max_new_tokens - 1) "
           "made, which is an empty list (an error) for max_new_tokens=1",
           [(GENERATE_WITH_CACHE, GPT_FAST_DECODE + "    return torch.cat([input_ids, torch.cat(generated, dim=1), next_token], dim=1)\n")]),
]

ALTERNATIVES = [
    Mutant("dict_storage_like_dynamic_cache", "stores layers in dicts and concatenates onto an empty tensor, as DynamicCache does",
           [("        self.keys: list[torch.Tensor] = []  # keys[layer_idx]: (batch, kv_heads, seq, head_dim)\n        self.values: list[torch.Tensor] = []\n",
             "        self.keys, self.values = {}, {}\n"),
            ("        while len(self.keys) <= layer_idx:  # layers are created on first use\n            self.keys.append(None)\n            self.values.append(None)\n"
             "        if self.keys[layer_idx] is None:\n            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states\n            return key_states, value_states\n",
             "        if layer_idx not in self.keys:\n"
             "            self.keys[layer_idx] = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[-1])\n"
             "            self.values[layer_idx] = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[-1])\n"),
            ("        if layer_idx >= len(self.keys) or self.keys[layer_idx] is None:\n            return 0\n",
             "        if layer_idx not in self.keys:\n            return 0\n")]),
    Mutant("bytes_with_math_prod", "multiplies the sizes with math.prod",
           [("return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * bytes_per_element  # 2: K and V",
             "return 2 * math.prod([num_layers, num_kv_heads, head_dim, seq_len, batch_size, bytes_per_element])")]),
    Mutant("positions_counted_from_tokens", "derives the offset from the tokens generated so far instead of the cache",
           [("        past = cache.get_seq_length()\n", "        past = tokens.shape[1] - new.shape[1]\n")]),
    Mutant("shape_check_with_size_tuples", "compares every dimension but the sequence with a tuple",
           [(SHAPE_CHECK, "if new.dim() != 4 or tuple(new.shape[i] for i in (0, 1, 3)) != tuple(held.shape[i] for i in (0, 1, 3)):")]),
    # Conventions of public code bases (written here from their description)
    Mutant("meta_llama_preallocated", "as Meta's LLaMA and gpt-fast: one preallocated buffer per layer, the new states written in "
           "place at [start, end), the filled part returned (here the buffer doubles when full instead of a max_seq_len)",
           [(INIT, PREALLOCATED_INIT), (UPDATE_START, PREALLOCATED_UPDATE_START),
            (UPDATE_END, PREALLOCATED_FILL + "        return self.k_cache[layer_idx][:, :, :end], self.v_cache[layer_idx][:, :, :end]\n"),
            (SEQ_LENGTH, PREALLOCATED_SEQ_LENGTH)]),
    Mutant("legacy_tuple_cache", "keeps transformers' legacy format: one (keys, values) tuple per layer, replaced by a new tuple each update",
           [(INIT, "        self.layers: list = []  # layers[layer_idx]: (keys, values), transformers' legacy cache format\n"),
            (UPDATE_START, "        while len(self.layers) <= layer_idx:\n            self.layers.append(None)\n"
                           "        if self.layers[layer_idx] is None:\n"
                           "            self.layers[layer_idx] = (key_states, value_states)\n"
                           "            return self.layers[layer_idx]\n"
                           "        past_keys, past_values = self.layers[layer_idx]\n"
                           "        for new, held, name in ((key_states, past_keys, \"key_states\"), (value_states, past_values, \"value_states\")):\n"),
            (UPDATE_END, "        self.layers[layer_idx] = (torch.cat((past_keys, key_states), dim=-2), torch.cat((past_values, value_states), dim=-2))\n"
                         "        return self.layers[layer_idx]\n"),
            (SEQ_LENGTH, "        if layer_idx >= len(self.layers) or self.layers[layer_idx] is None:\n            return 0\n"
                         "        return self.layers[layer_idx][0].shape[-2]\n")]),
    Mutant("gpt_fast_generate", "as gpt-fast: the prefill gives the first token, a decode loop of max_new_tokens - 1 steps at "
           "input_pos the others, all concatenated once at the end",
           [(GENERATE_WITH_CACHE, GPT_FAST_DECODE + "    return torch.cat([input_ids, *generated, next_token], dim=1)\n")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {
    "positions_restart_at_zero": "the public suite's decoder is the stub's tiny one, whose greedy tokens do not reveal the "
                                 "positions; the hidden suite compares every step's logits with transformers' Llama",
    "prefill_twice": "a second prefill leaves the greedy tokens of the tiny public decoder unchanged; the hidden suite "
                     "checks the cache's length and logits against transformers' DynamicCache",
    "refeed_whole_sequence_with_cache": "the tiny public decoder's greedy tokens survive the refeeding; the hidden suite "
                                        "checks the cache's length and logits against transformers' DynamicCache",
    "ignores_use_cache": "with and without the cache the tokens are equal by design; only the hidden suite, which counts "
                         "the tokens each model call receives, tells them apart",
    "gpt_fast_generate_one_token_crash": "it crashes only when exactly one new token is asked for; the public generate tests ask for several, the hidden suite for one too",
}
