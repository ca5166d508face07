"""Module 14: mixed-precision training: dynamic loss scaling (for float16) and float32 master weights.

16-bit training halves the memory of weights, gradients and activations and runs on tensor cores, but
float16 has a narrow range (small gradients underflow to zero) and both 16-bit formats have few
mantissa bits (small updates vanish when added to a large weight). Loss scaling fixes the first,
float32 master weights the second. Read docs/14_mixed_precision.md first.
"""

import torch
from torch import nn


class DynamicLossScaler:
    """Dynamic loss scaling, as `torch.amp.GradScaler`: scale the loss up, unscale the gradients, skip
    the steps whose gradients overflowed, and adapt the scale.

        scaler.scale(loss).backward()
        scaler.step(optimizer)      # unscales (once), steps only if every gradient is finite
        scaler.update()             # overflow: scale *= backoff_factor, counter reset to 0
                                    # else: counter += 1; at growth_interval: scale *= growth_factor, counter 0

    A growth that would take the scale beyond float32's largest value is skipped (the counter is still
    reset), as GradScaler does.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000):
        """The scale starts at `init_scale`; it grows by `growth_factor` after `growth_interval` finite steps in a row."""
        ### BEGIN SOLUTION
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0  # finite steps in a row since the last growth or overflow
        self._found_inf = None  # None until unscale_ runs in this step; then whether it found inf/NaN
        ### END SOLUTION

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss * scale`: backward through it gives gradients multiplied by the scale."""
        ### BEGIN SOLUTION
        return loss * self._scale
        ### END SOLUTION

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide every gradient of `optimizer`'s parameters by the scale, in place; return True if all are finite.

        Call it yourself before clipping gradients; `step` then does not unscale again. A second call
        before `update()` raises RuntimeError (the gradients would be divided twice).
        """
        ### BEGIN SOLUTION
        if self._found_inf is not None:
            raise RuntimeError("unscale_() has already been called since the last update(): the gradients are unscaled")
        finite = True
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad.div_(self._scale)
                finite = finite and bool(torch.isfinite(p.grad).all())  # inf / scale is still inf, NaN stays NaN
        self._found_inf = not finite
        return finite
        ### END SOLUTION

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients (unless `unscale_` already did in this step), then call `optimizer.step()`
        only if they are all finite: an overflowing step is skipped and leaves the parameters untouched."""
        ### BEGIN SOLUTION
        if self._found_inf is None:
            self.unscale_(optimizer)
        if not self._found_inf:
            optimizer.step()
        ### END SOLUTION

    def update(self) -> None:
        """Adapt the scale after a step: back off on an overflow, grow after `growth_interval` finite steps."""
        ### BEGIN SOLUTION
        if self._found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                grown = self._scale * self.growth_factor
                if grown <= torch.finfo(torch.float32).max:  # GradScaler keeps its scale in float32
                    self._scale = grown
                self._growth_tracker = 0
        self._found_inf = None  # the next step unscales again
        ### END SOLUTION

    def get_scale(self) -> float:
        """The current scale, a Python float."""
        ### BEGIN SOLUTION
        return self._scale
        ### END SOLUTION


class MasterWeightOptimizer:
    """An optimizer for a bf16/fp16 model that keeps float32 master copies of its parameters.

        step():  master.grad = model.grad in float32
                 inner optimizer steps on the masters (its state, e.g. Adam's moments, is float32 too)
                 model parameter <- master, rounded to the model's dtype

    Small updates accumulate in the masters even when each one is below half a 16-bit step of the
    weight, where adding them to the 16-bit weight directly would round them away.
    """

    def __init__(self, model: nn.Module, optimizer_cls: type = torch.optim.AdamW, **kwargs):
        """Make float32 copies of `model`'s trainable parameters and `optimizer_cls(masters, **kwargs)`."""
        ### BEGIN SOLUTION
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [p.detach().to(torch.float32, copy=True).requires_grad_(True) for p in self.params]
        self.optimizer = optimizer_cls(self.masters, **kwargs)
        ### END SOLUTION

    def step(self) -> None:
        """Give the masters the model's gradients (float32), step the inner optimizer, copy the masters back."""
        ### BEGIN SOLUTION
        for p, master in zip(self.params, self.masters):
            master.grad = None if p.grad is None else p.grad.detach().to(torch.float32)
        self.optimizer.step()
        with torch.no_grad():
            for p, master in zip(self.params, self.masters):
                p.copy_(master)  # rounds to the model's dtype: the only rounding of the update
        ### END SOLUTION

    def zero_grad(self) -> None:
        """Clear the gradients of the model and of the masters."""
        ### BEGIN SOLUTION
        for p in self.params:
            p.grad = None
        for master in self.masters:
            master.grad = None
        ### END SOLUTION


def mixed_precision_bytes(num_params: int, master_weights: bool = True, optimizer: str = "adam") -> int:
    """Bytes of model states for mixed-precision training of `num_params` parameters.

        16-bit weights (2) + 16-bit gradients (2)
        + float32 master weights (4)                 if master_weights
        + Adam's two float32 moments (4 + 4)         if optimizer == "adam"; plain "sgd" keeps no state

    Adam with master weights: 16 bytes per parameter, the ZeRO paper's 2 + 2 + 12. Any other
    `optimizer` name -> ValueError.
    """
    ### BEGIN SOLUTION
    optimizer_state = {"adam": 8, "sgd": 0}
    if optimizer not in optimizer_state:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    per_parameter = 2 + 2 + (4 if master_weights else 0) + optimizer_state[optimizer]
    return int(num_params) * per_parameter
    ### END SOLUTION
