"""Data-parallel training for the MXNet backend, on MXNet's own engine.

One process drives several contexts (``mx.cpu(0), mx.cpu(1)`` or
``mx.gpu(0), mx.gpu(1)``), as in d2l's "Concise Implementation for Multiple
GPUs" (d2l 13.6): every parameter has one copy per context, each global
batch is cut into contiguous shards (:func:`d2lx.sharding.shard_slices`), one per
context, and the contexts' gradients are summed by a ``device`` kvstore
(Gluon's ``Trainer(kvstore='device')`` for Gluon parameters, the same kvstore
type driven with ``pushpull`` for a scratch model's ``attach_grad`` arrays).
MXNet's engine runs the contexts' work concurrently.

The kvstore *sums* gradients, so each shard's mean loss is weighted by
``shard_size / batch_size``: the sum of those gradients is exactly the
gradient of the global batch's mean loss, also for a shorter, unevenly split
last batch, and N-context training ends where one-context training ends.
The sum of the weighted shard losses is the global batch's mean loss: the
value recorded and guarded, one host read per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mxnet as mx
from mxnet import autograd, gluon, np

from d2lx.backends.mxnet.step import MXNetStep, scalar_loss
from d2lx.errors import InvalidArgumentError
from d2lx.loader import Batch
from d2lx.sharding import check_shardable, shard_slices
from d2lx.step import step_loss


class DataParallel:
    """The contexts of one data-parallel run, the batch split and the kvstore all-reduce."""

    def __init__(self, contexts: Sequence[mx.Context]) -> None:
        self.contexts = list(contexts)
        self.world = len(self.contexts)
        self._kv: Any = None  # made on first use: Gluon models bring their own
        self._kv_keys: set[int] = set()

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Refuse batches that would leave a context without examples (before any step)."""
        check_shardable(num_examples, batch_size, self.world)

    def split(self, batch: Batch) -> list[tuple[tuple[np.ndarray, ...], float]]:
        """Each context's contiguous shard of a global batch, and its loss weight ``shard / batch``.

        ``shard_slices`` rather than ``gluon.utils.split_and_load(even_split=False)``:
        that one gives the whole remainder to the last context (14 over 3 is
        4, 4, 6); ``shard_slices`` balances it (5, 5, 4), as on every other
        d2lx backend. The copy to each context is ``as_in_ctx``, as in
        ``split_and_load``. A foreign loader's batch is checked here (d2lx's
        own loaders are checked once, before the first step).
        """
        n = int(batch[-1].shape[0])
        check_shardable(n, n, self.world)
        out = []
        for ctx, part in zip(self.contexts, shard_slices(n, self.world)):
            shard = tuple(t[part.start:part.stop].as_in_ctx(ctx) for t in batch)
            out.append((shard, (part.stop - part.start) / n))
        return out

    def sum_to_first(self, values: Sequence[np.ndarray]) -> np.ndarray:
        """Sum one value per context on the first context (the global batch's loss)."""
        first = self.contexts[0]
        total = values[0].as_in_ctx(first)
        for value in values[1:]:
            total = total + value.as_in_ctx(first)
        return total

    def allreduce(self, copies: Sequence[Sequence[np.ndarray]]) -> None:
        """Sum the gradients of ``attach_grad`` arrays across contexts, in place, via a kvstore.

        ``copies[c][k]`` is parameter ``k``'s array on context ``c``. Each key
        is pushed from every context and pulled back into every gradient
        buffer: what ``gluon.Trainer.allreduce_grads`` does for Gluon
        parameters, here for a scratch model's plain arrays.
        """
        if self._kv is None:
            self._kv = mx.kv.create("device")
        for key, arrays in enumerate(zip(*copies)):
            grads = [a.grad for a in arrays]
            if key not in self._kv_keys:  # init gives the key its shape; pushes replace the value
                self._kv.init(key, np.zeros(grads[0].shape, dtype=grads[0].dtype))
                self._kv_keys.add(key)
            self._kv.pushpull(key, grads, out=grads, priority=-key)


class DataParallelStep(MXNetStep):
    """:class:`~d2lx.backends.mxnet.step.MXNetStep` over every context's shard (d2l 13.6's step)."""

    def __init__(self, trainer: Any, dp: DataParallel) -> None:
        super().__init__(trainer)
        self.dp = dp
        self.copies = [self.model.param_arrays(ctx) for ctx in dp.contexts]  # what allreduce sums

    def _shard_losses(self, batch: Batch) -> list[np.ndarray]:
        """Each shard's weighted loss, recorded; its ``training_step`` runs on the shard's context.

        Each shard's ``self.plot`` calls are collected apart, so that a step
        that only plots its loss (no return value) still gives its own shard's.
        """
        losses = []
        for shard, weight in self.dp.split(batch):
            with self.trainer.observing() as seen, self.model.on_context(shard[-1].ctx), autograd.record():
                out = self.model.training_step(shard)
                loss = scalar_loss(step_loss(out, seen, "training_step"), "training_step")
                losses.append(loss * weight)
        return losses

    def train(self, batch: Batch) -> np.ndarray:
        losses = self._shard_losses(batch)
        loss = self.dp.sum_to_first(losses)  # the global batch's mean loss (outside record)
        if self.accepts(loss, batch):
            autograd.backward(losses)
            self.update()
            self.guard.applied()
        return loss.detach()

    def update(self) -> None:
        """Sum the contexts' gradients, clip if asked, update every copy with ``lr * sum``.

        A ``gluon.Trainer`` does its own all-reduce: ``step(1)`` works whether
        it applies the update on the kvstore (Gluon's default for dense
        parameters) or on each context. Clipping must see the *summed*
        gradient, which needs Gluon's ``allreduce_grads()`` / ``update()``
        split, and that only exists with ``update_on_kvstore=False`` (as
        d2lx's ``LinearRegression`` configures it). Other optimizers (the
        scratch ``SGD``, a reader's own) get the sum through
        :meth:`DataParallel.allreduce`; they update the primary arrays, which
        are then copied to the other contexts.
        """
        clip = self.trainer.gradient_clip_val
        if isinstance(self.optim, gluon.Trainer):
            if not clip:
                self.optim.step(1)  # 1: the losses are already means
                return
            try:
                self.optim.allreduce_grads()
            except AssertionError as err:  # Gluon's check for update_on_kvstore=True
                raise InvalidArgumentError(
                    f"gradient_clip_val with devices={self.dp.world} clips the summed gradient, which "
                    "Gluon exposes only when the update is not done on the kvstore; create the "
                    "model's gluon.Trainer with update_on_kvstore=False") from err
            self.trainer.clip_gradients(clip, self.model)
            self.optim.update(1)
            return
        self.dp.allreduce(self.copies)
        if clip:
            self.trainer.clip_gradients(clip, self.model)
        self.optim.step(1)
        self.model.sync_replicas()
