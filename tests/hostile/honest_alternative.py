"""An honest RMSNorm written another way, using what the frame watch and the audit must leave alone:
warnings, a namedtuple, an exception caught and formatted, functools."""

import functools
import traceback
import warnings
from collections import namedtuple

import torch
from torch import nn

Stats = namedtuple("Stats", "mean_square dtype")


@functools.lru_cache(maxsize=None)
def _note(dtype: torch.dtype) -> str:
    return str(dtype)


def _stats(x: torch.Tensor) -> Stats:
    return Stats(x.float().square().mean(-1, keepdim=True), x.dtype)


def rms_norm(x, weight=None, eps=1e-6):
    try:
        _note(x.dtype)
    except TypeError:
        traceback.format_exc()
    if x.dim() > 8:
        warnings.warn("a tensor of many dimensions", stacklevel=2)
    stats = _stats(x)
    normalised = (x.float() / torch.sqrt(stats.mean_square + eps)).to(stats.dtype)
    return normalised if weight is None else weight * normalised


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.shape[-1] != self.weight.numel():
            raise ValueError(f"expected a last dimension of {self.weight.numel()}, got {x.shape[-1]}")
        return rms_norm(x, self.weight, self.eps)
