"""d2lx: the d2l.ai chapter 3 training stack, written once, run on any framework.

Two ways to use it, as in d2l:

* ``from d2lx import torch as d2l`` (or ``jax``, ``tensorflow``, ``mxnet``):
  a namespace pinned to one backend.
* ``import d2lx as d2l``: framework names (``d2l.Trainer``, ``d2l.Module``...)
  resolve to the active backend, chosen by ``d2lx.use_backend(name)`` >
  ``$D2LX_BACKEND`` > ``torch``.

``import d2lx`` imports no deep-learning framework; a backend is imported the
first time one of its names is used.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from d2lx import errors
from d2lx.data import ArrayData, ArrayLoader, DataModule, SyntheticRegressionData
from d2lx.devices import DeviceSpec
from d2lx.errors import (
    ArgumentTypeError,
    BackendNotInstalledError,
    CheckpointError,
    D2lxError,
    DeviceUnavailableError,
    DivergenceError,
    InvalidArgumentError,
    NonFiniteDataError,
    ShapeMismatchError,
    UnknownBackendError,
)
from d2lx.history import History
from d2lx.hyperparameters import HyperParameters, add_to_class
from d2lx.registry import current_backend_name, registered_backends, use_backend
from d2lx.seeding import get_seed, seed

__version__ = "0.1.0"

#: Names every backend namespace provides; ``d2lx.<name>`` forwards to the active one.
BACKEND_NAMES = ("Module", "Trainer", "LinearRegressionScratch", "LinearRegression", "SGD")


def backend() -> ModuleType:
    """Return the active backend's namespace module (importing it if needed)."""
    from d2lx import registry

    return registry.load()


def __getattr__(name: str) -> Any:
    from d2lx import registry

    if name in BACKEND_NAMES:
        return getattr(registry.load(), name)
    if name in registry.registered_backends() or name in registry.ALIASES:
        return registry.load(name)
    raise AttributeError(f"module 'd2lx' has no attribute {name!r}")


__all__ = [
    "BACKEND_NAMES",
    "ArgumentTypeError",
    "ArrayData",
    "ArrayLoader",
    "BackendNotInstalledError",
    "CheckpointError",
    "D2lxError",
    "DataModule",
    "DeviceSpec",
    "DeviceUnavailableError",
    "DivergenceError",
    "History",
    "HyperParameters",
    "InvalidArgumentError",
    "NonFiniteDataError",
    "ShapeMismatchError",
    "SyntheticRegressionData",
    "UnknownBackendError",
    "add_to_class",
    "backend",
    "current_backend_name",
    "errors",
    "get_seed",
    "registered_backends",
    "seed",
    "use_backend",
]
