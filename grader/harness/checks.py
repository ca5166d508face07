"""Assertions whose failure messages teach.

A failed check says, in words: what was compared, what was expected and what came out (shape, dtype,
device, the worst element: where it is, its difference and what was allowed), and, when the wrong output
matches a known mistake, the mistake by name. The plugin then adds the chapter to read.

    from grader.harness.checks import assert_close, assert_raises

    assert_close(out, truth, what="rms_norm(x)", dtype=x.dtype,
                 mistakes={"you subtracted the mean: that is LayerNorm": layer_norm(x)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch

from grader.harness.errors import NotImplementedYet
from grader.harness.tolerances import Tolerance, tolerance_as_good_as, tolerance_for

Mistake = Union[torch.Tensor, Callable[[torch.Tensor], bool]]

__all__ = ["assert_close", "assert_raises", "assert_shape", "expect", "Tolerance", "tolerance_as_good_as", "tolerance_for"]


def expect(condition: Any, message: str) -> None:
    """Fail with `message` alone unless `condition` holds: the public tests' `assert`.

    A bare `assert` makes pytest print its introspection (`where 8 = <function ...>(Sequential(...`) and the
    loader's internal module names; a failed `expect` reads as the teaching message it carries, nothing more.
    """
    __tracebackhide__ = True
    if not condition:
        raise AssertionError(message)


def _shape(t: torch.Tensor | torch.Size | tuple) -> str:
    return "(" + ", ".join(str(s) for s in tuple(t)) + ")"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {_shape(value.shape)} and dtype {value.dtype}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} items"
    return f"{type(value).__name__} {value!r}"[:200]


def _plain(value: Any) -> Any:
    """A tensor as a plain `torch.Tensor`: a subclass the code under test returned (its `__torch_function__`)
    takes no part in the comparison that judges it."""
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            return value.as_subclass(torch.Tensor)
    return value


def assert_shape(actual: Any, shape: tuple[int, ...], *, what: str = "output") -> None:
    """`actual` is a tensor of exactly `shape`; otherwise say how it differs."""
    __tracebackhide__ = True
    actual = _plain(actual)
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what} should be a tensor of shape {_shape(shape)}, got {_describe(actual)}")
    if tuple(actual.shape) == tuple(shape):
        return
    message = f"{what} has shape {_shape(actual.shape)} but should have shape {_shape(shape)}."
    got, want = tuple(actual.shape), tuple(shape)
    if len(got) == len(want) - 1 and all(g == w for g, w in zip(got, want[:-1])):
        message += " A dimension is missing: did you reduce without keepdim=True?"
    elif len(got) == len(want) + 1 and got[-1] == 1 and got[:-1] == want:
        message += " There is an extra dimension of size 1: squeeze it, or reduce without keepdim."
    elif actual.numel() == torch.Size(want).numel():
        message += " The number of elements is right: a transpose, permute or view in the wrong order?"
    elif len(got) == len(want):
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        message += f" Dimension(s) {bad} differ: check which dimension you reduce over or concatenate along."
    raise AssertionError(message)


def _first_bad_index(bad: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.nonzero(bad.reshape(-1))[0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), bad.shape))


def _matches(actual: torch.Tensor, mistake: Mistake, tol: Tolerance) -> bool:
    if callable(mistake):
        try:
            return bool(mistake(actual))
        except Exception:
            return False
    wrong = mistake.detach().to(device="cpu", dtype=torch.float64)
    if wrong.shape != actual.shape:
        return False
    scale = float(wrong.abs().max()) if wrong.numel() else 0.0
    ok = (actual - wrong).abs() <= tol.atol * scale + tol.rtol * wrong.abs()
    return bool(ok.all()) and bool(torch.isfinite(actual).all() == torch.isfinite(wrong).all())


def assert_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    what: str = "output",
    dtype: torch.dtype | None = None,
    tol: Tolerance | None = None,
    mistakes: Mapping[str, Mistake] | None = None,
    check_device: bool = True,
) -> None:
    """`actual` equals `expected` within the tolerance of `dtype` on `actual`'s device.

    `expected` may be a float64 truth: `dtype` then names the dtype the result must have (default:
    `expected.dtype`). `mistakes` maps a sentence naming a known mistake to either the output that
    mistake would give or a predicate on the actual output; the first match is added to the message.
    """
    __tracebackhide__ = True
    actual, expected = _plain(actual), _plain(expected)
    want_dtype = dtype or expected.dtype
    assert_shape(actual, tuple(expected.shape), what=what)
    if actual.dtype != want_dtype:
        hint = ""
        if actual.dtype == torch.float32 and want_dtype in (torch.float16, torch.bfloat16):
            hint = " Cast the result back to the input's dtype at the end (compute in float32, return in the input dtype)."
        elif want_dtype == torch.float32 and actual.dtype in (torch.float16, torch.bfloat16):
            hint = " The result should follow torch's type promotion (e.g. a float32 weight times a bf16 tensor is float32): did you cast after multiplying?"
        raise AssertionError(f"{what} has dtype {actual.dtype} but should have dtype {want_dtype}.{hint}")
    if check_device and actual.device.type != expected.device.type and expected.device.type != "cpu":
        raise AssertionError(
            f"{what} is on {actual.device} but the input was on {expected.device}: "
            "create new tensors on the input's device (device=x.device)."
        )
    tol = tol or tolerance_for(want_dtype, actual.device)
    got = actual.detach().to(device="cpu", dtype=torch.float64)
    want = expected.detach().to(device="cpu", dtype=torch.float64)

    got_finite, want_finite = torch.isfinite(got), torch.isfinite(want)
    if not torch.equal(got_finite, want_finite):
        index = _first_bad_index(got_finite != want_finite)
        count = int((got_finite != want_finite).sum())
        message = (
            f"{what} has {count} non-finite value(s) where finite ones are expected (or the reverse): "
            f"at index {index} got {got[index].item():.6g}, expected {want[index].item():.6g}."
        )
        if not bool(got_finite.all()):
            message += " NaN or inf usually comes from an overflow in low precision or a division by zero."
        raise AssertionError(_with_mistake(message, got, mistakes, tol))

    scale = float(want[want_finite].abs().max()) if bool(want_finite.any()) else 0.0
    limit = tol.atol * scale + tol.rtol * want.abs()
    diff = torch.where(want_finite, (got - want).abs(), torch.zeros_like(got))
    same_inf = torch.where(want_finite, torch.ones_like(got, dtype=torch.bool), got == want)
    bad = (diff > limit) | ~same_inf
    if not bool(bad.any()):
        return
    # the element farthest outside its tolerance (the largest difference may sit within a large element's)
    beyond = torch.where(diff > limit, diff / limit.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(diff))
    worst = _first_bad_index(beyond == beyond.max()) if bool((diff > limit).any()) else _first_bad_index(bad)
    count, total = int(bad.sum()), bad.numel()
    message = (
        f"{what} is not close to the expected values "
        f"(shape {_shape(actual.shape)}, dtype {actual.dtype}, on {actual.device.type}).\n"
        f"  worst at index {worst}: got {got[worst].item():.6g}, expected {want[worst].item():.6g} "
        f"(difference {diff[worst].item():.4g}, allowed {limit[worst].item():.2g})\n"
        f"  {count} of {total} elements ({100 * count / total:.1f}%) are outside the tolerance "
        f"(rtol={tol.rtol:.2g}, atol={tol.atol:.2g} x max|expected|={scale:.3g})"
    )
    raise AssertionError(_with_mistake(message, got, mistakes, tol))


def _with_mistake(message: str, got: torch.Tensor, mistakes: Mapping[str, Mistake] | None, tol: Tolerance) -> str:
    __tracebackhide__ = True
    loose = tol.scaled(4.0)
    for sentence, mistake in (mistakes or {}).items():
        if _matches(got, mistake, loose):
            return f"{message}\n  Likely mistake: {sentence}"
    return message


def assert_raises(
    exception: type[BaseException], fn: Callable[..., Any], *args: Any, when: str, **kwargs: Any
) -> BaseException:
    """`fn(*args, **kwargs)` raises `exception` with a non-empty message; `when` names the bad input.

    A stub's `NotImplementedYet` passes through untouched, so the learner sees "not implemented yet".
    """
    __tracebackhide__ = True
    try:
        fn(*args, **kwargs)
    except NotImplementedYet:
        raise
    except exception as error:
        if not str(error).strip():
            raise AssertionError(
                f"{exception.__name__} raised {when} has an empty message: say what was wrong, "
                f"e.g. raise {exception.__name__}(f'... got {{value}}')"
            ) from None
        return error
    except Exception as error:
        raise AssertionError(
            f"expected {exception.__name__} {when}, but {type(error).__name__} was raised: {error}"
        ) from None
    raise AssertionError(f"expected {exception.__name__} {when}, but nothing was raised: check the argument first.")
