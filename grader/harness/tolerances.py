"""Tolerances for comparing tensors, chosen per dtype and device in one place.

Every comparison in the suites is against a truth computed in float64 (or against a library that is
itself within rounding of that truth), so a tolerance only has to admit the rounding that a *correct*
implementation in the tested dtype can make, whatever its order of operations:

- `rtol` is relative to each expected element: about two units in the last place of the dtype
  (one rounding of the result plus one of an intermediate cast), wider for float32, whose errors are
  dominated by reductions over many elements rather than by the final rounding;
- `atol` is relative to the *magnitude* of the expected tensor (its largest absolute value), so that
  elements near zero, whose error comes from cancellation in a sum of large terms, are judged on the
  scale of the computation and not of their own tiny value.

CUDA kernels may reduce fp16 and bf16 products in reduced precision and in other orders: their
tolerances are doubled. Tests never carry a number of their own; they ask `tolerance_for`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # relative to each expected element
    atol: float  # relative to the largest |expected| of the tensor

    def scaled(self, factor: float) -> "Tolerance":
        return Tolerance(self.rtol * factor, self.atol * factor)


_CPU: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
    torch.float32: Tolerance(rtol=1e-5, atol=2e-6),
    torch.float16: Tolerance(rtol=2 * 2**-10, atol=2**-10),  # eps(fp16) = 2**-10
    torch.bfloat16: Tolerance(rtol=2 * 2**-7, atol=2**-7),  # eps(bf16) = 2**-7
}

_DEVICE_FACTOR = {"cpu": 1.0, "cuda": 2.0}


def tolerance_for(dtype: torch.dtype, device: torch.device | str = "cpu") -> Tolerance:
    """The tolerance for a result of `dtype` computed on `device`."""
    if dtype not in _CPU:
        raise KeyError(f"no tolerance defined for {dtype}: compare floating-point tensors only")
    kind = torch.device(device).type
    return _CPU[dtype].scaled(_DEVICE_FACTOR.get(kind, 2.0))


def tolerance_as_good_as(library: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype, device: torch.device | str = "cpu",
                         margin: float = 4.0) -> Tolerance:
    """The tolerance for a result of `dtype`, widened where the library's own result in `dtype` needs it.

    A deep computation (a whole model's logits: layers of matmuls, softmax, norms) rounds more than one
    operation does, by an amount that depends on its weights and inputs. A correct implementation may round
    as much as the library does, in any order of operations: the tolerance is `margin` times what the
    library's result (`library`, computed in `dtype`) needs against the float64 `truth`, never less than
    `tolerance_for(dtype, device)`. A mistake (a wrong position, a missing mask) is orders of magnitude larger.
    """
    tol = tolerance_for(dtype, device)
    got, want = library.detach().double().cpu(), truth.detach().double().cpu()
    if want.numel() == 0:
        return tol
    limit = (tol.atol * want.abs().max() + tol.rtol * want.abs()).clamp_min(torch.finfo(torch.float64).tiny)
    used = float(((got - want).abs() / limit).max())
    return tol.scaled(max(1.0, margin * used))
