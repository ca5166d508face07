# The wrong implementation every attack starts from: it earns no point on its own (rms_norm does not
# normalise, RMSNorm is not written). Each attack file is this, plus the attack; test_hostile.py joins them.
import torch
from torch import nn


def rms_norm(x, weight=None, eps=1e-6):
    return x if weight is None else weight * x


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        raise NotImplementedError("RMSNorm")
