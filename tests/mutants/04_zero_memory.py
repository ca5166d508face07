"""Mutants of module 04 (ZeRO memory arithmetic): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

OPTIMIZER = "optimizer = optimizer_bytes * num_params / (num_gpus if stage >= 1 else 1)"
GRADS = "grads = grad_bytes * num_params / (num_gpus if stage >= 2 else 1)"
PARAMS = "params = param_bytes * num_params / (num_gpus if stage >= 3 else 1)"
TOTAL = "return float(params + grads + optimizer)"
INVERSE = "return int(gpu_bytes // per_param)"
SIGNATURE = "def model_state_bytes(num_params, num_gpus, stage, param_bytes=2, grad_bytes=2, optimizer_bytes=12)"
ELEMENTS = "elements = 3 * num_params if stage == 3 else 2 * num_params"

MUTANTS = [
    # model_state_bytes: which term each stage partitions
    Mutant("stage1_shards_gradients", "stage 1 divides the gradients by N too (that is stage 2)",
           [(GRADS, "grads = grad_bytes * num_params / (num_gpus if stage >= 1 else 1)")]),
    Mutant("stage2_keeps_gradients", "stage 2 leaves the gradients whole (same as stage 1)",
           [(GRADS, "grads = grad_bytes * num_params / (num_gpus if stage >= 3 else 1)")]),
    Mutant("params_sharded_from_stage2", "divides the 16-bit parameters by N already in stage 2",
           [(PARAMS, "params = param_bytes * num_params / (num_gpus if stage >= 2 else 1)")]),
    Mutant("params_sharded_from_stage1", "divides the 16-bit parameters by N together with the optimizer states",
           [(PARAMS, "params = param_bytes * num_params / (num_gpus if stage >= 1 else 1)")]),
    Mutant("stage0_shards_optimizer", "divides the optimizer states by N even without ZeRO",
           [(OPTIMIZER, "optimizer = optimizer_bytes * num_params / num_gpus")]),
    Mutant("k16_hardcoded", "uses K = 16 (DeepSpeed's figure) whatever optimizer_bytes says",
           [(OPTIMIZER, "optimizer = 16 * num_params / (num_gpus if stage >= 1 else 1)")]),
    Mutant("k12_hardcoded", "uses K = 12 whatever optimizer_bytes says",
           [(OPTIMIZER, "optimizer = 12 * num_params / (num_gpus if stage >= 1 else 1)")]),
    Mutant("stage3_keeps_params", "stage 3 leaves the 16-bit parameters whole (same as stage 2)",
           [(PARAMS, "params = param_bytes * num_params")]),
    Mutant("k8_no_master_weights", "K = 8 by default: Adam's two fp32 moments, the fp32 master weights forgotten",
           [(SIGNATURE, SIGNATURE.replace("optimizer_bytes=12", "optimizer_bytes=8"))]),
    Mutant("fp16_params_4_bytes", "counts each 16-bit parameter twice (16 bits read as 2 x 2 bytes)",
           [(PARAMS, "params = 2 * param_bytes * num_params / (num_gpus if stage >= 3 else 1)")]),
    Mutant("fp32_grads_by_default", "keeps the gradients in fp32 by default (grad_bytes=4), not fp16",
           [(SIGNATURE, SIGNATURE.replace("grad_bytes=2", "grad_bytes=4"))]),
    Mutant("grad_bytes_from_param_bytes", "sizes the gradients with param_bytes",
           [(GRADS, "grads = param_bytes * num_params / (num_gpus if stage >= 2 else 1)")]),
    Mutant("gib_instead_of_gb", "converts with 2**30 where the paper's GB is 1e9 (results 7.4% off)",
           [(TOTAL, "return float(params + grads + optimizer) * 1e9 / 2**30")]),
    Mutant("returns_gigabytes", "returns GB (divides by 1e9) where the contract asks for bytes",
           [(TOTAL, "return float(params + grads + optimizer) / 1e9")]),
    Mutant("rounds_to_printed_gb", "rounds to 0.1 GB like the paper's figure prints it",
           [(TOTAL, "return round((params + grads + optimizer) / 1e9, 1) * 1e9")]),
    Mutant("truncates_to_whole_bytes", "truncates the result to whole bytes (int()) as DeepSpeed's estimators print them; the "
           "contract asks for the exact value, fractions of a byte included",
           [(TOTAL, "return float(int(params + grads + optimizer))")]),
    Mutant("num_gpus_zero_accepted", "accepts num_gpus = 0 (a division by zero, or nonsense in stage 0)",
           [("    if num_gpus < 1:\n", "    if num_gpus < 0:\n")]),
    Mutant("negative_params_accepted", "accepts a negative number of parameters",
           [("    if num_params < 0:\n        raise ValueError(f\"num_params must be non-negative, got {num_params}\")\n    # Each",
             "    # Each")]),
    Mutant("stage_4_accepted", "checks only that the stage is not negative",
           [("    if stage not in (0, 1, 2, 3):\n        raise ValueError(f\"stage must be 0, 1, 2 or 3, got {stage!r}\")\n    if num_gpus",
             "    if stage < 0:\n        raise ValueError(f\"stage must be 0, 1, 2 or 3, got {stage!r}\")\n    if num_gpus")]),
    # max_params
    Mutant("max_params_plus_one", "returns the first psi that no longer fits",
           [(INVERSE, "return int(gpu_bytes // per_param) + 1")]),
    Mutant("max_params_minus_one", "returns one less than the largest psi that fits",
           [(INVERSE, "return int(gpu_bytes // per_param) - 1")]),
    Mutant("max_params_rounds_to_nearest", "rounds gpu_bytes / per_param to the nearest integer instead of down",
           [(INVERSE, "return round(gpu_bytes / per_param)")]),
    Mutant("max_params_ceil", "rounds gpu_bytes / per_param up",
           [(INVERSE, "return int(-(-gpu_bytes // per_param))")]),
    Mutant("max_params_gib_budget", "reads the budget as GiB where it is given in bytes of 1e9-byte GB",
           [(INVERSE, "return int(gpu_bytes * 2**30 / 1e9 // per_param)")]),
    Mutant("max_params_cluster_memory", "divides the memory of all N GPUs together instead of one GPU's",
           [(INVERSE, "return int(gpu_bytes * num_gpus // per_param)")]),
    Mutant("max_params_default_bytes", "forgets to pass the byte sizes on (uses the defaults)",
           [("per_param = model_state_bytes(1, num_gpus, stage, param_bytes, grad_bytes, optimizer_bytes)",
             "per_param = model_state_bytes(1, num_gpus, stage)")]),
    Mutant("max_params_negative_budget_accepted", "accepts a negative gpu_bytes",
           [("    if gpu_bytes < 0:\n", "    if False:\n")]),
    # communication_bytes
    Mutant("stage3_comm_2psi", "stage 3 moves 2 psi like the other stages",
           [(ELEMENTS, "elements = 2 * num_params")]),
    Mutant("stage2_comm_3psi", "stage 2 already moves 3 psi",
           [(ELEMENTS, "elements = 3 * num_params if stage >= 2 else 2 * num_params")]),
    Mutant("comm_counts_elements", "returns elements, not bytes (param_bytes ignored)",
           [("return float(elements * param_bytes)", "return float(elements)")]),
    # Well-known implementations that break the contract, named with the reason
    Mutant("deepspeed_int_of_the_sharded_part", "DeepSpeed's estimate_zero2_model_states_mem_needs: 2 psi + int(18 psi / N), the "
           "partitioned bytes truncated to whole bytes; the contract keeps the exact quotient",
           [(TOTAL, "return float(params + int(grads + optimizer)) if stage == 2 else float(params + grads + optimizer)")]),
]

ALTERNATIVES = [
    Mutant("exact_fractions", "computes in exact rational arithmetic and converts to float at the end",
           [(OPTIMIZER, "from fractions import Fraction\n    psi = Fraction(num_params)\n"
                        "    optimizer = Fraction(optimizer_bytes) * psi / (num_gpus if stage >= 1 else 1)"),
            (GRADS, "grads = Fraction(grad_bytes) * psi / (num_gpus if stage >= 2 else 1)"),
            (PARAMS, "params = Fraction(param_bytes) * psi / (num_gpus if stage >= 3 else 1)")]),
    Mutant("paper_formulas_by_stage", "writes the paper's four formulas out one by one",
           [(OPTIMIZER + "\n    " + GRADS + "\n    " + PARAMS + "\n    " + TOTAL,
             "p, g, k, psi, n = param_bytes, grad_bytes, optimizer_bytes, num_params, num_gpus\n"
             "    if stage == 0:\n        return float((p + g + k) * psi)\n"
             "    if stage == 1:\n        return float(p * psi + g * psi + k * psi / n)\n"
             "    if stage == 2:\n        return float(p * psi + (g + k) * psi / n)\n"
             "    return float((p + g + k) * psi / n)")]),
    Mutant("max_params_binary_search", "finds the largest psi that fits by bisection on model_state_bytes",
           [(INVERSE, "lo, hi = 0, 1\n"
                      "    while model_state_bytes(hi, num_gpus, stage, param_bytes, grad_bytes, optimizer_bytes) <= gpu_bytes:\n"
                      "        hi *= 2\n"
                      "    while hi - lo > 1:  # bytes(lo) fits, bytes(hi) does not\n"
                      "        mid = (lo + hi) // 2\n"
                      "        if model_state_bytes(mid, num_gpus, stage, param_bytes, grad_bytes, optimizer_bytes) <= gpu_bytes:\n"
                      "            lo = mid\n"
                      "        else:\n"
                      "            hi = mid\n"
                      "    return lo")]),
    Mutant("max_params_exact_closed_form", "inverts the per-stage coefficient in exact arithmetic",
           [("per_param = model_state_bytes(1, num_gpus, stage, param_bytes, grad_bytes, optimizer_bytes)",
             "from fractions import Fraction\n"
             "    model_state_bytes(0, num_gpus, stage)  # validates stage and num_gpus\n"
             "    shard = [Fraction(1, num_gpus) if stage >= s else 1 for s in (1, 2, 3)]\n"
             "    per_param = Fraction(optimizer_bytes) * shard[0] + Fraction(grad_bytes) * shard[1] + Fraction(param_bytes) * shard[2]"),
            (INVERSE, "return int(Fraction(gpu_bytes) // per_param)")]),
    Mutant("max_params_float_division", "floors the float quotient with math.floor",
           [(INVERSE, "import math\n    return math.floor(gpu_bytes / per_param)")]),
    Mutant("comm_explicit_branches", "spells the communication volume out per stage",
           [(ELEMENTS, "elements = {0: 2, 1: 2, 2: 2, 3: 3}[stage] * num_params")]),
    # Conventions of public code bases (written here from their description)
    Mutant("deepspeed_replicated_plus_sharded", "as DeepSpeed's estimators (without their int()): the bytes every GPU replicates "
           "plus the partitioned bytes divided by the number of GPUs",
           [(OPTIMIZER + "\n    " + GRADS + "\n    " + PARAMS + "\n    " + TOTAL,
             "total = param_bytes + grad_bytes + optimizer_bytes\n"
             "    replicated = {0: total, 1: param_bytes + grad_bytes, 2: param_bytes, 3: 0}[stage]\n"
             "    return float(replicated * num_params + (total - replicated) * num_params / num_gpus)")]),
    Mutant("bytes_per_parameter_coefficient", "as the ZeRO paper's Figure 1 reads: a per-parameter coefficient for the stage "
           "(2 + 2 + K/N for stage 1, ...) times psi",
           [(OPTIMIZER + "\n    " + GRADS + "\n    " + PARAMS + "\n    " + TOTAL,
             "p, g, k, n = param_bytes, grad_bytes, optimizer_bytes, num_gpus\n"
             "    per_parameter = {0: p + g + k, 1: p + g + k / n, 2: p + (g + k) / n, 3: (p + g + k) / n}[stage]\n"
             "    return float(per_parameter * num_params)")]),
    Mutant("partitioned_states_by_name", "as DeepSpeed's documentation describes the stages: the set of partitioned states per "
           "stage (optimizer states, gradients, parameters), each state's bytes divided by N when it is partitioned",
           [(OPTIMIZER + "\n    " + GRADS + "\n    " + PARAMS + "\n    " + TOTAL,
             "partitioned = [set(), {\"optimizer\"}, {\"optimizer\", \"gradients\"}, {\"optimizer\", \"gradients\", \"parameters\"}][stage]\n"
             "    sizes = {\"parameters\": param_bytes, \"gradients\": grad_bytes, \"optimizer\": optimizer_bytes}\n"
             "    return float(sum(size * num_params / (num_gpus if name in partitioned else 1) for name, size in sizes.items()))")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
