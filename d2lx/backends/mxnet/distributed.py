"""Data-parallel training for the MXNet backend, on MXNet's own engine.

One process drives several contexts (``mx.cpu(0), mx.cpu(1)`` or
``mx.gpu(0), mx.gpu(1)``), as in d2l's "Concise Implementation for Multiple
GPUs" (d2l 13.6): every parameter has one copy per context, each global
batch is cut into contiguous shards (:func:`d2lx.data.shard_slices`), one per
context, and the contexts' gradients are summed by a ``device`` kvstore
(Gluon's ``Trainer(kvstore='device')`` for Gluon parameters, the same kvstore
type driven with ``pushpull`` for the scratch model's ``attach_grad`` arrays).
MXNet's engine runs the contexts' work concurrently.

The kvstore *sums* gradients, so each shard's mean loss is weighted by
``shard_size / batch_size``: the sum of those gradients is exactly the
gradient of the global batch's mean loss, also for a shorter, unevenly split
last batch, and N-context training ends where one-context training ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx
from mxnet import np

from d2lx.data import check_shardable, shard_slices


class DataParallel:
    """The contexts of one data-parallel run, the batch splitting and the kvstore all-reduce."""

    def __init__(self, contexts: Sequence[mx.Context]) -> None:
        self.contexts = list(contexts)
        self.world = len(self.contexts)
        self._kv: mx.kvstore.KVStore | None = None  # made on first use: Gluon models bring their own
        self._kv_keys: set[int] = set()

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Refuse batches that would leave a context without examples (before any step)."""
        check_shardable(num_examples, batch_size, self.world)

    def split(self, batch: Sequence[np.ndarray]) -> list[tuple[tuple[np.ndarray, ...], float]]:
        """Each context's contiguous shard of a global batch, and its loss weight ``shard / batch``.

        ``shard_slices`` rather than ``gluon.utils.split_and_load(even_split=False)``:
        that one gives the whole remainder to the last context (14 over 3 is
        4, 4, 6); ``shard_slices`` balances it (5, 5, 4), as on every other
        d2lx backend. The copy to each context is ``as_in_ctx``, as in
        ``split_and_load``; the shard on the data's own context is a view.
        """
        n = int(batch[-1].shape[0])
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
        parameters, here for the scratch model's plain arrays.
        """
        if self._kv is None:
            self._kv = mx.kv.create("device")
        for key, arrays in enumerate(zip(*copies)):
            grads = [a.grad for a in arrays]
            if key not in self._kv_keys:  # init gives the key its shape; pushes replace the value
                self._kv.init(key, np.zeros(grads[0].shape, dtype=grads[0].dtype))
                self._kv_keys.add(key)
            self._kv.pushpull(key, grads, out=grads, priority=-key)
