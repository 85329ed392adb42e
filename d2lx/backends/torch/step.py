"""The PyTorch step: d2l 3.4's ``fit_epoch`` body, eager, guarded by :class:`d2lx.guard.EagerGuard`.

``train`` is d2l's: ``training_step`` (forward and loss), ``zero_grad``,
``backward``, optional clipping, ``optim.step()``, for any model and any
optimizer (``torch.optim.*`` or a hand-written one with ``step``/``zero_grad``).
The loss is read once, before the update, so a non-finite one never lands.
With ``steps_per_execution > 1`` on a GPU, an epoch over d2lx's loader
replays CUDA graphs of these steps instead (``compiled.py``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from d2lx.backends.torch.compiled import GraphedSteps, capture_problem
from d2lx.backends.torch.module import trainable_tensors
from d2lx.errors import ArgumentTypeError
from d2lx.guard import EagerGuard
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Divergence, EpochResult, step_loss


def all_finite(arrays: list[Any]) -> bool:
    """One host read: are all floating-point tensors among ``arrays`` finite (others are skipped)?"""
    tensors = [t for t in arrays if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        return True
    flags = torch.stack([torch.isfinite(t.detach()).all() for t in tensors])
    return bool(flags.all().item())


def fused_path(step: TorchStep) -> GraphedSteps | None:
    """The CUDA-graph epochs of ``steps_per_execution > 1`` on a GPU; ``None`` (with a warning why) else."""
    trainer = step.trainer
    if trainer.steps_per_execution <= 1 or trainer.device.type != "cuda":
        return None  # the CPU: the trainer warned when it was made
    problem = ("the fused path (CUDA graphs) runs on one GPU, not through DDP"
               if trainer._dp is not None else capture_problem(step.optim))
    if problem is not None:
        warnings.warn(f"steps_per_execution={trainer.steps_per_execution} runs ordinary steps: {problem}",
                      UserWarning, stacklevel=6)  # the reader's fit()
        return None
    return GraphedSteps(step)


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
        # torch.optim's step disables autograd itself; d2l's hand-written SGD relies on the caller.
        self._step_needs_no_grad = not isinstance(self.optim, torch.optim.Optimizer)
        self.graphs = fused_path(self)

    def begin_epoch(self) -> None:
        self.guard.begin_epoch()

    def set_training(self, mode: bool) -> None:
        self.model.train(mode)

    def _loss(self, batch: Batch, draw_extras: bool = True) -> torch.Tensor:
        with self.trainer.observing(draw_extras) as seen:
            loss = step_loss(self.model.training_step(batch), seen, "training_step")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ArgumentTypeError(f"training_step must return the batch's loss as one number (a scalar "
                                    f"tensor, e.g. l.mean()), got {shape}")
        return loss

    def accepts(self, loss: torch.Tensor, batch: Batch) -> bool:
        """The guard's verdict on this step (one host read of the loss)."""
        return self.guard.accepts(loss.item(), batch) if self.guard.check else True

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
        clip = self.trainer.gradient_clip_val
        if clip > 0 or self._step_needs_no_grad:
            with torch.no_grad():  # as in d2l: a hand-written `param -= lr * param.grad` needs it
                if clip > 0:
                    self.trainer.clip_gradients(clip, self.model)
                self.optim.step()
        else:
            self.optim.step()

    def evaluate(self, batch: Batch) -> torch.Tensor:
        return self._val_loss(batch)

    def _val_loss(self, batch: Batch, draw_extras: bool = True) -> torch.Tensor:
        with torch.no_grad(), self.trainer.observing(draw_extras) as seen:
            loss = step_loss(self.model.validation_step(batch), seen, "validation_step")
        return loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(loss)

    def divergence(self, end_of_epoch: bool = False) -> Divergence | None:
        return self.guard.divergence(end_of_epoch)

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None, steps_per_execution: int
                  ) -> EpochResult | None:
        if self.graphs is None or steps_per_execution <= 1:
            return None  # eager: the core iterates the loader (batches are slices on the device)
        return self.graphs.run_epoch(train, val)
