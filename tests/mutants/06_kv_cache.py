"""Mutants of module 06 (the KV cache): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

CAT_KEYS = "self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)"
CAT_VALUES = "self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)"
POSITIONS = "positions = torch.arange(past, past + new.shape[1], device=new.device)  # after the cached tokens"
PREFILL = "new = input_ids  # the prefill feeds the whole prompt once"
DTYPE_CHECK = "if new.dtype != held.dtype:"
SHAPE_CHECK = "if new.dim() != 4 or new.shape[:2] != held.shape[:2] or new.shape[-1] != held.shape[-1]:"

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
}
