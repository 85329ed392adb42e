"""The PyTorch step: d2l 3.4's ``fit_epoch`` body, eager, guarded by :class:`d2lx.guard.EagerGuard`.

``train`` is d2l's: ``training_step`` (forward and loss), ``zero_grad``,
``backward``, optional clipping, ``optim.step()``, for any model and any
optimizer (``torch.optim.*`` or a hand-written one with ``step``/``zero_grad``).
The loss is read once, before the update, so a non-finite one never lands.
"""

from __future__ import annotations

from typing import Any

import torch

from d2lx.backends.torch.module import trainable_tensors
from d2lx.errors import ArgumentTypeError
from d2lx.guard import EagerGuard
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Divergence, EpochResult, step_loss


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host read: are all of ``tensors``' values finite?"""
    if not tensors:
        return True
    flags = torch.stack([torch.isfinite(t.detach()).all() for t in tensors])
    return bool(flags.all().item())


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _assign(tensor: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        tensor.copy_(value)


class TorchStep:
    """:class:`d2lx.step.Step` for one PyTorch fit (one device; see ``distributed.py`` for several)."""

    host_guard = True

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.model = trainer.model
        self.optim = trainer.optim
        self.guard = EagerGuard(trainable_tensors(self.model), trainer.check_finite, all_finite, _copy,
                                _assign)

    def begin_epoch(self) -> None:
        self.guard.begin_epoch()

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

    def accepts(self, loss: torch.Tensor, batch: Batch) -> bool:
        """The guard's verdict on this step (one host read of the loss)."""
        floats = [t for t in batch if isinstance(t, torch.Tensor) and t.is_floating_point()]
        return self.guard.accepts(loss.item(), floats) if self.guard.check else True

    def train(self, batch: Batch) -> torch.Tensor:
        loss = self._loss(batch)
        if self.accepts(loss, batch):
            self.update(loss)
            self.guard.applied()
        return loss.detach()

    def update(self, loss: torch.Tensor) -> None:
        """d2l's update: zero the gradients, backpropagate, clip if asked, step the optimizer."""
        self.optim.zero_grad()
        loss.backward()
        with torch.no_grad():  # as in d2l: a hand-written `param -= lr * param.grad` needs it
            if self.trainer.gradient_clip_val > 0:
                self.trainer.clip_gradients(self.trainer.gradient_clip_val, self.model)
            self.optim.step()

    def evaluate(self, batch: Batch) -> torch.Tensor:
        with torch.no_grad(), self.trainer.observing() as seen:
            loss = step_loss(self.model.validation_step(batch), seen, "validation_step")
        return torch.as_tensor(loss).detach()

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        return self.guard.divergence(end_of_epoch)

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult | None:
        return None  # eager: the core iterates the loader (batches are slices on the device)
