"""Argument checks shared by the core and every adapter.

Why a module of its own: the same bad argument (``lr="0.1"``, ``max_epochs=0``)
must fail with the same error type and wording on every backend, before any
framework is touched, so the checks live in the framework-free core.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

from d2lx.errors import ArgumentTypeError, InvalidArgumentError, NonFiniteDataError
from d2lx.loader import to_numpy


def _type_error(name: str, value: Any, expected: str, example: str) -> ArgumentTypeError:
    return ArgumentTypeError(
        f"{name} must be {expected}, got {type(value).__name__} {value!r}; "
        f"pass a number, e.g. {name}={example}"
    )


def check_int(name: str, value: Any, *, minimum: int | None = None, example: str = "1") -> int:
    """Return ``value`` as ``int`` if it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _type_error(name, value, "an integer", example)
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(
            f"{name} must be >= {minimum}, got {value}; pass e.g. {name}={example}"
        )
    return value


#: The largest finite float32: every backend computes in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    float32: bool = False,
    example: str = "0.03",
) -> float:
    """Return ``value`` as a finite ``float``; optionally require > 0 or >= 0.

    ``float32=True`` also refuses magnitudes beyond float32's range (3.4e38):
    a learning rate of 1e39 becomes ``inf`` in every framework's float32 step.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # NumPy / framework 0-d arrays are accepted if they convert cleanly.
        try:
            if getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == ():
                value = float(value)
            else:
                raise TypeError
        except (TypeError, ValueError):
            raise _type_error(name, value, "a real number", example) from None
    value = float(value)
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be finite, got {value}; pass e.g. {name}={example}")
    if positive and value <= 0:
        raise InvalidArgumentError(f"{name} must be > 0, got {value}; pass e.g. {name}={example}")
    if nonnegative and value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {value}; pass e.g. {name}={example}")
    if float32 and abs(value) > FLOAT32_MAX:
        raise InvalidArgumentError(
            f"{name}={value:g} is beyond float32's range (about 3.4e38), in which every backend "
            f"computes; pass e.g. {name}={example}"
        )
    return value


def check_finite_array(name: str, array: np.ndarray) -> None:
    """Raise :class:`NonFiniteDataError` if ``array`` holds NaN or infinity."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise NonFiniteDataError(
            f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), first at index "
            f"{first}; clean or impute the data (e.g. np.nan_to_num) before training"
        )


def as_float_array(name: str, value: Any, *, example: str) -> np.ndarray:
    """``value`` (a list, NumPy or any framework's array) as a finite float32 NumPy array.

    Refuses, with one clear message each, what would otherwise fail deep in a
    framework or silently change the data: ``None``, text, objects, complex
    numbers (the imaginary part would be dropped), NaN/inf, and values beyond
    float32's range (they would become inf on the device).
    """
    if value is None:
        raise ArgumentTypeError(f"{name} is None; pass numbers, e.g. {name}={example}")
    try:
        array = to_numpy(value)
    except (TypeError, ValueError) as exc:
        raise ArgumentTypeError(
            f"{name} could not be read as numbers ({exc}); pass e.g. {name}={example}") from None
    if array.dtype.kind == "V":  # ml_dtypes' bfloat16 and friends (JAX): floats NumPy can widen
        try:
            array = array.astype(np.float32)
        except (TypeError, ValueError):
            pass
    if array.dtype.kind in "OUSVMm":
        raise ArgumentTypeError(
            f"{name} must hold numbers, got an array of {array.dtype} "
            f"({type(value).__name__}); pass e.g. {name}={example}"
        )
    if array.dtype.kind == "c":
        raise ArgumentTypeError(
            f"{name} holds complex numbers, which real-valued training would silently truncate; "
            f"pass the real part (np.real) or split real and imaginary parts into features"
        )
    if array.dtype.kind != "f":
        array = array.astype(np.float64)  # integers and booleans: exact in float64
    check_finite_array(name, array)
    if array.dtype.itemsize > 4:  # float32 values cannot exceed float32's range; wider ones can
        too_large = np.abs(array) > FLOAT32_MAX
        if too_large.any():
            first = tuple(int(i) for i in np.argwhere(too_large)[0])
            raise InvalidArgumentError(
                f"{name} has {int(too_large.sum())} value(s) beyond float32's range (about 3.4e38), "
                f"first at index {first}; every backend computes in float32, where they would be inf: "
                "rescale the data"
            )
    return array.astype(np.float32, copy=False)


def check_scalar(name: str, value: Any, example: str) -> float:
    """A Python number or a one-element array of any framework, as a float32-range float."""
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return check_float(name, value, float32=True, example=example)  # "must be a real number"
    array = as_float_array(name, value, example=example).reshape(-1)
    if array.size != 1:
        raise InvalidArgumentError(f"{name} must be a single number, got {array.size} values")
    return float(array[0])


def check_memory(rows: int, features: int) -> None:
    """Refuse a synthetic dataset larger than this machine could hold, before allocating it."""
    needed = rows * (features + 1) * 8 * 2  # float64 while drawing, plus the float32 copies
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > available:
        raise InvalidArgumentError(
            f"{rows} examples x {features} features need about {needed / 2**30:.1f} GiB to generate, "
            f"more than this machine's {available / 2**30:.1f} GiB of memory; use fewer examples"
        )
