"""Module 13: QLoRA's 4-bit NormalFloat (NF4), stored the way bitsandbytes stores it, under a LoRA adapter.

Pretrained weights are roughly normally distributed. NF4 puts its 16 levels at quantiles of a normal
distribution, so that each level is used about equally often, scales each block of 64 weights by its
absmax, and packs two 4-bit indices per byte. QLoRA trains a LoRA adapter on top of such a frozen
4-bit base layer. Read docs/13_nf4.md first.
"""

import math

import torch
from torch import nn
from grader import NotImplementedYet

# NF4_CODE: the 16 NormalFloat4 levels, a float32 tensor of shape (16,), ascending from -1.0 to 1.0,
# with 0.0 exactly (index 7), as in the QLoRA paper and bitsandbytes' get_4bit_type("nf4").
# Define it here, at module level. It is built from quantiles of the standard normal distribution
# (docs/13_nf4.md, "The 16 levels"): 8 positive levels and 7 negative ones, zero, then everything divided
# by the largest. `torch.special.ndtri(p)` is the normal quantile function. Typing the table of the
# paper's appendix is just as correct.


def quantize_nf4(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `w` to NF4, blockwise, as bitsandbytes' `quantize_4bit(w, blocksize, quant_type="nf4")`.

        blocks  = w.flatten() split into n_blocks = numel / blocksize rows of `blocksize` values
        absmax  = max |block|                                  (float32, one per block)
        index   = the nearest NF4 level to value / absmax      (0..15)
        packed  = two indices per byte, the FIRST element in the HIGH nibble: (i0 << 4) | i1

    Args:
        w: any shape, float32, float16 or bfloat16; `w.numel()` must be divisible by `blocksize`
            (else ValueError).
        blocksize: values per block (QLoRA uses 64).

    Returns:
        `(packed, absmax)`: `packed` uint8 of shape `(ceil(numel / 2),)`, `absmax` float32 of shape
        `(n_blocks,)`, both on `w`'s device. An all-zero block has absmax 0 and quantizes to the level
        0.0 (index 7), with no NaN on the way.
    """
    raise NotImplementedYet("quantize_nf4")


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Undo `quantize_nf4`: unpack the indices, look up their levels, multiply by each block's absmax.

    Args:
        packed: uint8 `(ceil(numel / 2),)` (any shape holding those bytes), high nibble first.
        absmax: float32 `(n_blocks,)`.
        shape: the shape of the tensor that was quantized (numel = prod(shape)).
        blocksize: the block size it was quantized with.
        dtype: the dtype of the result.

    Returns:
        A tensor of `shape` and `dtype` on `packed`'s device: `NF4_CODE[index] * absmax[block]`,
        computed in float32 and cast once.
    """
    raise NotImplementedYet("dequantize_nf4")


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """QLoRA's double quantization: store the float32 block scales themselves in 8 bits.

        offset  = mean(absmax)                                     (the scales are all positive)
        centred = absmax - offset, split into blocks of `blocksize`
        scales  = max |block of centred|                           (float32, one per block)
        q       = an 8-bit code of centred / scales                (here: linear, round(127 * c / s) + 128)

    Args:
        absmax: float32 `(n,)`, the block scales of `quantize_nf4`.
        blocksize: scales per block of the second quantization (QLoRA and bitsandbytes use 256).
            `n` need not be divisible by it: the last block may be shorter.

    Returns:
        `(q, scales, offset)`: `q` uint8 `(n,)`, `scales` float32 `(ceil(n / blocksize),)`, `offset` a
        0-dim float32 tensor. `double_dequantize` restores each value within its block's `scale / 127`.
    """
    raise NotImplementedYet("double_quantize")


def double_dequantize(q: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor | float, blocksize: int = 256) -> torch.Tensor:
    """Undo `double_quantize`: the block scales `absmax` (float32 `(n,)`), each within its block's `scale / 127`."""
    raise NotImplementedYet("double_dequantize")


def nf4_bits_per_parameter(blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> float:
    """Storage per weight, in bits: 4 for the index plus each weight's share of its block's scale.

    Without double quantization every block of `blocksize` weights carries a float32 absmax:
    `4 + 32 / blocksize` (4.5 for 64). With it, each block carries an 8-bit quantized absmax and
    every `dq_blocksize` of those share a float32 scale: `4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)`
    (4.127 for 64 and 256, the QLoRA paper's figure). The single offset per tensor is negligible and left out.
    """
    raise NotImplementedYet("nf4_bits_per_parameter")


class QLoRALinear(nn.Module):
    """A frozen NF4-quantized linear layer plus a trainable LoRA update (QLoRA).

        y = x @ dequantize(W).T + bias + x @ A.T @ B.T * (alpha / r)        in x.dtype

    The base weight is kept only as NF4 (packed indices and block scales, as buffers): the module holds
    no floating-point copy of it, anywhere (the point of QLoRA is that the full weight never sits in
    memory). It is dequantized on the fly in `forward`. The bias stays unquantized and frozen.
    `lora_A` `(r, in_features)` (kaiming-uniform with a=sqrt(5), as peft) and `lora_B`
    `(out_features, r)` (zeros) are trainable parameters in the base weight's dtype, as in module 03.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, blocksize: int = 64):
        """Quantize `base.weight` to NF4 with `blocksize` and add a rank-`r` LoRA update scaled by `alpha / r`."""
        super().__init__()
        raise NotImplementedYet("QLoRALinear.__init__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(..., in_features)` -> `(..., out_features)` in `x.dtype`."""
        raise NotImplementedYet("QLoRALinear.forward")
