"""``d2l.Trainer`` for PyTorch: the d2l 3.4 ``fit_epoch`` on device-resident data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from d2lx.backends.torch.distributed import DataParallel
from d2lx.backends.torch.ops import TorchOps
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.history import LossMeter
from d2lx.trainer import TrainerBase


class Trainer(TrainerBase):
    """Trains a d2lx PyTorch ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    ``steps_per_execution`` is accepted for API parity; PyTorch runs eagerly
    one step at a time (results are the same).
    """

    backend_name = "torch"
    fuses_steps = False
    _dp: DataParallel | None = None

    # -- data parallel (one process per device; see distributed.py) --------------
    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        self._dp = DataParallel(specs)
        self.device_spec = self._dp.spec
        self.device = self._native_device(self._dp.spec)
        self._train_meter = LossMeter(self._dp_losses_to_host)

    @property
    def is_global_zero(self) -> bool:
        return self._dp is None or self._dp.rank == 0

    def _dp_losses_to_host(self, values: list[Any]) -> np.ndarray:
        assert self._dp is not None
        return self._dp.sum_over_processes(torch.stack([v.detach().reshape(()) for v in values]))

    def _native_device(self, spec: DeviceSpec) -> torch.device:
        if spec.kind == "cpu":
            return torch.device("cpu")
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if spec.index >= visible:
            raise gpu_unavailable(
                "torch", spec, visible,
                "run on a machine with an NVIDIA GPU and a CUDA build of PyTorch",
            )
        return torch.device("cuda", spec.index)

    def _array_ops(self) -> TorchOps:
        return TorchOps(self.device)

    def _place_model(self, model: Any, num_inputs: int) -> None:
        model.materialize(num_inputs, self.device)
        if self._dp is not None:
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
            self._dp.wrap(model, self.device)

    def _losses_to_host(self, values: list[Any]) -> np.ndarray:
        return torch.stack([v.detach().reshape(()) for v in values]).double().cpu().numpy()

    def _is_finite(self, loss: Any) -> bool:
        # One scalar read instead of two kernels (isfinite, all) and a read:
        # `bool(torch.isfinite(loss).all())` cost about as much as the rest of a
        # seed-sized step on CPU (benchmarks/README.md). Same synchronisation
        # on a GPU (one device-to-host copy), still before the update.
        if loss.numel() == 1:
            return math.isfinite(loss.item())
        return bool(torch.isfinite(loss).all())

    def clip_gradients(self, grad_clip_val: float, model: Any) -> None:
        """Rescale all gradients so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5)."""
        grads = [p.grad for p in model.param_tensors() if p.grad is not None]
        norm = torch.sqrt(sum(torch.sum(g**2) for g in grads))
        scale = torch.clamp(grad_clip_val / norm, max=1.0)  # no host sync, unlike `if norm > c`
        for g in grads:
            g.mul_(scale)

    def fit_epoch(self) -> None:
        if self._dp is not None:
            self._fit_epoch_data_parallel()
        else:
            self._fit_epoch_one_device()
        self._validate()

    def _fit_epoch_one_device(self) -> None:
        self.model.train()
        for batch in self.train_dataloader:
            self._update(self.model.training_step(self.prepare_batch(batch)))

    def _update(self, loss: torch.Tensor) -> None:
        """Backward, optional clipping, optimizer step: d2l 3.4's ``fit_epoch`` body."""
        self.optim.zero_grad()
        loss.backward()
        # As in d2l: the update runs outside autograd, so a hand-written
        # optimizer's in-place `param -= lr * param.grad` on a leaf works.
        with torch.no_grad():
            if self.gradient_clip_val > 0:
                self.clip_gradients(self.gradient_clip_val, self.model)
            self.optim.step()
        self.train_batch_idx += 1

    def _fit_epoch_data_parallel(self) -> None:
        dp = self._dp
        assert dp is not None and dp.step_module is not None
        self.model.train()
        for batch in self.train_dataloader:
            shard, weight = dp.shard(self.prepare_batch(batch))
            self._recording_paused = True  # the step's own log() sees only this shard
            try:
                loss = dp.step_module(shard) * weight
            finally:
                self._recording_paused = False
            if self.check_finite and not dp.all_finite(loss):
                self.raise_divergence(self.epoch, self.train_batch_idx)
            # Summed over processes at the end of the epoch: the global batch's mean loss.
            self._train_meter.add(loss.detach() / dp.world, int(batch[-1].shape[0]))
            self._update(loss)

    def _validate(self) -> None:
        # Under data parallelism every process evaluates the whole (small)
        # validation set with identical parameters, so no reduction is needed.
        if self.val_dataloader is None:
            return
        self.model.eval()
        with torch.no_grad():
            for batch in self.val_dataloader:
                self.model.validation_step(self.prepare_batch(batch))
                self.val_batch_idx += 1
