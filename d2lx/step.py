"""The adapter contract: the device work of one ``fit``, as one typed :class:`Step`.

The core (:class:`d2lx.trainer.TrainerBase`) owns the control flow of a
fit: it iterates the loaders, moves foreign batches to the device
(``prepare_batch``), records the losses a step *returns*, checks for
divergence, counts batches, validates, feeds the board and runs callbacks.
An adapter is a backend's ``Trainer``: :class:`d2lx.trainer.TrainerBase`
plus the hooks of :class:`Adapter` (devices, array primitives, placing the
model, checkpoint state), and per fit an object that satisfies :class:`Step`:

* ``train(batch)`` / ``evaluate(batch)``: one optimizer step, one validation
  batch. Each returns the loss as a value of its framework, left on the
  device (no host sync); the core reads an epoch's losses in one transfer.
* ``run_epoch(train, val, steps_per_execution)``: an optional fast path for
  d2lx's own device-resident :class:`~d2lx.loader.ArrayLoader`: the whole
  epoch (and validation) in as few compiled calls as the framework allows
  (JAX's ``lax.scan``, TensorFlow's ``tf.while_loop``). ``None`` means "no
  such path here": the core then iterates the loader and calls ``train``.
* ``prepares_batches`` (optional, default false): the step applies the
  trainer's ``prepare_batch`` itself, inside its compiled function, so the
  core hands it a foreign loader's batches as they come (host arrays
  included) instead of calling ``prepare_batch`` first (JAX: its jitted
  step copies host arrays to the device in its C++ dispatch).
* ``divergence()``: the guard. A step never keeps an update whose loss,
  or whose resulting parameters, are not finite (it does not apply it, or,
  with MXNet's ``LateGuard``, undoes it before the next update); it latches
  the first such step instead. ``host_guard`` says whether that is known on the host after
  each ``train`` (eager backends check there) or only when asked (compiled
  backends latch on the device and are read once per epoch).

``docs/adding-a-backend.md`` walks through an implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from d2lx.devices import DeviceSpec
from d2lx.errors import ArgumentTypeError
from d2lx.loader import ArrayLoader, ArrayOps, Batch

#: Why a step was refused: its loss, the parameters its update made, or its batch was not finite.
CAUSES = ("loss", "parameters", "data")


class Divergence(NamedTuple):
    """The first refused step of an epoch.

    ``step`` counts the steps of the epoch applied before it. ``restored``
    says which parameters the model holds now: ``"step"`` (those before the
    refused update, exactly) or ``"epoch"`` (those at the start of the
    epoch: an eager backend learns of overflowed parameters one step late).
    """

    step: int
    cause: str
    restored: str = "step"


class EpochResult(NamedTuple):
    """What :meth:`Step.run_epoch` read back: host copies, one transfer."""

    train_losses: np.ndarray
    val_losses: np.ndarray | None
    divergence: Divergence | None


@runtime_checkable
class Step(Protocol):
    """One fit's device work (see the module docstring)."""

    #: True if :meth:`divergence` is known on the host after every :meth:`train` (no device read).
    host_guard: bool

    def begin_epoch(self) -> None:
        """Reset the per-epoch guard (and whatever else the step keeps per epoch)."""
        ...

    def set_training(self, mode: bool) -> None:
        """Switch the model between training and evaluation behaviour (dropout, batch norm)."""
        ...

    def train(self, batch: Batch) -> Any:
        """One optimizer step on ``batch`` (already on the device); its loss, on the device."""
        ...

    def evaluate(self, batch: Batch) -> Any:
        """The validation loss of ``batch``, on the device."""
        ...

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        """The first refused step of this epoch, if any.

        ``end_of_epoch=True`` once, after the epoch's last step: the step may
        then read the device (a compiled latch, or the last update's parameters).
        """
        ...

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None,
                  steps_per_execution: int) -> EpochResult | None:
        """The whole epoch over d2lx's device-resident loaders, or ``None`` if not provided."""
        ...


class Adapter(Protocol):
    """What a backend's ``Trainer`` adds to :class:`d2lx.trainer.TrainerBase`: the rest of the contract."""

    #: The backend's name (``"torch"``), as in ``d2lx.use_backend``.
    backend_name: ClassVar[str]
    #: The device kinds where ``steps_per_execution > 1`` runs several steps per call (else: a warning).
    fused_devices: ClassVar[frozenset[str]]

    def _native_device(self, spec: DeviceSpec) -> Any:
        """The framework's device for ``spec`` (a GPU it cannot see: :func:`d2lx.devices.gpu_unavailable`)."""
        ...

    def _array_ops(self) -> ArrayOps:
        """The :class:`~d2lx.loader.ArrayOps` of the training device (or a replicated placement)."""
        ...

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        """Prepare ``devices=N`` on the framework's own engine (the core refuses it otherwise)."""
        ...

    def _check_model(self, model: Any) -> None:
        """Refuse, with the fix, a model that is not this backend's ``d2l.Module``."""
        ...

    def _place_model(self, model: Any, example: Batch) -> None:
        """Build lazy layers from ``example`` (a real batch, on the device) and place the model there."""
        ...

    def make_step(self) -> Step:
        """This fit's :class:`Step` (called after ``configure_optimizers`` and any checkpoint restore)."""
        ...

    def clip_gradients(self, grad_clip_val: float, target: Any) -> Any:
        """d2l's gradient clipping (joint L2 norm at most ``grad_clip_val``), with d2l's signature."""
        ...

    def model_state(self) -> dict[str, Any]:
        """Every array of the model's state (parameters, buffers, batch statistics) by name, as NumPy."""
        ...

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Put :meth:`model_state` back; refuse names or shapes that do not fit, with the fix."""
        ...

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's arrays by name, as NumPy (plain SGD: none)."""
        ...

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Put :meth:`optimizer_state` back into the optimizer ``configure_optimizers`` made."""
        ...

    def rng_state(self) -> dict[str, Any]:
        """The framework's random generators that loaders and layers draw from (for exact resume)."""
        ...

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Put :meth:`rng_state` back (only checkpoints of the same backend)."""
        ...


def step_loss(out: Any, observed: Sequence[tuple[Any, ...]], what: str) -> Any:
    """The loss of a ``training_step``/``validation_step``: what it returned, else what it plotted.

    d2l's ``validation_step`` returns nothing and only calls
    ``self.plot('loss', l, train=False)``; the value it plotted then stands
    for the return value. One rule for every backend, eager or traced.
    """
    if out is not None:
        return out
    for key, value, *_ in reversed(observed):  # (key, value, train)
        if key == "loss":
            return value
    raise ArgumentTypeError(
        f"{what} returned nothing and plotted no loss; return the loss, or report it with "
        f"self.plot('loss', l, train=...) as d2l does"
    )
