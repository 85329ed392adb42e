"""d2l's ``HyperParameters`` and ``add_to_class``, framework-free.

``save_hyperparameters`` reads the caller's arguments from its frame, exactly
like d2l, so ``def __init__(self, num_inputs, lr): self.save_hyperparameters()``
makes ``self.num_inputs`` and ``self.lr`` without repeating every name. It also
keeps them in ``self.hparams`` so checkpoints and logs can record them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def add_to_class(Class: type) -> Callable[[F], F]:
    """Register the decorated function as a method of ``Class`` (d2l's notebook style).

    Returns the function unchanged, so it can still be called directly.
    """

    def wrapper(obj: F) -> F:
        setattr(Class, obj.__name__, obj)
        return obj

    return wrapper


class HyperParameters:
    """Mixin that turns ``__init__`` arguments into attributes."""

    hparams: dict[str, Any]

    def save_hyperparameters(self, ignore: Iterable[str] = ()) -> None:
        """Save the calling function's arguments (except ``ignore``) as attributes."""
        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        caller = frame.f_back
        try:
            _, _, _, local_vars = inspect.getargvalues(caller)
        finally:
            del frame, caller
        skip = set(ignore) | {"self"}
        hparams = {
            k: v for k, v in local_vars.items() if k not in skip and not k.startswith("_")
        }
        # Do not include __class__ (present when the caller used super()).
        hparams.pop("__class__", None)
        self.hparams = dict(hparams)
        for k, v in hparams.items():
            setattr(self, k, v)

