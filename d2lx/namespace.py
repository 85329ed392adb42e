"""The reader's namespaces: ``import d2lx.torch as d2l`` and its three siblings, built one way.

A backend package (``d2lx.backends.<name>``) lists what it brings in
:func:`contents`: its classes (``Module``, ``Trainer``, the linear models,
``SGD``...), its row of d2l's alias table (``ops.ALIASES``) and its three
device functions. To that one table per backend this module adds what every
namespace shares (``DataModule``, ``ProgressBoard``, ``HyperParameters``,
``add_to_class``, ``Timer``, the plotting utilities, ``try_gpu``...), and
:func:`export` puts the result into ``d2lx/<name>.py``. Each name means what
it means in d2l 1.0.3's module for that framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from d2lx import data as _data
from d2lx import helpers, plotting
from d2lx.board import ProgressBoard
from d2lx.hyperparameters import HyperParameters, add_to_class

#: Names every backend namespace has, whatever the framework (besides the alias table).
SHARED = ("Module", "Trainer", "LinearRegressionScratch", "LinearRegression", "SGD", "DataModule",
          "SyntheticRegressionData", "ArrayData", "HyperParameters", "ProgressBoard", "add_to_class",
          "Timer", "use_svg_display", "set_figsize", "set_axes", "plot", "cpu", "gpu", "num_gpus",
          "try_gpu", "try_all_gpus", "BACKEND", "framework_version", "list_devices",
          "default_array_ops")


def contents(*, backend: str, classes: Mapping[str, Any], aliases: Mapping[str, Any],
             cpu: Callable[[], Any], gpu: Callable[[int], Any], num_gpus: Callable[[], int],
             default_array_ops: Callable[[], Any], framework_version: Callable[[], str],
             list_devices: Callable[[], list[str]], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``d2lx.<backend>`` holds, from what the backend package brings."""
    names: dict[str, Any] = {
        "BACKEND": backend,
        "DataModule": _data.DataModule,
        "ArrayData": _data.ArrayData,
        "SyntheticRegressionData": _data.bind_tensors(_data.SyntheticRegressionData, default_array_ops),
        "HyperParameters": HyperParameters,
        "ProgressBoard": ProgressBoard,
        "add_to_class": add_to_class,
        "Timer": helpers.Timer,
        "use_svg_display": plotting.use_svg_display,
        "set_figsize": plotting.set_figsize,
        "set_axes": plotting.set_axes,
        "plot": plotting.plot,
        "default_array_ops": default_array_ops,
        "framework_version": framework_version,
        "list_devices": list_devices,
        **helpers.device_helpers(cpu, gpu, num_gpus),
    }
    clash = set(names) & (set(aliases) | set(classes))
    if clash:
        raise RuntimeError(f"the {backend} namespace defines {sorted(clash)} twice")
    names.update(aliases)
    names.update(classes)
    names.update(extra or {})
    missing = [n for n in SHARED if n not in names]
    if missing:
        raise RuntimeError(f"the {backend} namespace lacks {missing}")
    return names


def export(namespace: dict[str, Any], backend: str) -> None:
    """Fill ``d2lx/<backend>.py``'s globals from ``d2lx.backends.<backend>.NAMESPACE``."""
    package = importlib.import_module(f"d2lx.backends.{backend}")
    names: dict[str, Any] = package.NAMESPACE
    namespace.update(names)
    namespace["__all__"] = sorted(names)

    def __getattr__(name: str) -> Any:
        if name == "plt":  # d2l.plt: pyplot, imported on first use (it is slow to import)
            plt = plotting.pyplot()
            namespace["plt"] = plt
            return plt
        raise AttributeError(f"module 'd2lx.{backend}' has no attribute {name!r}")

    namespace["__getattr__"] = __getattr__
