"""d2lx: the d2l.ai chapter 3 training stack, written once, run on any framework.

Two ways to use it, as in d2l:

* ``from d2lx import torch as d2l`` (or ``jax``, ``tensorflow``, ``mxnet``):
  a namespace pinned to one backend.
* ``import d2lx.torch as d2l``: the same module.
* ``import d2lx as d2l``: every name of a backend namespace (``d2l.Trainer``,
  ``d2l.SyntheticRegressionData``, ``d2l.tensor``...) resolves to the active
  backend, chosen by ``d2lx.use_backend(name)`` > ``$D2LX_BACKEND`` > ``torch``.

``import d2lx`` imports no deep-learning framework; a backend is imported the
first time one of its names is used.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from d2lx import errors
from d2lx.board import ProgressBoard
from d2lx.data import ArrayData, DataModule
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
    NotFittedError,
    OutputError,
    ShapeMismatchError,
    UnknownBackendError,
)
from d2lx.history import History
from d2lx.hyperparameters import HyperParameters, add_to_class
from d2lx.loader import ArrayLoader
from d2lx.registry import current_backend_name, registered_backends, use_backend
from d2lx.seeding import get_seed, seed

__version__ = "0.1.0"

#: The names whose meaning depends on the framework; ``d2lx.<name>`` gives the active backend's.
BACKEND_NAMES = ("Module", "Trainer", "LinearRegressionScratch", "LinearRegression", "SGD",
                 "SyntheticRegressionData")


def backend() -> ModuleType:
    """The active backend's namespace module (``d2lx.torch``...), imported if needed."""
    from d2lx import registry

    return registry.load()


def _is_submodule(name: str) -> bool:
    here = Path(__file__).parent
    return (here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file()


def __getattr__(name: str) -> Any:
    """Backend modules (``d2lx.jax``) and the active backend's names (``d2lx.Trainer``, ``d2lx.tensor``)."""
    from d2lx import registry

    if name in registry.registered_backends() or name in registry.ALIASES:
        return registry.load(name)
    if name.startswith("__") or _is_submodule(name):  # `from d2lx import sweep` imports the submodule
        raise AttributeError(f"module 'd2lx' has no attribute {name!r}")
    namespace = registry.load()
    if hasattr(namespace, name):
        return getattr(namespace, name)
    raise AttributeError(f"module 'd2lx' has no attribute {name!r} (nor has the active backend, "
                         f"{registry.current_backend_name()!r})")


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
    "NotFittedError",
    "OutputError",
    "ProgressBoard",
    "ShapeMismatchError",
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
