"""Module 14: mixed-precision training: dynamic loss scaling (for float16) and float32 master weights.

16-bit training halves the memory of weights, gradients and activations and runs on tensor cores, but
float16 has a narrow range (small gradients underflow to zero) and both 16-bit formats have few
mantissa bits (small updates vanish when added to a large weight). Loss scaling fixes the first,
float32 master weights the second. Read docs/14_mixed_precision.md first.
"""

import torch
from torch import nn
from grader import NotImplementedYet


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
        raise NotImplementedYet("DynamicLossScaler.__init__")

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss * scale`: backward through it gives gradients multiplied by the scale."""
        raise NotImplementedYet("DynamicLossScaler.scale")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide every gradient of `optimizer`'s parameters by the scale, in place; return True if all are finite.

        Call it yourself before clipping gradients; `step` then does not unscale again. A second call
        before `update()` raises RuntimeError (the gradients would be divided twice).
        """
        raise NotImplementedYet("DynamicLossScaler.unscale_")

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients (unless `unscale_` already did in this step), then call `optimizer.step()`
        only if they are all finite: an overflowing step is skipped and leaves the parameters untouched."""
        raise NotImplementedYet("DynamicLossScaler.step")

    def update(self) -> None:
        """Adapt the scale after a step: back off on an overflow, grow after `growth_interval` finite steps."""
        raise NotImplementedYet("DynamicLossScaler.update")

    def get_scale(self) -> float:
        """The current scale, a Python float."""
        raise NotImplementedYet("DynamicLossScaler.get_scale")


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
        raise NotImplementedYet("MasterWeightOptimizer.__init__")

    def step(self) -> None:
        """Give the masters the model's gradients (float32), step the inner optimizer, copy the masters back."""
        raise NotImplementedYet("MasterWeightOptimizer.step")

    def zero_grad(self) -> None:
        """Clear the gradients of the model and of the masters."""
        raise NotImplementedYet("MasterWeightOptimizer.zero_grad")


def mixed_precision_bytes(num_params: int, master_weights: bool = True, optimizer: str = "adam") -> int:
    """Bytes of model states for mixed-precision training of `num_params` parameters.

        16-bit weights (2) + 16-bit gradients (2)
        + float32 master weights (4)                 if master_weights
        + Adam's two float32 moments (4 + 4)         if optimizer == "adam"; plain "sgd" keeps no state

    Adam with master weights: 16 bytes per parameter, the ZeRO paper's 2 + 2 + 12. Any other
    `optimizer` name -> ValueError.
    """
    raise NotImplementedYet("mixed_precision_bytes")
