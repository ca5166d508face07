"""Mutants of module 14 (mixed precision): the mistakes learners make. The hidden suite must reject each one."""

from mutation import Mutant

BACKOFF = "            self._scale *= self.backoff_factor\n            self._growth_tracker = 0\n"
GROW_IF = "            if self._growth_tracker == self.growth_interval:"
OVERFLOW_CHECK = "                if grown <= torch.finfo(torch.float32).max:  # GradScaler keeps its scale in float32"
DIVIDE = "                p.grad.div_(self._scale)"
FINITE = "                finite = finite and bool(torch.isfinite(p.grad).all())  # inf / scale is still inf, NaN stays NaN"
STEP = "        if self._found_inf is None:\n            self.unscale_(optimizer)\n        if not self._found_inf:\n            optimizer.step()\n"
MASTERS = "self.masters = [p.detach().to(torch.float32, copy=True).requires_grad_(True) for p in self.params]"
COPY_BACK = "                p.copy_(master)  # rounds to the model's dtype: the only rounding of the update"
BYTES = "per_parameter = 2 + 2 + (4 if master_weights else 0) + optimizer_state[optimizer]"

MUTANTS = [
    Mutant("no_backoff", "never reduces the scale on an overflow (only resets the counter)",
           [(BACKOFF, "            self._growth_tracker = 0\n")]),
    Mutant("counter_not_reset_on_overflow", "keeps counting finite steps across an overflow",
           [(BACKOFF, "            self._scale *= self.backoff_factor\n")]),
    Mutant("counter_not_reset_after_growth", "does not restart the count after a growth (grows at every later step)",
           [(GROW_IF, "            if self._growth_tracker >= self.growth_interval:"),
            ("                    self._scale = grown\n                self._growth_tracker = 0\n", "                    self._scale = grown\n")]),
    Mutant("grows_one_step_early", "grows after growth_interval - 1 finite steps",
           [(GROW_IF, "            if self._growth_tracker == self.growth_interval - 1 or self.growth_interval == 1:")]),
    Mutant("float32_overflow_not_skipped", "grows the scale to inf (beyond float32's largest value)",
           [(OVERFLOW_CHECK, "                if True:")]),
    Mutant("unscale_twice", "step unscales again after an explicit unscale_",
           [(STEP, "        self._found_inf = None\n        self.unscale_(optimizer)\n        if not self._found_inf:\n            optimizer.step()\n")]),
    Mutant("second_unscale_allowed", "a second unscale_ before update divides again instead of raising",
           [('            raise RuntimeError("unscale_() has already been called since the last update(): the gradients are unscaled")',
             "            pass")]),
    Mutant("steps_on_inf_gradients", "calls optimizer.step() even when a gradient is inf or NaN",
           [(STEP, "        if self._found_inf is None:\n            self.unscale_(optimizer)\n        optimizer.step()\n")]),
    Mutant("nan_not_detected", "checks only for inf (torch.isinf), so NaN gradients are stepped on",
           [(FINITE, "                finite = finite and not bool(torch.isinf(p.grad).any())")]),
    Mutant("scales_gradients_not_loss", "leaves the loss unscaled (scaling gradients after backward is too late for float16)",
           [("        return loss * self._scale\n", "        return loss\n"), (DIVIDE, "                pass")]),
    Mutant("unscale_multiplies", "multiplies the gradients by the scale instead of dividing",
           [(DIVIDE, "                p.grad.mul_(self._scale)")]),
    Mutant("masters_not_copied_back", "steps the float32 masters but never copies them into the model",
           [(COPY_BACK, "                pass")]),
    Mutant("masters_in_model_dtype", "keeps the master copies in the model's 16-bit dtype",
           [(MASTERS, "self.masters = [p.detach().clone().requires_grad_(True) for p in self.params]")]),
    Mutant("optimizer_on_model_params", "steps the inner optimizer on the 16-bit model parameters directly",
           [("self.optimizer = optimizer_cls(self.masters, **kwargs)", "self.optimizer = optimizer_cls(self.params, **kwargs)")]),
    Mutant("zero_grad_keeps_model_grads", "zero_grad clears only the masters' gradients (the model's accumulate)",
           [("        for p in self.params:\n            p.grad = None\n", "")]),
    Mutant("bytes_without_gradients", "forgets the 16-bit gradients (14 bytes per parameter for Adam)",
           [(BYTES, "per_parameter = 2 + (4 if master_weights else 0) + optimizer_state[optimizer]")]),
    Mutant("bytes_moments_as_16_bit", "counts Adam's moments as 2 bytes each",
           [('optimizer_state = {"adam": 8, "sgd": 0}', 'optimizer_state = {"adam": 4, "sgd": 0}')]),
    Mutant("bytes_accepts_any_optimizer", "treats an unknown optimizer name as SGD instead of raising",
           [("    if optimizer not in optimizer_state:\n        raise ValueError", "    if optimizer not in optimizer_state and False:\n        raise ValueError"),
            ("optimizer_state[optimizer]", "optimizer_state.get(optimizer, 0)")]),
]

ALTERNATIVES = [
    Mutant("reciprocal_unscale", "multiplies by the float32 reciprocal of the scale, as GradScaler's foreach kernel does",
           [(DIVIDE, "                p.grad.mul_(torch.tensor(1.0 / self._scale, dtype=torch.float32).to(p.grad.dtype))")]),
    Mutant("tensor_scale", "keeps the scale and the counter as float32/int32 tensors and updates them like torch._amp_update_scale_",
           [("        self._scale = float(init_scale)\n", "        self._scale = torch.tensor(float(init_scale), dtype=torch.float32)\n"),
            ("        return self._scale\n        ### END SOLUTION\n\n\nclass", "        return float(self._scale)\n        ### END SOLUTION\n\n\nclass"),
            ("                grown = self._scale * self.growth_factor\n", "                grown = self._scale * self.growth_factor\n                grown = grown if bool(torch.isfinite(grown)) else float('inf')\n"),
            (DIVIDE, "                p.grad.div_(self._scale.to(p.grad.device))"),
            ("        return loss * self._scale\n", "        return loss * self._scale.to(loss.device)\n")]),
    Mutant("foreach_unscale", "unscales and checks all gradients at once with torch._foreach_mul_ and one stacked isfinite, as apex and GradScaler do",
           [("        finite = True\n        for group in optimizer.param_groups:\n            for p in group[\"params\"]:\n                if p.grad is None:\n                    continue\n"
             + DIVIDE + "\n" + FINITE + "\n",
             "        grads = [p.grad for group in optimizer.param_groups for p in group[\"params\"] if p.grad is not None]\n"
             "        torch._foreach_mul_(grads, 1.0 / self._scale)\n"
             "        finite = all(bool(torch.isfinite(g).all()) for g in grads)\n")]),
    Mutant("fp32_grad_buffers", "copies the model's gradients into float32 .grad buffers of the masters in place, as DeepSpeed's FP16 optimizer does",
           [("            master.grad = None if p.grad is None else p.grad.detach().to(torch.float32)\n",
             "            if p.grad is None:\n                master.grad = None\n            elif master.grad is None:\n"
             "                master.grad = p.grad.detach().to(torch.float32)\n            else:\n                master.grad.copy_(p.grad)\n")]),
]

# Mutants that no fast, torch-only public test can catch, with the reason; every other mutant fails a public
# test (tests/test_modules.py checks it, and that at most a third of the mutants are here).
HIDDEN_ONLY = {}
