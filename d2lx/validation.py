"""Argument checks shared by the core and every adapter.

Why a module of its own: the same bad argument (``lr="0.1"``, ``max_epochs=0``)
must fail with the same error type and wording on every backend, before any
framework is touched, so the checks live in the framework-free core.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from d2lx.errors import ArgumentTypeError, InvalidArgumentError, NonFiniteDataError


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


def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    example: str = "0.03",
) -> float:
    """Return ``value`` as a finite ``float``; optionally require > 0 or >= 0."""
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
