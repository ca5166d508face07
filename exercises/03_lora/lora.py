"""Module 03: LoRA, low-rank adaptation of a frozen linear layer (Hu et al., 2021), as peft implements it.

Instead of updating a weight `W` of shape `(out, in)`, LoRA freezes it and learns a low-rank update
`delta_W = B @ A * (alpha / r)` with `A: (r, in)` and `B: (out, r)`, r much smaller than in and out.
B starts at zero, so a freshly wrapped layer computes exactly what the base layer computed.
Read docs/03_lora.md first.
"""

import math

import torch
from torch import nn
from grader import NotImplementedYet


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update (peft's `lora.Linear` with one adapter).

        y = base(x) + dropout(x) @ A.T @ B.T * scaling        scaling = alpha / r

    Attributes:
        base: the wrapped `nn.Linear`; its weight (and bias) are frozen (`requires_grad=False`).
        lora_A: parameter `(r, in_features)`, kaiming-uniform with a=sqrt(5) (nn.Linear's own init,
            so uniform on [-1/sqrt(in_features), 1/sqrt(in_features)]).
        lora_B: parameter `(out_features, r)`, zeros.
        scaling: `alpha / r`.
        merged: True while `B @ A * scaling` is folded into `base.weight`.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        """Wrap `base` (an `nn.Linear`, else TypeError) with a rank-`r` update (`r > 0`, else ValueError).

        `dropout` is the probability of dropping an input element on the LoRA path only (training mode).
        A and B live on the device and in the dtype of `base.weight`.
        """
        super().__init__()
        raise NotImplementedYet("LoRALinear.__init__")

    def delta_weight(self) -> torch.Tensor:
        """The update `B @ A * scaling`, shape `(out_features, in_features)` like `base.weight`."""
        raise NotImplementedYet("LoRALinear.delta_weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(..., in_features)` -> `(..., out_features)`.

        Unmerged: `base(x) + dropout(x) @ A.T @ B.T * scaling` (two thin matmuls through rank r; the
        full `(out, in)` update is never formed). Merged: `base(x)` alone, the update is in its weight.
        """
        raise NotImplementedYet("LoRALinear.forward")

    def merge(self) -> None:
        """Fold the update into `base.weight` for inference (no extra matmuls). A second call does nothing."""
        raise NotImplementedYet("LoRALinear.merge")

    def unmerge(self) -> None:
        """Take the update back out of `base.weight` (exact up to float rounding). Does nothing unless merged."""
        raise NotImplementedYet("LoRALinear.unmerge")


def inject_lora(model: nn.Module, target_modules: list[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> nn.Module:
    """Replace the targeted `nn.Linear` layers of `model` by `LoRALinear`s and freeze everything else.

    A layer is targeted when its qualified name (as `model.named_modules()` gives it, e.g.
    `"model.layers.0.self_attn.q_proj"`) equals a target or ends with `"." + target`: peft's rule, so
    `"q_proj"` matches every layer's q_proj, `"self_attn.q_proj"` too, and `"proj"` matches neither.
    The model is changed in place and returned. No `nn.Linear` matched -> ValueError.
    """
    raise NotImplementedYet("inject_lora")


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameter elements (not tensors) that require grad; shared parameters count once."""
    raise NotImplementedYet("trainable_parameters")
