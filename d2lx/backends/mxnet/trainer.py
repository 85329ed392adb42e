"""``d2l.Trainer`` for MXNet: the d2l 3.4 MXNet ``fit_epoch`` on device-resident data."""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, np

from d2lx.backends.mxnet.ops import MXNetOps
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.trainer import TrainerBase


def visible_gpus() -> int:
    """GPUs MXNet can use; 0 on a CPU-only build (whose query may also raise)."""
    try:
        return int(mx.context.num_gpus())
    except mx.base.MXNetError:
        return 0


class Trainer(TrainerBase):
    """Trains a d2lx MXNet ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    The step is d2l's: the forward pass and loss under ``autograd.record()``,
    ``loss.backward()``, optional clipping, then ``optim.step(1)``. The ``1``
    matters: ``gluon.Trainer.step(batch_size)`` divides gradients by its
    argument, and the models' losses are already minibatch means, so any other
    value would shrink the step (and by a different factor on the shorter
    last batch). With 1 the update is exactly ``lr * grad(mean loss)``, as on
    every other backend and in the NumPy oracle.

    ``steps_per_execution`` is accepted for API parity; MXNet runs one step
    per Python iteration (the concise model's layer is hybridized).
    """

    backend_name = "mxnet"

    def _native_device(self, spec: DeviceSpec) -> mx.Context:
        if spec.kind == "cpu":
            return mx.cpu()
        visible = visible_gpus()
        if spec.index >= visible:
            raise gpu_unavailable(
                "mxnet", spec, visible,
                "install a CUDA build of MXNet 1.9.1 (e.g. mxnet-cu112) on a machine with an "
                "NVIDIA GPU",
            )
        return mx.gpu(spec.index)

    def _array_ops(self) -> MXNetOps:
        return MXNetOps(self.device)

    def _place_model(self, model: Any, num_inputs: int) -> None:
        model.materialize(num_inputs, self.device)

    def _losses_to_host(self, values: list[Any]) -> onp.ndarray:
        # One concatenation on the device, one copy to the host for the whole epoch.
        host: onp.ndarray = np.concatenate([v.reshape(-1) for v in values]).asnumpy()
        return host.astype(onp.float64)

    def _is_finite(self, loss: Any) -> bool:
        return bool(onp.isfinite(loss.asnumpy()).all())

    def clip_gradients(self, grad_clip_val: float, model: Any) -> None:
        """Rescale all gradients so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        ``min(1, clip / norm)`` is computed on the device, so unlike d2l's
        ``if norm > clip`` there is no host round trip per step.
        """
        grads = [a.grad for a in model.param_arrays()]
        norm = np.sqrt(sum((g**2).sum() for g in grads))
        scale = np.minimum(grad_clip_val / norm, 1.0)
        for g in grads:
            g *= scale  # in place: these are the buffers the optimizer reads

    def fit_epoch(self) -> None:
        for batch in self.train_dataloader:
            with autograd.record():
                loss = self.model.training_step(self.prepare_batch(batch))
            loss.backward()
            if self.gradient_clip_val > 0:
                self.clip_gradients(self.gradient_clip_val, self.model)
            self.optim.step(1)
            self.train_batch_idx += 1
        if self.val_dataloader is None:
            return
        for batch in self.val_dataloader:  # outside record(): no graph, predict mode
            self.model.validation_step(self.prepare_batch(batch))
            self.val_batch_idx += 1
