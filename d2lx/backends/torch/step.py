"""The PyTorch step: d2l 3.4's ``fit_epoch`` body, eager, guarded, one host read per step.

``train`` is d2l's: ``training_step`` (forward and loss), ``zero_grad``,
``backward``, optional clipping, ``optim.step()``, for any model and any
optimizer (``torch.optim.*`` or a hand-written one with ``step``/``zero_grad``).

The guard reads the loss once per step (``loss.item()``), before the
update, as d2l's own loop does when it plots the loss; on the CPU the read
costs about a microsecond. A non-finite loss is never applied. An update
that overflows the parameters shows up as the next step's non-finite loss,
or in the one parameter check at the end of the epoch; the model is then
reset to a copy taken at the start of the epoch (the last parameters known
to be finite), which is cheaper than copying the parameters every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from d2lx.backends.torch.module import trainable_tensors
from d2lx.errors import ArgumentTypeError
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Divergence, EpochResult, step_loss


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host read: are all of ``tensors``' values finite?"""
    if not tensors:
        return True
    flags = torch.stack([torch.isfinite(t.detach()).all() for t in tensors])
    return bool(flags.all().item())


class TorchStep:
    """:class:`d2lx.step.Step` for one PyTorch fit (one device; see ``distributed.py`` for several)."""

    host_guard = True

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.params = trainable_tensors(self.model)
        self.check = trainer.check_finite
        self._bad: Divergence | None = None
        self._applied = 0
        self._snapshot: list[torch.Tensor] = []

    def begin_epoch(self) -> None:
        self._bad, self._applied = None, 0
        if self.check:  # the last parameters known to be finite (see the module docstring)
            with torch.no_grad():
                self._snapshot = [p.detach().clone() for p in self.params]

    def set_training(self, mode: bool) -> None:
        self.model.train(mode)

    def _loss(self, batch: Batch) -> torch.Tensor:
        with self.trainer.observing() as seen:
            loss = step_loss(self.model.training_step(batch), seen, "training_step")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ArgumentTypeError(f"training_step must return the batch's loss as one number (a scalar "
                                    f"tensor, e.g. l.mean()), got {shape}")
        return loss

    def train(self, batch: Batch) -> torch.Tensor:
        loss = self._loss(batch)
        if self.check and not math.isfinite(loss.item()):
            self._refuse(batch)
            return loss.detach()
        self.update(loss)
        self._applied += 1
        return loss.detach()

    def update(self, loss: torch.Tensor) -> None:
        """d2l's update: zero the gradients, backpropagate, clip if asked, step the optimizer."""
        self.optim.zero_grad()
        loss.backward()
        with torch.no_grad():  # as in d2l: a hand-written `param -= lr * param.grad` needs it
            if self.trainer.gradient_clip_val > 0:
                self.trainer.clip_gradients(self.trainer.gradient_clip_val, self.model)
            self.optim.step()

    def _refuse(self, batch: Batch) -> None:
        """Latch why this step's loss is not finite: its data, the last update, or the loss itself."""
        if not all_finite([t for t in batch if isinstance(t, torch.Tensor) and t.is_floating_point()]):
            self._bad = Divergence(self._applied, "data")
        elif not all_finite(self.params):
            self._restore()
            self._bad = Divergence(max(self._applied - 1, 0), "parameters", "epoch")
        else:
            self._bad = Divergence(self._applied, "loss")

    def _restore(self) -> None:
        with torch.no_grad():
            for param, saved in zip(self.params, self._snapshot):
                param.copy_(saved)

    def evaluate(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), self.trainer.observing() as seen:
            loss = step_loss(self.model.validation_step(batch), seen, "validation_step")
        return torch.as_tensor(loss).detach()

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        last_update_overflowed = self.check and self._applied and not all_finite(self.params)
        if self._bad is None and end_of_epoch and last_update_overflowed:
            self._restore()  # the epoch's last update overflowed
            self._bad = Divergence(self._applied - 1, "parameters", "epoch")
        return self._bad

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult | None:
        return None  # eager: the core iterates the loader (batches are slices on the device)
