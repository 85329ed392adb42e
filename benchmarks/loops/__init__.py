"""Per framework: the hand-written loops d2lx is measured against, and the reader's d2lx code.

Every ``benchmarks/loops/<backend>.py`` provides the same interface, used by
:mod:`benchmarks.methods`:

* ``FRAMEWORK``, ``framework_version()``; ``variants(kind)``: the loop
  variants worth timing for ``kind`` (one of :data:`KINDS`, or ``"loader"``
  for :class:`LoaderLoop`; the runner times each and keeps the fastest as
  "the hand-written loop").
* ``ArrayLoop(kind, arrays, lr, batch_size, init, variant)``: ``kind`` is
  ``"concise"`` (the framework's dense layer, MSE, its SGD), ``"scratch"``
  (explicit parameters, ``(y_hat - y)**2 / 2``, hand-written SGD) or
  ``"mlp"`` (dense -> ReLU -> dense, MSE, the framework's SGD). ``arrays`` is
  ``(X, y, X_val, y_val)`` float32 NumPy, placed on the device **once**;
  ``init`` the initial parameters in d2lx's layout (see
  :func:`benchmarks.workloads.initial_params`). ``run(epochs, rng)`` builds
  a fresh model from ``init`` and trains it: each epoch draws its order with
  ``rng.permutation(n)`` (as d2lx does), gathers the data once on the
  device, takes one step per minibatch (the last may be shorter), then
  computes the validation loss over minibatches of the same size. It returns
  a dict (see :func:`result`): ``params`` (NumPy, d2lx's layout),
  ``losses`` (per-epoch mean training loss, unweighted over steps, as d2lx
  records it) and ``val_losses`` (per-epoch validation loss, weighted by
  batch size, as d2lx records it). Reading these back waits for the device.
* ``make_loader(X, y, batch_size, shuffle, seed)``: the framework's own loader.
* ``LoaderLoop(train_loader, val_loader, lr, init, variant)``: the concise
  linear model trained over those loaders; ``run(epochs)`` as above.
* ``d2lx_mlp(d2l, init, lr)``: the d2lx side of the MLP workload, a
  ``d2l.Module`` subclass written as a reader would, with the framework's
  layers and SGD, starting from ``init``.

:func:`loader_data` is the d2lx side of the loader workload for every
backend: a ``d2l.DataModule`` whose ``get_dataloader`` returns the backend's
``make_loader(...)`` loaders.

The loops are the baseline, so each is written the fastest idiomatic way for
its framework: data already on the device, the step compiled where the
framework compiles (``jax.jit``, ``tf.function``, hybridized Gluon), no host
synchronisation inside an epoch. They import no d2lx: the d2lx functions
receive the namespace ``d2l`` as an argument.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

KINDS = ("concise", "scratch", "mlp")


def load(backend: str) -> ModuleType:
    """``benchmarks.loops.<backend>`` (imports the framework)."""
    return importlib.import_module(f"benchmarks.loops.{backend}")


def loader_data(d2l: Any, make_loader: Callable[..., Any], arrays: tuple[np.ndarray, ...], batch_size: int,
                seed: int) -> Any:
    """A reader's ``d2l.DataModule`` over the framework's own loaders (made once, re-iterated per epoch):
    a torch ``DataLoader``, a ``tf.data`` dataset, a Gluon ``DataLoader``, or JAX's list of NumPy batches."""
    X, y, X_val, y_val = arrays

    class LoaderData(d2l.DataModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = batch_size
            self.loaders = (make_loader(X, y, batch_size, True, seed),
                            make_loader(X_val, y_val, batch_size, False, seed))

        def get_dataloader(self, train: bool) -> Any:
            return self.loaders[0 if train else 1]

    return LoaderData()


class Frozen:
    """Initial parameters as a hashable value (equal by content).

    Frameworks that cache compiled code by the model's fields (flax modules
    are dataclasses; d2lx keys its compiled steps by them) reuse the code for
    a fresh model only if its fields compare equal: NumPy arrays do not.
    """

    __slots__ = ("arrays", "digest")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        h = hashlib.sha1()
        for k in sorted(self.arrays):
            h.update(k.encode())
            h.update(str(self.arrays[k].shape).encode())
            h.update(self.arrays[k].tobytes())
        self.digest = h.hexdigest()

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frozen) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Frozen({self.digest[:8]})"


def result(params: dict[str, Any], losses: list[float], val_losses: list[float]) -> dict[str, Any]:
    """A loop's return value, with parameters as float32 NumPy in d2lx's layout."""
    return {"params": {k: np.asarray(v, np.float32) for k, v in params.items()},
            "losses": [float(v) for v in losses], "val_losses": [float(v) for v in val_losses]}
