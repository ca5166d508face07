"""Module 03: LoRA, low-rank adaptation of a frozen linear layer (Hu et al., 2021), as peft implements it.

Instead of updating a weight `W` of shape `(out, in)`, LoRA freezes it and learns a low-rank update
`delta_W = B @ A * (alpha / r)` with `A: (r, in)` and `B: (out, r)`, r much smaller than in and out.
B starts at zero, so a freshly wrapped layer computes exactly what the base layer computed.
Read docs/03_lora.md first.
"""

import math

import torch
from torch import nn


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
        ### BEGIN SOLUTION
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got r={r}")
        self.base = base
        self.base.requires_grad_(False)  # weight and bias: only A and B are trained
        self.r = r
        self.scaling = alpha / r
        self.merged = False
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        # As nn.Linear (and peft): uniform on [-1/sqrt(in), 1/sqrt(in)]. B = 0 makes delta_W = 0 at start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        ### END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """The update `B @ A * scaling`, shape `(out_features, in_features)` like `base.weight`."""
        ### BEGIN SOLUTION
        return (self.lora_B @ self.lora_A) * self.scaling
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(..., in_features)` -> `(..., out_features)`.

        Unmerged: `base(x) + dropout(x) @ A.T @ B.T * scaling` (two thin matmuls through rank r; the
        full `(out, in)` update is never formed). Merged: `base(x)` alone, the update is in its weight.
        """
        ### BEGIN SOLUTION
        result = self.base(x)
        if self.merged:
            return result
        return result + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling
        ### END SOLUTION

    def merge(self) -> None:
        """Fold the update into `base.weight` for inference (no extra matmuls). A second call does nothing."""
        ### BEGIN SOLUTION
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True
        ### END SOLUTION

    def unmerge(self) -> None:
        """Take the update back out of `base.weight` (exact up to float rounding). Does nothing unless merged."""
        ### BEGIN SOLUTION
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False
        ### END SOLUTION


def inject_lora(model: nn.Module, target_modules: list[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> nn.Module:
    """Replace the targeted `nn.Linear` layers of `model` by `LoRALinear`s and freeze everything else.

    A layer is targeted when its qualified name (as `model.named_modules()` gives it, e.g.
    `"model.layers.0.self_attn.q_proj"`) equals a target or ends with `"." + target`: peft's rule, so
    `"q_proj"` matches every layer's q_proj, `"self_attn.q_proj"` too, and `"proj"` matches neither.
    The model is changed in place and returned. No `nn.Linear` matched -> ValueError.
    """
    ### BEGIN SOLUTION
    def is_target(name: str) -> bool:
        return any(name == target or name.endswith("." + target) for target in target_modules)

    # Collect first, replace after: replacing while iterating named_modules() would change what it walks.
    targets = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and is_target(name)]
    if not targets:
        raise ValueError(f"inject_lora: no nn.Linear of the model matches target_modules={list(target_modules)}")
    model.requires_grad_(False)  # freeze everything; the new A and B are created trainable
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)  # "" is the model itself
        setattr(parent, child_name, LoRALinear(getattr(parent, child_name), r=r, alpha=alpha, dropout=dropout))
    return model
    ### END SOLUTION


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameter elements (not tensors) that require grad; shared parameters count once."""
    ### BEGIN SOLUTION
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
    ### END SOLUTION
