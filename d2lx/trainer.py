"""The framework-neutral ``Trainer``: options, ``fit``, preparing data and model, checkpoints.

The core owns the control flow (see :mod:`d2lx.step` for the contract):
``fit`` prepares data and model, builds the adapter's :class:`~d2lx.step.Step`
and runs the epochs of :class:`d2lx.epoch_loop.EpochLoop`, whose default
``fit_epoch`` iterates the loaders (or hands d2lx's own loaders to the step's
compiled epoch), records the losses the step returns, raises on divergence
and validates. A reader's d2l-style ``fit_epoch``
(``@d2l.add_to_class(d2l.Trainer)``) replaces that default and still gets
history, board, divergence stop and checkpoints: its ``self.plot('loss',
...)`` calls reach :meth:`TrainerBase.observe`.

An adapter's ``Trainer`` implements the hooks marked below: devices, array
primitives, placing the model, building the step, and the optimizer's and
model's state for checkpoints.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from d2lx import resume
from d2lx.batches import as_loader, check_same_features, first_batch, known_length
from d2lx.data import DataModule
from d2lx.devices import DeviceSpec, resolve_devices
from d2lx.epoch_loop import EpochLoop
from d2lx.errors import ArgumentTypeError, InvalidArgumentError
from d2lx.history import History
from d2lx.hyperparameters import HyperParameters
from d2lx.loader import ArrayLoader, ArrayOps, Batch
from d2lx.module import ModuleBase
from d2lx.outputs import check_output_path
from d2lx.reporting import Reporting
from d2lx.step import Step
from d2lx.validation import check_float, check_int


class TrainerBase(Reporting, EpochLoop, HyperParameters):
    """d2l's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` plus d2lx options.

    Keyword-only options:

    * ``device``: ``"cpu"``, ``"gpu"`` or ``"gpu:N"`` (default: ``num_gpus``,
      then ``$D2LX_DEVICE``, then CPU). A missing GPU is an error, never a
      silent CPU run.
    * ``steps_per_execution``: optimizer steps per compiled call on backends
      that fuse steps (like Keras' option); results equal step by step.
      JAX and TensorFlow fuse on any device, PyTorch on a GPU (CUDA graphs).
    * ``progress``: ``True``/``False``, or ``None``: on in a terminal or
      notebook unless ``$CI`` is set.
    * ``plot``: an image path (``.png``, ``.svg``, ``.pdf``); the model's
      board (d2l's loss curves) is written there after ``fit``.
    * ``check_finite``: refuse (and stop at) the first step whose loss, or
      whose updated parameters, are NaN/inf (default on).
    * ``callbacks``: functions ``fn(trainer)`` called after every epoch; one
      with an ``on_fit_end(trainer)`` method also hears when ``fit`` ends,
      even by an error (:class:`~d2lx.checkpoint.ModelCheckpoint` frees its
      file then).
    * ``devices`` / ``strategy``: ``devices=N`` splits every global batch
      across N devices on the framework's own engine (``num_gpus=N`` means
      ``device="gpu", devices=N``); it ends where one device ends.
    """

    backend_name: ClassVar[str] = "?"
    #: The kinds of device (``"cpu"``, ``"gpu"``) where ``steps_per_execution > 1`` fuses steps;
    #: elsewhere the option warns that it changes nothing.
    fused_devices: ClassVar[frozenset[str]] = frozenset({"cpu", "gpu"})
    #: The backend's ``d2l.Module`` class, its framework's name and what it is built on: the model
    #: ``fit`` accepts, and the words of the error that refuses any other.
    module_class: ClassVar[type] = ModuleBase
    module_kind: ClassVar[str] = ""
    module_base: ClassVar[str] = ""

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0, *,
                 device: str | None = None, steps_per_execution: int = 1, progress: bool | None = None,
                 plot: str | Path | None = None, check_finite: bool = True,
                 callbacks: Sequence[Callable[[TrainerBase], None]] = (), devices: int | None = None,
                 strategy: str | None = None) -> None:
        self.max_epochs = check_int("max_epochs", max_epochs, minimum=1, example="3")
        self.num_gpus = check_int("num_gpus", num_gpus, minimum=0, example="1")
        self.gradient_clip_val = check_float("gradient_clip_val", gradient_clip_val, nonnegative=True,
                                             float32=True, example="1.0")
        self.steps_per_execution = check_int("steps_per_execution", steps_per_execution, minimum=1,
                                             example="32")
        if progress is not None and not isinstance(progress, bool):
            raise ArgumentTypeError(f"progress must be True, False or None, got {progress!r}")
        self.progress = progress
        self.plot_path = None if plot is None else check_output_path("plot", plot, image=True)
        self.check_finite = bool(check_finite)
        if isinstance(callbacks, (str, bytes)) or not all(callable(cb) for cb in callbacks):
            raise ArgumentTypeError("callbacks must be a sequence of functions fn(trainer)")
        self.callbacks = list(callbacks)
        self.device_specs, self.strategy = resolve_devices(device, self.num_gpus, devices, strategy)
        self.device_spec: DeviceSpec = self.device_specs[0]
        if self.steps_per_execution > 1 and self.device_spec.kind not in self.fused_devices:
            names = {"cpu": "the CPU", "gpu": "a GPU"}
            kinds = " or ".join(names.get(kind, kind) for kind in sorted(self.fused_devices))
            where = f"fuses steps only on {kinds}" if kinds else "has no fused path"
            warnings.warn(f"the {self.backend_name} backend {where}: steps_per_execution="
                          f"{self.steps_per_execution} runs ordinary steps on {self.device_spec}, one at a "
                          f"time (same results)", UserWarning, stacklevel=2)
        self.hparams = {"max_epochs": self.max_epochs, "num_gpus": self.num_gpus,
                        "gradient_clip_val": self.gradient_clip_val,
                        "steps_per_execution": self.steps_per_execution,
                        "devices": len(self.device_specs), "strategy": self.strategy}
        self.device = self._native_device(self.device_spec)
        if self.strategy is not None:
            self._setup_data_parallel(self.device_specs)
        self.gpus = [self.device] if self.device_spec.kind == "gpu" else []
        self.history = History()
        self.model: Any = None
        self.data: DataModule | None = None
        self.optim: Any = None
        self.epoch = self.train_batch_idx = self.val_batch_idx = self.epochs_done = 0
        self.num_train_batches = self.num_val_batches = 0
        self.fit_seconds = 0.0
        self.resumed: dict[str, Any] | None = None
        self._step: Step | None = None
        self._observing: list[tuple[str, Any, bool]] | None = None

    # -- the adapter's hooks: documented once, in d2lx.step.Adapter -----------------------------
    def _native_device(self, spec: DeviceSpec) -> Any:
        raise NotImplementedError

    def _array_ops(self) -> ArrayOps:
        raise NotImplementedError

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        raise InvalidArgumentError(f"the {self.backend_name} backend does not support strategy="
                                   f"{self.strategy!r} yet; train on one device (devices=1)")

    def _check_model(self, model: Any) -> None:
        """Refuse anything but this backend's ``d2l.Module`` (``module_class``), naming the fix."""
        if not isinstance(model, self.module_class):
            kind = f"d2lx {self.module_kind} modules" if self.module_kind else "a d2lx Module"
            base = f" ({self.module_base})" if self.module_base else ""
            raise ArgumentTypeError(
                f"the {self.backend_name} Trainer trains {kind}, got {type(model).__name__}; subclass "
                f"d2l.Module{base} of `from d2lx import {self.backend_name} as d2l` for your model")

    def _place_model(self, model: Any, example: Batch) -> None:
        raise NotImplementedError

    def make_step(self) -> Step:
        raise NotImplementedError

    def clip_gradients(self, grad_clip_val: float, target: Any) -> Any:
        raise NotImplementedError

    def model_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_model_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def optimizer_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def rng_state(self) -> dict[str, np.ndarray]:
        return {}

    def load_rng_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    @property
    def is_global_zero(self) -> bool:
        """True in the process that reports and saves (always, unless multi-process)."""
        return True

    @property
    def ops(self) -> ArrayOps:
        ops = self.__dict__.get("_ops")
        if ops is None:
            ops = self.__dict__["_ops"] = self._array_ops()
        return ops

    # -- d2l's surface ----------------------------------------------------------------------
    def prepare_batch(self, batch: Batch) -> Batch:
        """Move a batch to the training device (d2l's hook; a no-op for d2lx's own loaders)."""
        return tuple(self.ops.to_device(a) for a in batch)

    def prepare_data(self, data: DataModule) -> None:
        """Bind ``data`` to the device and take its loaders (any re-iterable of batches)."""
        if not isinstance(data, DataModule):
            raise ArgumentTypeError(f"fit() expects a d2lx DataModule as data, got {type(data).__name__}; "
                                    "wrap arrays with d2lx.ArrayData(X, y)")
        data.bind(self.ops)
        self.data = data
        self.train_dataloader = as_loader(data.train_dataloader(), "training", data.train_dataloader)
        val = data.val_dataloader()
        self.val_dataloader = None if val is None else as_loader(val, "validation", data.val_dataloader)
        self.num_train_batches = known_length(self.train_dataloader) or 0
        self.num_val_batches = 0 if self.val_dataloader is None else (known_length(self.val_dataloader) or 0)
        self._example = first_batch(self.train_dataloader)
        if self.val_dataloader is not None:
            check_same_features(self._example, first_batch(self.val_dataloader))

    def prepare_model(self, model: Any) -> None:
        """Attach the model, check it against the data, build it and place it on the device."""
        self._check_model(model)
        model.trainer = self
        self.model = model
        board = model.board
        board.clear()
        board.xlabel, board.xlim = "epoch", [0, self.max_epochs]
        check = getattr(model, "check_data_shapes", None)
        if check is not None:  # the whole data set's shapes where d2lx holds it, else a batch's
            arrays = getattr(self.train_dataloader, "tensors", self._example)
            check(tuple(arrays[0].shape), tuple(arrays[-1].shape))
        self._place_model(model, self._model_example())

    def _model_example(self) -> Batch:
        """The batch the model is built from: the first one, prepared as the step will see it."""
        return self.prepare_batch(self._example)

    def fit(self, model: Any, data: DataModule, ckpt_path: str | Path | None = None) -> History:
        """Train ``model`` on ``data`` for ``max_epochs`` epochs; return the history.

        With ``ckpt_path`` (a file from :meth:`save_checkpoint`) training
        resumes where that checkpoint stopped: parameters, optimizer state,
        epoch, step, shuffling and history, so the result equals an
        uninterrupted run.
        """
        start = time.perf_counter()
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        self.epoch = self.train_batch_idx = self.val_batch_idx = self.epochs_done = 0
        self.history = History()
        self.resumed = None
        if ckpt_path is not None:
            resume.restore(self, ckpt_path)
        try:
            self._run_epochs()
        finally:
            self.fit_seconds = time.perf_counter() - start
            model.board.flush()
            for callback in self.callbacks:  # e.g. ModelCheckpoint lets go of its file
                end = getattr(callback, "on_fit_end", None)
                if end is not None:
                    end(self)
        if self.plot_path is not None and self.is_global_zero:
            self.plot(self.plot_path)
        return self.history

    def _batch_mover(self, loader: Any, step: Step) -> Callable[[Batch], Batch]:
        """What the loop applies to a batch before the step: ``prepare_batch``, or nothing.

        Nothing for a step that applies ``prepare_batch`` itself, compiled
        into its function (``step.prepares_batches``: JAX), which takes the
        loader's batches as they come; nothing for d2lx's own loader, whose
        batches are on the device already, unless the reader has their own
        ``prepare_batch`` (d2l adds one with ``add_to_class``).
        """
        if getattr(step, "prepares_batches", False):
            return _unchanged
        if isinstance(loader, ArrayLoader) and type(self).prepare_batch is TrainerBase.prepare_batch:
            return _unchanged
        return self.prepare_batch

    # -- checkpoints and results --------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the run's whole state to ``path`` (safetensors, atomic); see :mod:`d2lx.checkpoint`."""
        return resume.save_trainer(self, path)


def _unchanged(batch: Batch) -> Batch:
    return batch
