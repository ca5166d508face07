"""Module 01: RMSNorm, the normalisation layer of Llama, Mistral, Qwen and most recent LLMs.

RMSNorm rescales each vector by its root mean square: no mean is subtracted and there is no bias
(that would be LayerNorm). Read docs/01_rmsnorm.md first.
"""

import torch
from torch import nn
from grader import NotImplementedYet


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Normalise `x` over its last dimension by its root mean square, then scale by `weight`.

        rms(x) = sqrt(mean(x_i ** 2 over the last dimension) + eps)
        y      = (x / rms(x)) * weight

    Args:
        x: `(..., dim)`, any floating dtype; any number of leading dimensions.
        weight: optional `(dim,)` learnable gain, elementwise.
        eps: added *inside* the square root, so an all-zero row gives zeros and not NaN.

    Returns:
        `(..., dim)`. The statistics are computed in float32 whatever `x.dtype` is (squares of
        float16 values overflow above 256); the normalised `x / rms` is cast back to `x.dtype`
        *before* `weight` multiplies it, as transformers' `LlamaRMSNorm` does. Without a weight the
        result has `x.dtype`; with one, the dtype `weight * y` gives (a float32 weight and bf16 `x`
        give float32). That intermediate rounding is not graded: values are checked at the input
        dtype's tolerance, so staying in float32 until the end (transformers' `T5LayerNorm`) and
        casting once to the output dtype passes too.
    """
    raise NotImplementedYet("rms_norm")


class RMSNorm(nn.Module):
    """RMSNorm as a layer: `rms_norm` with a learnable `weight` of shape `(dim,)`, initialised to ones.

    The parameter is named `weight`, so a state dict of transformers' `LlamaRMSNorm` loads into it.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        """`dim`: size of the last dimension of the inputs (> 0, else ValueError). `eps`: see `rms_norm`."""
        super().__init__()
        raise NotImplementedYet("RMSNorm.__init__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(..., dim)` -> `(..., dim)`. A last dimension other than `dim` -> ValueError."""
        raise NotImplementedYet("RMSNorm.forward")
