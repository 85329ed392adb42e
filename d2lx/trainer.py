"""The framework-neutral half of d2l's ``Trainer``.

The core owns everything that must behave the same on every backend:
argument checks, device resolution, the epoch loop, history, progress,
plotting, divergence detection and timing. An adapter subclasses
:class:`TrainerBase` and supplies the framework parts:

* ``_native_device(spec)``: the framework's device object (or raise
  :func:`d2lx.devices.gpu_unavailable`);
* ``_array_ops()``: an :class:`d2lx.data.ArrayOps` bound to that device;
* ``_place_model(model, num_inputs)``: build lazy layers, set the seeded
  initial parameters, move the model to the device;
* ``fit_epoch()``: one epoch, in the framework's idiom (d2l's method);
* ``_losses_to_host(values)``: turn a list of device scalars into NumPy in one
  transfer;
* ``_is_finite(loss)``: whether one loss value is finite;
* ``_optimizer_state()`` / ``_load_optimizer_state(state)``: the optimizer's
  state as NumPy arrays, for framework-free checkpoints (default: none).

Models provide ``get_w_b()`` / ``set_w_b(w, b)`` (NumPy, ``w`` of shape
``(num_inputs, 1)``, ``b`` of shape ``(1,)``) and ``check_data_shapes``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from d2lx import checkpoint
from d2lx.data import ArrayLoader, ArrayOps, DataModule
from d2lx.devices import DeviceSpec, resolve_devices
from d2lx.errors import ArgumentTypeError, CheckpointError, DivergenceError, InvalidArgumentError
from d2lx.history import History, LossMeter
from d2lx.hyperparameters import HyperParameters
from d2lx.progress import ProgressBar, progress_enabled
from d2lx.validation import check_float, check_int


class TrainerBase(HyperParameters):
    """d2l's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)`` plus d2lx options.

    Keyword-only options:

    * ``device``: ``"cpu"``, ``"gpu"`` or ``"gpu:N"`` (default: ``num_gpus``,
      then ``$D2LX_DEVICE``, then CPU). A missing GPU is an error, never a
      silent CPU run.
    * ``steps_per_execution``: run this many optimizer steps per compiled call
      on backends that can fuse steps (like Keras' option of that name);
      results equal the step-by-step run within float32 tolerance.
    * ``progress``: ``True``/``False``, or ``None`` for "on in a terminal
      unless ``$CI`` is set".
    * ``plot``: a PNG path; the loss curves are written there after ``fit``.
    * ``check_finite``: stop with :class:`DivergenceError` at the first step
      whose loss is NaN/inf, before its update (default on).
    * ``callbacks``: functions called as ``fn(trainer)`` after every epoch
      (``trainer.epoch`` and ``trainer.history`` are up to date), e.g. to
      record parameters or stop early by raising.
    * ``devices`` / ``strategy``: ``devices=N`` with
      ``strategy="data_parallel"`` splits every global batch across N
      devices on the framework's own distributed engine and averages the
      gradients, so the run ends where the one-device run ends
      (``num_gpus=N`` means ``device="gpu", devices=N``).
    """

    backend_name: ClassVar[str] = "?"
    _recording_paused = False  # set by adapters that record a step's loss themselves
    #: False for adapters without a fused path: they warn that steps_per_execution changes nothing.
    fuses_steps: ClassVar[bool] = True

    def __init__(
        self,
        max_epochs: int,
        num_gpus: int = 0,
        gradient_clip_val: float = 0,
        *,
        device: str | None = None,
        steps_per_execution: int = 1,
        progress: bool | None = None,
        plot: str | Path | None = None,
        check_finite: bool = True,
        callbacks: Sequence[Callable[[TrainerBase], None]] = (),
        devices: int | None = None,
        strategy: str | None = None,
    ) -> None:
        self.max_epochs = check_int("max_epochs", max_epochs, minimum=1, example="3")
        self.num_gpus = check_int("num_gpus", num_gpus, minimum=0, example="1")
        self.gradient_clip_val = check_float(
            "gradient_clip_val", gradient_clip_val, nonnegative=True, example="1.0"
        )
        self.steps_per_execution = check_int(
            "steps_per_execution", steps_per_execution, minimum=1, example="32"
        )
        if self.steps_per_execution > 1 and not self.fuses_steps:
            warnings.warn(
                f"the {self.backend_name} backend has no fused path: steps_per_execution="
                f"{self.steps_per_execution} runs ordinary steps, one at a time (same results)",
                UserWarning, stacklevel=2,
            )
        if progress is not None and not isinstance(progress, bool):
            raise ArgumentTypeError(f"progress must be True, False or None, got {progress!r}")
        if plot is not None and not isinstance(plot, (str, Path)):
            raise ArgumentTypeError(f"plot must be a file path (str or Path), got {plot!r}")
        self.progress = progress
        self.plot_path = None if plot is None else Path(plot)
        self.check_finite = bool(check_finite)
        if not all(callable(cb) for cb in callbacks):
            raise ArgumentTypeError("callbacks must be a sequence of functions fn(trainer)")
        self.callbacks = list(callbacks)
        self.hparams = {
            "max_epochs": self.max_epochs, "num_gpus": self.num_gpus,
            "gradient_clip_val": self.gradient_clip_val,
            "steps_per_execution": self.steps_per_execution,
        }
        self._train_meter = LossMeter(self._losses_to_host)
        self._val_meter = LossMeter(self._losses_to_host)
        self.device_specs, self.strategy = resolve_devices(device, self.num_gpus, devices, strategy)
        self.device_spec: DeviceSpec = self.device_specs[0]
        self.hparams.update(devices=len(self.device_specs), strategy=self.strategy)
        self.device = self._native_device(self.device_spec)
        if self.strategy is not None:
            self._setup_data_parallel(self.device_specs)
        self.history = History()
        self.model: Any = None
        self.data: DataModule | None = None
        self.optim: Any = None
        self.epoch = 0
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        self.fit_seconds = 0.0
        self.epochs_done = 0

    # -- adapter hooks -----------------------------------------------------------
    def _native_device(self, spec: DeviceSpec) -> Any:
        raise NotImplementedError

    def _array_ops(self) -> ArrayOps:
        raise NotImplementedError

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        """Prepare ``strategy="data_parallel"`` over ``specs`` (adapters that support it)."""
        raise InvalidArgumentError(
            f"the {self.backend_name} backend does not support strategy={self.strategy!r} yet; "
            "train on one device (devices=1)"
        )

    @property
    def is_global_zero(self) -> bool:
        """True in the process that reports and saves (always, unless multi-process)."""
        return True

    def _place_model(self, model: Any, num_inputs: int) -> None:
        raise NotImplementedError

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        return np.array([float(np.asarray(v)) for v in values])

    def _is_finite(self, loss: Any) -> bool:
        return math.isfinite(float(np.asarray(loss)))

    def fit_epoch(self) -> None:
        raise NotImplementedError

    def _optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimizer's state as NumPy arrays, for checkpoints (plain SGD has none)."""
        return {}

    def _load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_optimizer_state` returned (after ``configure_optimizers``)."""

    # -- d2l's surface -----------------------------------------------------------
    def prepare_batch(self, batch: Any) -> Any:
        """Hook to transform a batch; batches are already on the device."""
        return batch

    def prepare_data(self, data: DataModule) -> None:
        """Bind ``data`` to this trainer's device and build the loaders (one copy each)."""
        if not isinstance(data, DataModule):
            raise ArgumentTypeError(
                f"fit() expects a d2lx DataModule as data, got {type(data).__name__}; "
                "wrap arrays with d2lx.ArrayData(X, y)"
            )
        data.bind(self._array_ops())
        self.data = data
        self.train_dataloader: ArrayLoader = data.train_dataloader()
        self.val_dataloader: ArrayLoader | None = data.val_dataloader()
        self.num_train_batches = len(self.train_dataloader)
        self.num_val_batches = 0 if self.val_dataloader is None else len(self.val_dataloader)
        X, y = self.train_dataloader.tensors[0], self.train_dataloader.tensors[-1]
        self._data_shapes = (tuple(X.shape), tuple(y.shape))

    def prepare_model(self, model: Any) -> None:
        """Attach the model, check it against the data, place it on the device."""
        model.trainer = self
        self.model = model
        X_shape, y_shape = self._data_shapes
        check = getattr(model, "check_data_shapes", None)
        if check is not None:
            check(X_shape, y_shape)
        self._place_model(model, int(X_shape[1]) if len(X_shape) > 1 else 1)

    def fit(self, model: Any, data: DataModule, ckpt_path: str | Path | None = None) -> History:
        """Train ``model`` on ``data`` for ``max_epochs`` epochs; return the history.

        With ``ckpt_path`` (a file from :meth:`save_checkpoint`), training
        resumes where that checkpoint stopped: same parameters, optimizer
        state, epoch, step, shuffling order and history, so the result equals
        an uninterrupted run.
        """
        start = time.perf_counter()
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        self.epoch = 0
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        self.epochs_done = 0
        self.history = History()
        if ckpt_path is not None:
            self._restore(checkpoint.load(ckpt_path), ckpt_path)
        self._run_epochs(first_epoch=self.epochs_done)
        self.fit_seconds = time.perf_counter() - start
        if self.plot_path is not None:
            self.plot(self.plot_path)
        return self.history

    def _run_epochs(self, first_epoch: int) -> None:
        enabled = progress_enabled(self.progress) and self.is_global_zero
        label = f"{self.backend_name} fit"
        with ProgressBar(self.max_epochs, label, enabled) as bar:
            bar.update(first_epoch)
            for epoch in range(first_epoch, self.max_epochs):
                self.epoch = epoch
                epoch_start = time.perf_counter()
                self._train_meter.reset()
                self._val_meter.reset()
                self.fit_epoch()
                train_loss = self._train_meter.mean(weighted=False)
                val_loss = self._val_meter.mean(weighted=True)
                self.history.append(self.epoch, train_loss, val_loss,
                                    time.perf_counter() - epoch_start)
                self.epochs_done = epoch + 1
                bar.update(1, f"train {train_loss:.4g} val {val_loss:.4g}")
                for callback in self.callbacks:
                    callback(self)

    # -- loss recording and divergence --------------------------------------------
    def record_loss(self, value: Any, train: bool, count: int) -> None:
        """Called by ``Module.log``: keep the loss; stop at once if it is not finite."""
        if self._recording_paused:
            return
        if train:
            if self.check_finite and not self._is_finite(value):
                self.raise_divergence(self.epoch, self.train_batch_idx)
            self._train_meter.add(value, count)
        else:
            self._val_meter.add(value, count)

    def raise_divergence(self, epoch: int, step: int) -> None:
        """Raise the one error for a NaN/inf loss (shared wording for all adapters)."""
        raise DivergenceError(
            f"training diverged: the loss became NaN or inf at epoch {epoch}, step {step}; "
            "the update of that step was not applied, so the model keeps the last finite "
            "parameters. Lower the learning rate (lr) or set gradient_clip_val, and check "
            "the data scale",
            epoch=epoch,
            step=step,
        )

    # -- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Write parameters, optimizer state, epoch, step, RNG state and hyperparameters.

        The file is framework-free (``.npz``) and written atomically; see
        :mod:`d2lx.checkpoint`. Call it after ``fit`` or from a callback
        (:class:`d2lx.checkpoint.ModelCheckpoint` saves after every epoch).
        """
        if self.model is None or self.data is None:
            raise InvalidArgumentError("nothing to save yet: call fit(model, data) first")
        w, b = self.model.get_w_b()
        meta = {
            "backend": self.backend_name,
            "model": type(self.model).__name__,
            "model_hparams": getattr(self.model, "hparams", {}),
            "data_hparams": getattr(self.data, "hparams", {}),
            "trainer_hparams": self.hparams,
            "epoch": self.epochs_done,
            "step": self.train_batch_idx,
            "val_step": self.val_batch_idx,
            "seed": getattr(self.data, "seed", None),
            "shuffle_rng": self.data.shuffle_rng.bit_generator.state,
            "history": self.history.as_dict(),
            "d2lx_version": _version(),
        }
        ckpt = checkpoint.Checkpoint(params={"w": w, "b": b}, optimizer=self._optimizer_state(), meta=meta)
        return checkpoint.save(path, ckpt)

    def _restore(self, ckpt: checkpoint.Checkpoint, path: str | Path) -> None:
        """Load ``ckpt`` into the prepared model, optimizer, data stream and counters."""
        kind = type(self.model).__name__
        if ckpt.meta.get("model") != kind:
            raise CheckpointError(
                f"{path} holds a {ckpt.meta.get('model')} but the model is a {kind}; "
                f"resume with a {ckpt.meta.get('model')} or start without ckpt_path"
            )
        w_now, _ = self.model.get_w_b()
        if ckpt.params["w"].shape != w_now.shape:
            raise CheckpointError(
                f"{path} holds w of shape {ckpt.params['w'].shape} but the model's is "
                f"{w_now.shape}; use data and model of the same width"
            )
        self.model.set_w_b(ckpt.params["w"], ckpt.params["b"])
        writer = ckpt.meta.get("backend")
        if ckpt.optimizer and writer != self.backend_name:
            # Optimizer state is the writer framework's own layout (Keras' SGD
            # keeps an iteration counter, optax's sgd keeps nothing, ...), so it
            # cannot be mapped onto another framework's optimizer. Say so.
            warnings.warn(
                f"{path} was written by the {writer} backend; its optimizer state "
                f"({', '.join(sorted(ckpt.optimizer))}) does not apply to {self.backend_name}'s "
                "optimizer and is not loaded (parameters, epoch, step, shuffling and history are). "
                "Plain SGD keeps no state that changes the updates; an optimizer with momentum "
                "restarts it",
                UserWarning, stacklevel=3,
            )
        else:
            self._load_optimizer_state(ckpt.optimizer)
        assert self.data is not None
        self.data.shuffle_rng.bit_generator.state = ckpt.meta["shuffle_rng"]
        self.epochs_done = self.epoch = ckpt.epoch
        self.train_batch_idx = ckpt.step
        self.val_batch_idx = int(ckpt.meta.get("val_step", 0))
        saved = ckpt.meta.get("history", {})
        for i in range(len(saved.get("epoch", []))):
            self.history.append(saved["epoch"][i], saved["train_loss"][i], saved["val_loss"][i],
                                saved["seconds"][i])

    # -- results ---------------------------------------------------------------------
    def plot(self, path: str | Path) -> Path:
        """Write the loss curves of the last ``fit`` to ``path`` (PNG)."""
        from d2lx.plotting import plot_history

        return plot_history(self.history, path, title=f"{self.backend_name}, {self.device_spec}")


def _version() -> str:
    from d2lx import __version__

    return __version__
