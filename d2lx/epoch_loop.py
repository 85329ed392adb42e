"""The epoch loop ``fit`` runs: a mixin of :class:`d2lx.trainer.TrainerBase`.

Why a module of its own: this is the hot path, and the one place where the
core's contract with an adapter's :class:`~d2lx.step.Step` is exercised:
hand d2lx's own loaders to the step's compiled epoch when it has one, else
call the step per batch and record the device losses it returns (no read
back until the epoch ends, unless the step guards on the host), then
validate, check for divergence, feed the history, the board, the progress
bar and the callbacks. A reader's d2l-style ``fit_epoch``
(``@d2l.add_to_class(d2l.Trainer)``) replaces :meth:`EpochLoop.fit_epoch`
and keeps everything else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from d2lx.batches import known_length
from d2lx.guard import raise_divergence, raise_if_not_finite
from d2lx.history import History, LossMeter
from d2lx.loader import ArrayLoader, ArrayOps, Batch, batch_size_of
from d2lx.progress import progress_bar, progress_enabled
from d2lx.step import Step


class EpochLoop:
    """``fit``'s epochs and the default ``fit_epoch`` (the trainer's attributes it uses are below)."""

    backend_name: ClassVar[str]
    max_epochs: int
    epoch: int
    epochs_done: int
    train_batch_idx: int
    val_batch_idx: int
    num_train_batches: int
    num_val_batches: int
    steps_per_execution: int
    check_finite: bool
    progress: bool | None
    history: History
    callbacks: list[Callable[[Any], None]]
    train_dataloader: Any
    val_dataloader: Any
    _step: Step | None
    _train_meter: LossMeter
    _val_meter: LossMeter
    _board_fed: bool

    if TYPE_CHECKING:  # the trainer's, declared for mypy only (no stubs to shadow them at run time)
        @property
        def ops(self) -> ArrayOps: ...

        @property
        def is_global_zero(self) -> bool: ...

        def make_step(self) -> Step: ...

        def _batch_mover(self, loader: Any, step: Step) -> Callable[[Batch], Batch]: ...

        def _feed_board(self, train: Any, val: Any, first_step: int) -> None: ...

    def _run_epochs(self) -> None:
        """The epochs from ``epochs_done`` to ``max_epochs`` on the prepared model and data."""
        self._step = self.make_step()
        self._train_meter = LossMeter(self.ops.to_host)
        self._val_meter = LossMeter(self.ops.to_host)
        enabled = progress_enabled(self.progress) and self.is_global_zero
        bar = progress_bar(self.max_epochs, f"{self.backend_name} fit", enabled, initial=self.epochs_done)
        with contextlib.closing(bar):
            for epoch in range(self.epochs_done, self.max_epochs):
                self.epoch = epoch
                epoch_start, first_step = time.perf_counter(), self.train_batch_idx
                self._train_meter.reset()
                self._val_meter.reset()
                self._board_fed = False
                self.fit_epoch()
                train = self._train_meter.host_values()
                val = self._val_meter.host_values()
                if self.check_finite:
                    raise_if_not_finite(self, val, train)
                if not self._board_fed:
                    self._feed_board(train, val, first_step)
                train_loss = self._train_meter.mean(weighted=False)
                val_loss = self._val_meter.mean(weighted=True)
                self.history.append(epoch, train_loss, val_loss, time.perf_counter() - epoch_start)
                self.epochs_done = epoch + 1
                bar.set_postfix_str(f"train {train_loss:.4g} val {val_loss:.4g}", refresh=False)
                bar.update(1)
                for callback in self.callbacks:
                    callback(self)

    def fit_epoch(self) -> None:
        """One epoch: the step's compiled epoch if it has one, else step by step; then validation."""
        step = self._step
        assert step is not None, "fit() builds the step first"
        step.begin_epoch()
        first = self.train_batch_idx
        train, val = self.train_dataloader, self.val_dataloader
        if isinstance(train, ArrayLoader) and (val is None or isinstance(val, ArrayLoader)):
            result = step.run_epoch(train, val, self.steps_per_execution)
            if result is not None:
                sizes = train.batch_sizes()[:len(result.train_losses)]
                self._train_meter.add_many(result.train_losses, sizes)
                if result.divergence is not None:
                    raise_divergence(self, first, result.divergence)
                self.train_batch_idx += len(train)
                if val is not None and result.val_losses is not None:
                    self._val_meter.add_many(result.val_losses, val.batch_sizes())
                    self.val_batch_idx += len(val)
                return
        # The per-step loop: every attribute it needs is looked up once (this is the hot path of
        # eager backends, where a step takes tens of microseconds).
        step.set_training(True)
        prepare, train_step, record = self._batch_mover(train, step), step.train, self._train_meter.add
        host_guard, divergence = step.host_guard, step.divergence
        try:
            for batch in train:
                batch = prepare(batch)
                record(train_step(batch), batch_size_of(batch))
                self.train_batch_idx += 1
                if host_guard and divergence() is not None:
                    self._check(step, first)  # puts train_batch_idx back at the refused step
        except BaseException:
            if host_guard:  # an error or an interrupt mid-epoch: the updates that landed are judged first
                with contextlib.suppress(Exception):  # (MXNet's late guard has one unread loss)
                    divergence(True)
            raise
        self._check(step, first, end_of_epoch=True)
        self.num_train_batches = known_length(train) or self.train_batch_idx - first
        if val is None:
            return
        step.set_training(False)
        prepare, evaluate, record = self._batch_mover(val, step), step.evaluate, self._val_meter.add
        for batch in val:
            batch = prepare(batch)
            record(evaluate(batch), batch_size_of(batch))
            self.val_batch_idx += 1
        self.num_val_batches = known_length(val) or self.num_val_batches

    def _check(self, step: Step, first: int, end_of_epoch: bool = False) -> None:
        divergence = step.divergence(end_of_epoch)
        if divergence is not None:
            raise_divergence(self, first, divergence)
