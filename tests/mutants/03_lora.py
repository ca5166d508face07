"""Mutants of module 03 (LoRA): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

SCALING = "self.scaling = alpha / r"
FREEZE = "self.base.requires_grad_(False)  # weight and bias: only A and B are trained"
MAKE_A = "self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))"
MAKE_B = "self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))"
INIT_A = "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))"
DELTA = "return (self.lora_B @ self.lora_A) * self.scaling"
LORA_PATH = "return result + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling"
MERGE_ADD = "self.base.weight += self.delta_weight().to(self.base.weight.dtype)"
UNMERGE_SUB = "self.base.weight -= self.delta_weight().to(self.base.weight.dtype)"
MATCH = 'return any(name == target or name.endswith("." + target) for target in target_modules)'
REPLACE = "setattr(parent, child_name, LoRALinear(getattr(parent, child_name), r=r, alpha=alpha, dropout=dropout))"

MUTANTS = [
    # scaling
    Mutant("scaling_alpha", "scales the update by alpha instead of alpha / r",
           [(SCALING, "self.scaling = alpha")]),
    Mutant("scaling_r_over_alpha", "scales the update by r / alpha",
           [(SCALING, "self.scaling = r / alpha")]),
    Mutant("scaling_forgotten_in_forward", "forgets the scaling in forward (merge still scales)",
           [(LORA_PATH, "return result + self.dropout(x) @ self.lora_A.T @ self.lora_B.T")]),
    # initialisation
    Mutant("B_random_A_zero", "swaps the initialisations: B kaiming-uniform, A zeros (the gradient of B is then zero)",
           [(MAKE_A, "self.lora_A = nn.Parameter(torch.zeros(r, base.in_features, **factory))"),
            (MAKE_B, "self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **factory))"),
            (INIT_A, "nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))")]),
    Mutant("B_random", "initialises B randomly too (the output changes at initialisation)",
           [(INIT_A, INIT_A + "\n        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))")]),
    Mutant("A_kaiming_default_a", "calls kaiming_uniform_ with its default a=0 (a bound sqrt(6) times too wide)",
           [(INIT_A, "nn.init.kaiming_uniform_(self.lora_A)")]),
    Mutant("A_normal_init", "draws A from a normal distribution with std 1/r (peft's init_lora_weights='gaussian', not the default)",
           [(INIT_A, "nn.init.normal_(self.lora_A, std=1 / r)")]),
    # shapes, dtype
    Mutant("A_B_transposed", "stores A as (in, r) and B as (r, out), and computes x @ A @ B",
           [(MAKE_A, "self.lora_A = nn.Parameter(torch.empty(base.in_features, r, **factory))"),
            (MAKE_B, "self.lora_B = nn.Parameter(torch.zeros(r, base.out_features, **factory))"),
            (DELTA, "return (self.lora_A @ self.lora_B).T * self.scaling"),
            (LORA_PATH, "return result + (self.dropout(x) @ self.lora_A @ self.lora_B) * self.scaling")]),
    Mutant("adapter_always_float32", "creates A and B in float32 whatever the base layer's dtype",
           [('factory = {"device": base.weight.device, "dtype": base.weight.dtype}', 'factory = {"device": base.weight.device}')]),
    # freezing
    Mutant("base_not_frozen", "forgets to freeze the base layer",
           [(FREEZE, "pass")]),
    Mutant("bias_trainable", "freezes the base weight but leaves its bias trainable",
           [(FREEZE, "self.base.weight.requires_grad_(False)")]),
    # dropout
    Mutant("dropout_on_output", "applies dropout to the LoRA path's output instead of its input",
           [(LORA_PATH, "return result + self.dropout(x @ self.lora_A.T @ self.lora_B.T) * self.scaling")]),
    Mutant("dropout_on_base_path", "applies dropout to the input of the base layer as well",
           [("result = self.base(x)", "result = self.base(self.dropout(x))")]),
    Mutant("dropout_ignored", "never applies dropout",
           [(LORA_PATH, "return result + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling")]),
    # merging
    Mutant("merge_sign", "subtracts the update in merge() and adds it in unmerge()",
           [(MERGE_ADD, "self.base.weight -= self.delta_weight()"),
            (UNMERGE_SUB, "self.base.weight += self.delta_weight()")]),
    Mutant("merge_not_idempotent", "merge() adds the update again when already merged",
           [("        if self.merged:\n            return\n        with", "        with")]),
    Mutant("merged_forward_adds_lora", "forward still adds the LoRA path after merge() (the update counts twice)",
           [("        if self.merged:\n            return result\n", "")]),
    Mutant("unmerge_only_resets_flag", "unmerge() resets merged without subtracting the update",
           [(UNMERGE_SUB, "pass")]),
    Mutant("unmerge_when_not_merged", "unmerge() subtracts the update even when the layer is not merged",
           [("        if not self.merged:\n            return\n", "")]),
    # inject_lora, trainable_parameters
    Mutant("inject_substring_match", "matches a target anywhere in the name ('proj' matches 'q_proj')",
           [(MATCH, "return any(target in name for target in target_modules)")]),
    Mutant("inject_suffix_without_dot", "matches names ending with the target without the dot ('proj' matches 'q_proj')",
           [(MATCH, "return any(name.endswith(target) for target in target_modules)")]),
    Mutant("inject_last_component_only", "compares only the last component of the name ('self_attn.o_proj' matches nothing)",
           [(MATCH, 'return any(name.rsplit(".", 1)[-1] == target for target in target_modules)')]),
    Mutant("inject_does_not_freeze", "does not freeze the parameters outside the LoRA layers",
           [("model.requires_grad_(False)  # freeze everything; the new A and B are created trainable", "pass")]),
    Mutant("inject_default_rank", "does not pass r, alpha and dropout on to LoRALinear",
           [(REPLACE, "setattr(parent, child_name, LoRALinear(getattr(parent, child_name)))")]),
    Mutant("inject_no_match_silent", "returns the model unchanged when nothing matches",
           [("    if not targets:\n        raise ValueError", "    if not targets:\n        return model\n        raise ValueError")]),
    Mutant("trainable_counts_tensors", "counts parameter tensors instead of their elements",
           [("return sum(p.numel() for p in model.parameters() if p.requires_grad)", "return sum(1 for p in model.parameters() if p.requires_grad)")]),
    # errors
    Mutant("rank_zero_accepted", "only rejects negative ranks",
           [("        if r <= 0:\n", "        if r < 0:\n")]),
    Mutant("no_type_check", "accepts any module with a weight as base",
           [("        if not isinstance(base, nn.Linear):\n", "        if not hasattr(base, 'weight'):\n")]),
]

ALTERNATIVES = [
    Mutant("functional_linear", "computes the LoRA path with F.linear and scales before B",
           [(LORA_PATH, "return result + nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_A) * self.scaling, self.lora_B)")]),
    Mutant("explicit_uniform_init", "draws A with uniform_(-1/sqrt(in), 1/sqrt(in)), what kaiming_uniform_(a=sqrt(5)) amounts to",
           [(INIT_A, "bound = 1 / math.sqrt(base.in_features)\n        nn.init.uniform_(self.lora_A, -bound, bound)")]),
    Mutant("merge_through_data", "merges by assigning a new weight tensor through .data, and always builds nn.Dropout",
           [(MERGE_ADD, "self.base.weight.data = self.base.weight.data + self.delta_weight().detach()"),
            (UNMERGE_SUB, "self.base.weight.data = self.base.weight.data - self.delta_weight().detach()"),
            ("self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()", "self.dropout = nn.Dropout(dropout)")]),
    Mutant("inject_set_submodule", "replaces layers with model.set_submodule and matches names by splitting on dots",
           [(MATCH, 'return any(name.split(".")[-len(target.split(".")):] == target.split(".") for target in target_modules)'),
            ("        parent_name, _, child_name = name.rpartition(\".\")\n        parent = model.get_submodule(parent_name)  # \"\" is the model itself\n        " + REPLACE,
             "        model.set_submodule(name, LoRALinear(model.get_submodule(name), r=r, alpha=alpha, dropout=dropout))")]),
    # Conventions of public code bases (written here from their description)
    Mutant("loralib_merge_on_eval", "merges the update into base.weight on eval() and takes it out on train(), as microsoft/LoRA's loralib does",
           [("        self.merged = False\n        ### END SOLUTION\n",
             "        self.merged = False\n        ### END SOLUTION\n\n"
             "    def train(self, mode: bool = True):\n"
             "        super().train(mode)  # eval() calls train(False)\n"
             "        if mode:\n            self.unmerge()\n        else:\n            self.merge()\n"
             "        return self\n")]),
    Mutant("peft_fp32_delta_safe_merge", "as peft: the delta computed in float32 for half weights on CPU and cast back, merged into a "
           "clone that replaces weight.data (safe_merge), the LoRA input cast to A's dtype and the sum cast back to base(x)'s dtype",
           [(DELTA, "dtype = self.lora_A.dtype\n"
                    "        if dtype in (torch.float16, torch.bfloat16):\n"
                    "            return ((self.lora_B.float() @ self.lora_A.float()) * self.scaling).to(dtype)\n"
                    "        return (self.lora_B @ self.lora_A) * self.scaling"),
            (MERGE_ADD, "merged_weight = self.base.weight.data.clone()\n"
                        "            merged_weight += self.delta_weight()\n"
                        "            self.base.weight.data = merged_weight"),
            (LORA_PATH, "result_dtype = result.dtype\n"
                        "        lora_x = self.dropout(x).to(self.lora_A.dtype)\n"
                        "        result = result + nn.functional.linear(nn.functional.linear(lora_x, self.lora_A), self.lora_B) * self.scaling\n"
                        "        return result.to(result_dtype)")]),
    Mutant("litgpt_transpose_and_reset", "as litgpt: B zeroed and A drawn in a reset_parameters() method, the LoRA path with "
           "transpose(0, 1), merged by adding to weight.data",
           [("        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n",
             "        self.reset_parameters()\n"),
            ("        ### END SOLUTION\n\n    def delta_weight(self)",
             "        ### END SOLUTION\n\n"
             "    def reset_parameters(self) -> None:\n"
             "        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n"
             "        nn.init.zeros_(self.lora_B)\n\n"
             "    def delta_weight(self)"),
            (LORA_PATH, "lora = (self.dropout(x) @ self.lora_A.transpose(0, 1) @ self.lora_B.transpose(0, 1)) * self.scaling\n"
                        "        return result + lora"),
            (MERGE_ADD, "self.base.weight.data += self.delta_weight().to(self.base.weight.dtype)")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
