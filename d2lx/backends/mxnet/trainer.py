"""``d2l.Trainer`` for MXNet: the d2l 3.4 MXNet ``fit_epoch`` on device-resident data."""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, np

from d2lx.backends.mxnet.distributed import DataParallel
from d2lx.backends.mxnet.ops import MXNetOps
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import InvalidArgumentError
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

    ``devices=N`` (data parallelism) runs in this one process over N contexts
    (see :mod:`d2lx.backends.mxnet.distributed`): the data and the validation
    pass stay on the first context (``self.device``), each step's shards go
    to every context, and the gradients are summed by a ``device`` kvstore.
    """

    backend_name = "mxnet"
    fuses_steps = False
    _dp: DataParallel | None = None

    # -- data parallel (one process, one context per device) ---------------------
    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        self._dp = DataParallel([self._native_device(spec) for spec in specs])

    @property
    def contexts(self) -> list[mx.Context]:
        """The contexts this trainer runs on: one, or one per device under data parallelism."""
        return [self.device] if self._dp is None else list(self._dp.contexts)

    def _native_device(self, spec: DeviceSpec) -> mx.Context:
        if spec.kind == "cpu":
            # cpu(1), cpu(2)... are further CPU contexts (data parallelism on CPU);
            # a single-device run is always cpu(0) == mx.cpu().
            return mx.cpu(spec.index)
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
        if self._dp is not None:
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
        model.materialize(num_inputs, self.contexts)

    def _losses_to_host(self, values: list[Any]) -> onp.ndarray:
        # One concatenation on the device, one copy to the host for the whole epoch.
        host: onp.ndarray = np.concatenate([v.reshape(-1) for v in values]).asnumpy()
        return host.astype(onp.float64)

    def _is_finite(self, loss: Any) -> bool:
        return bool(onp.isfinite(loss.asnumpy()).all())

    def clip_gradients(self, grad_clip_val: float, model: Any) -> None:
        """Rescale all gradients so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        ``min(1, clip / norm)`` is computed on the device, so unlike d2l's
        ``if norm > clip`` there is no host round trip per step. Under data
        parallelism this runs after the all-reduce, on every context's copy
        of the (identical) summed gradients, so every copy gets the same step.
        """
        for ctx in model.contexts():
            grads = [a.grad for a in model.param_arrays(ctx)]
            norm = np.sqrt(sum((g**2).sum() for g in grads))
            scale = np.minimum(grad_clip_val / norm, 1.0)
            for g in grads:
                g *= scale  # in place: these are the buffers the optimizer reads

    def fit_epoch(self) -> None:
        if self._dp is not None:
            self._fit_epoch_data_parallel()
        else:
            self._fit_epoch_one_device()
        self._validate()

    def _fit_epoch_one_device(self) -> None:
        for batch in self.train_dataloader:
            with autograd.record():
                loss = self.model.training_step(self.prepare_batch(batch))
            loss.backward()
            if self.gradient_clip_val > 0:
                self.clip_gradients(self.gradient_clip_val, self.model)
            self.optim.step(1)
            self.train_batch_idx += 1

    def _fit_epoch_data_parallel(self) -> None:
        """d2l 13.6's multi-device step: forward per shard, backward, all-reduce, update.

        The training step runs once per context on that context's shard; its
        own ``log()`` would see only a shard, so recording is paused and the
        global batch's mean loss (the sum of the weighted shard losses) is
        recorded here instead, and checked before any update.
        """
        dp = self._dp
        assert dp is not None
        for batch in self.train_dataloader:
            batch = self.prepare_batch(batch)
            shards = dp.split(batch)
            self._recording_paused = True
            try:
                with autograd.record():
                    losses = [self.model.training_step(shard) * weight for shard, weight in shards]
            finally:
                self._recording_paused = False
            loss = dp.sum_to_first(losses)
            if self.check_finite and not self._is_finite(loss):
                self.raise_divergence(self.epoch, self.train_batch_idx)
            self._train_meter.add(loss, int(batch[-1].shape[0]))
            autograd.backward(losses)
            self._data_parallel_update(dp)
            self.train_batch_idx += 1

    def _data_parallel_update(self, dp: DataParallel) -> None:
        """Sum the contexts' gradients, clip if asked, update every copy with ``lr * sum``.

        A ``gluon.Trainer`` does its own all-reduce: ``step(1)`` works whether
        it applies the update on the kvstore (the Gluon default for dense
        parameters) or on each context. Clipping must see the *summed*
        gradient, which needs Gluon's ``allreduce_grads()`` / ``update()``
        split, and that only exists with ``update_on_kvstore=False`` (as
        d2lx's ``LinearRegression`` configures it). Other optimizers (the
        scratch :class:`SGD`) get the sum through :meth:`DataParallel.allreduce`.
        """
        clip = self.gradient_clip_val > 0
        if isinstance(self.optim, gluon.Trainer):
            if not clip:
                self.optim.step(1)  # 1: the losses are already means
                return
            try:
                self.optim.allreduce_grads()
            except AssertionError as err:  # Gluon's check for update_on_kvstore=True
                raise InvalidArgumentError(
                    f"gradient_clip_val with devices={dp.world} clips the summed gradient, which "
                    "Gluon exposes only when the update is not done on the kvstore; create the "
                    "model's gluon.Trainer with update_on_kvstore=False"
                ) from err
            self.clip_gradients(self.gradient_clip_val, self.model)
            self.optim.update(1)
            return
        dp.allreduce([self.model.param_arrays(ctx) for ctx in dp.contexts])
        if clip:
            self.clip_gradients(self.gradient_clip_val, self.model)
        self.optim.step(1)

    def _validate(self) -> None:
        # Outside record(): no graph, predict mode. Under data parallelism the
        # copies are equal, so the first context evaluates the whole set.
        if self.val_dataloader is None:
            return
        for batch in self.val_dataloader:
            self.model.validation_step(self.prepare_batch(batch))
            self.val_batch_idx += 1
