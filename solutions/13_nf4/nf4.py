"""Module 13: QLoRA's 4-bit NormalFloat (NF4), stored the way bitsandbytes stores it, under a LoRA adapter.

Pretrained weights are roughly normally distributed. NF4 puts its 16 levels at quantiles of a normal
distribution, so that each level is used about equally often, scales each block of 64 weights by its
absmax, and packs two 4-bit indices per byte. QLoRA trains a LoRA adapter on top of such a frozen
4-bit base layer. Read docs/13_nf4.md first.
"""

import math

import torch
from torch import nn

# NF4_CODE: the 16 NormalFloat4 levels, a float32 tensor of shape (16,), ascending from -1.0 to 1.0,
# with 0.0 exactly (index 7), as in the QLoRA paper and bitsandbytes' get_4bit_type("nf4").
# Define it here, at module level. It is built from quantiles of the standard normal distribution
# (docs/13_nf4.md, "The 16 levels"): 8 positive levels and 7 negative ones, zero, then everything divided
# by the largest. `torch.special.ndtri(p)` is the normal quantile function. Typing the table of the
# paper's appendix is just as correct.
### BEGIN SOLUTION
NF4_OFFSET = 0.9677083  # QLoRA's outermost probability: the mean of 1 - 1/(2*15) and 1 - 1/(2*16)


def _normal_float_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The NF4 levels from normal quantiles, computed in float64, returned as float32 `(16,)`."""
    # 8 positive quantiles at probabilities from offset down to (excluding) 0.5, and 7 negative ones:
    # asymmetric, so that 0 is a level of its own and all 16 codes are used.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # (8,)
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # (7,)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).to(torch.float32)  # normalised to [-1, 1]: -1.0 and 1.0 exactly


NF4_CODE = _normal_float_levels()
### END SOLUTION


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
    ### BEGIN SOLUTION
    if blocksize <= 0 or w.numel() % blocksize != 0:
        raise ValueError(f"quantize_nf4: w.numel() = {w.numel()} is not divisible by blocksize = {blocksize}")
    blocks = w.reshape(-1, blocksize).to(torch.float32)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)  # all-zero block: 0 / 1 = 0
    scaled = blocks / safe.unsqueeze(1)  # in [-1, 1]
    code = NF4_CODE.to(w.device)
    # The nearest level: count how many midpoints between neighbouring levels lie below the value.
    midpoints = (code[:-1] + code[1:]) / 2  # (15,)
    index = torch.bucketize(scaled, midpoints).reshape(-1).to(torch.uint8)  # (numel,) in 0..15
    if index.numel() % 2:  # an odd count: pad one spare nibble
        index = torch.cat([index, index.new_zeros(1)])
    packed = (index[0::2] << 4) | index[1::2]  # first element in the high nibble
    return packed, absmax
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    numel = math.prod(shape)
    packed = packed.reshape(-1)
    high, low = packed >> 4, packed & 0x0F  # (bytes,) each
    index = torch.stack([high, low], dim=1).reshape(-1)[:numel]  # (numel,): high, low, high, low, ...
    values = NF4_CODE.to(packed.device)[index.long()]  # (numel,) float32 levels in [-1, 1]
    values = values.reshape(-1, blocksize) * absmax.to(torch.float32).unsqueeze(1)  # (n_blocks, blocksize)
    return values.reshape(shape).to(dtype)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    absmax = absmax.to(torch.float32).reshape(-1)
    n = absmax.numel()
    offset = absmax.mean()  # centring puts the scales around 0, so the symmetric 8-bit grid fits them
    centred = absmax - offset
    n_blocks = -(-n // blocksize)
    padded = torch.cat([centred, centred.new_zeros(n_blocks * blocksize - n)]).reshape(n_blocks, blocksize)
    scales = padded.abs().amax(dim=1)  # (n_blocks,)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    q = torch.round(padded * (127.0 / safe.unsqueeze(1))) + 128  # int8 range [-127, 127] shifted to [1, 255]
    return q.reshape(-1)[:n].to(torch.uint8), scales, offset
    ### END SOLUTION


def double_dequantize(q: torch.Tensor, scales: torch.Tensor, offset: torch.Tensor | float, blocksize: int = 256) -> torch.Tensor:
    """Undo `double_quantize`: the block scales `absmax` (float32 `(n,)`), each within its block's `scale / 127`."""
    ### BEGIN SOLUTION
    n = q.numel()
    per_value = scales.to(torch.float32).repeat_interleave(blocksize)[:n]  # (n,): each value's block scale
    return (q.reshape(-1).to(torch.float32) - 128) / 127.0 * per_value + offset
    ### END SOLUTION


def nf4_bits_per_parameter(blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> float:
    """Storage per weight, in bits: 4 for the index plus each weight's share of its block's scale.

    Without double quantization every block of `blocksize` weights carries a float32 absmax:
    `4 + 32 / blocksize` (4.5 for 64). With it, each block carries an 8-bit quantized absmax and
    every `dq_blocksize` of those share a float32 scale: `4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)`
    (4.127 for 64 and 256, the QLoRA paper's figure). The single offset per tensor is negligible and left out.
    """
    ### BEGIN SOLUTION
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        if not isinstance(base, nn.Linear):
            raise TypeError(f"QLoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got r={r}")
        weight = base.weight.detach()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.blocksize = blocksize
        self.scaling = alpha / r
        packed, absmax = quantize_nf4(weight, blocksize)
        self.register_buffer("weight_packed", packed)  # uint8 (out * in / 2,)
        self.register_buffer("weight_absmax", absmax)  # float32 (out * in / blocksize,)
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        else:
            self.bias = None
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(..., in_features)` -> `(..., out_features)` in `x.dtype`."""
        ### BEGIN SOLUTION
        shape = (self.out_features, self.in_features)
        weight = dequantize_nf4(self.weight_packed, self.weight_absmax, shape, self.blocksize, dtype=x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        result = nn.functional.linear(x, weight, bias)  # the dequantized weight lives only in this call
        lora = (x @ self.lora_A.to(x.dtype).T) @ self.lora_B.to(x.dtype).T  # through rank r
        return result + lora * self.scaling
        ### END SOLUTION
