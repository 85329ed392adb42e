"""Data-parallel training for the TensorFlow backend on ``tf.distribute.MirroredStrategy``.

One process drives N devices (``/GPU:0..N-1``, or N logical CPU devices made
from the physical CPU with ``tf.config.set_logical_device_configuration``),
as in TensorFlow's "custom training loop with ``tf.distribute``" guide:

* Variables (model, optimizer, the trainer's counters) are created in
  ``strategy.scope()``, so each is a ``MirroredVariable``: one copy per
  device, kept equal by updates applied to every copy.
* Each compiled training step receives the whole global batch;
  ``strategy.run`` runs the model's ``training_step`` once per device on
  that device's contiguous shard (the split of :func:`d2lx.sharding.shard_slices`,
  computed in the graph because the last batch is shorter) under its own
  ``GradientTape``.
* Shards may differ in size by one example, so each replica's mean loss is
  weighted by ``shard / batch``: its gradient is then that shard's
  ``sum(loss_i) / global_batch_size``, the weighting
  ``tf.nn.compute_average_loss(..., global_batch_size=...)`` applies to
  per-example losses. ``strategy.extended.batch_reduce_to(SUM, ...)`` adds
  the replicas' losses and gradients in one cross-device reduction, which
  gives exactly the global batch's mean loss and its gradient.
* The guard, clipping and ``get_grads`` see that global loss and gradient,
  in cross-replica context (:class:`DataParallelStep` is
  :class:`~d2lx.backends.tensorflow.step.TFStep` with its gradients and its
  update replaced). d2l's hand-written ``SGD`` updates the mirrored
  variables with it there (``MirroredVariable.assign_sub`` writes every
  copy). A Keras optimizer must be applied in replica context under a
  strategy, where it sums the replicas' gradients itself; it gets each
  replica's own weighted gradient, scaled by the clipping factor of the sum.

N-device training therefore ends where one-device training ends, within
float32 rounding. Validation runs on the first device with the (identical)
first copy of the variables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from d2lx.backends.tensorflow.step import TFStep
from d2lx.errors import InvalidArgumentError
from d2lx.loader import Batch
from d2lx.sharding import check_shardable


def ensure_logical_cpus(count: int) -> None:
    """Make TensorFlow expose at least ``count`` logical CPU devices (``/CPU:0..count-1``).

    TensorFlow fixes its device list when its runtime starts (the first op or
    variable), so the physical CPU is split here only if that has not
    happened yet; otherwise a runtime with too few CPU devices is an error
    that names the fix.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have >= count:
            return
        raise InvalidArgumentError(
            f"devices={count} on the CPU needs {count} logical CPU devices, but TensorFlow's "
            f"runtime already started with {have}; create the Trainer(devices={count}) before "
            "any TensorFlow op or variable runs (build data and d2lx models first, they do "
            "not start it), or split the CPU at the top of your script: "
            "tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0], "
            f"[tf.config.LogicalDeviceConfiguration()] * {count})"
        ) from None


def shard_bounds(n: tf.Tensor, world: int, replica: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """``(start, size)`` of ``replica``'s shard of ``n`` examples, in the graph.

    The same split as :func:`d2lx.sharding.shard_slices` (``numpy.array_split``):
    the first ``n % world`` replicas get one example more.
    """
    replica = tf.cast(replica, n.dtype)
    base, extra = n // world, n % world
    start = replica * base + tf.minimum(replica, extra)
    size = base + tf.cast(replica < extra, n.dtype)
    return start, size


_STRATEGIES: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def mirrored_strategy(devices: Sequence[str]) -> tf.distribute.MirroredStrategy:
    """The process's one ``MirroredStrategy`` over ``devices`` (made on first use).

    One per device set, shared by trainers: variables are mirrored by the
    strategy whose scope created them, so a model trained by one
    ``Trainer(devices=N)`` can be trained again by another. The reduction is
    explicit: TensorFlow's default, collective all-reduce, numbers its
    collective groups per strategy from the same start, so two strategies
    over different device sets in one process would collide ("joining a
    group with size 3, but that group has size 2"). On CPU devices
    ``ReductionToOneDevice`` (sum on the first device, copy back) is what a
    few logical CPUs sharing one memory need; on GPUs ``NcclAllReduce``.
    """
    key = tuple(devices)
    strategy = _STRATEGIES.get(key)
    if strategy is None:
        on_cpu = all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in key)
        ops = (tf.distribute.ReductionToOneDevice(reduce_to_device=key[0]) if on_cpu
               else tf.distribute.NcclAllReduce())
        strategy = _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=list(key),
                                                                    cross_device_ops=ops)
    return strategy


class DataParallel:
    """The ``MirroredStrategy`` of one trainer, the batch check and the sharded gradients."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        self.world = len(self.devices)
        self.strategy = mirrored_strategy(self.devices)

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Refuse batches that would leave a device without examples (before any step)."""
        check_shardable(num_examples, batch_size, self.world)

    def loss_and_grads(self, replica_fn: Callable[[Batch, tf.Tensor], tuple[Any, list[Any]]],
                       batch: Batch) -> tuple[tf.Tensor, list[Any], Any]:
        """Run ``replica_fn(shard, weight)`` on every device; sum losses and gradients across them.

        Called while tracing, in cross-replica context. ``replica_fn`` returns
        the weighted loss and one gradient per trainable variable (``None``
        where a variable gets none; that pattern is the same on every
        replica). Returns the global batch's mean loss and gradients (one
        batched all-reduce, read from the first device) and the replicas' own
        weighted gradients (``PerReplica``), for an optimizer that sums them
        itself (:meth:`apply_in_replicas`).
        """
        world = self.world
        missing: list[bool] = []

        def on_replica(*global_batch: Any) -> tuple[tf.Tensor, list[Any]]:
            ctx = tf.distribute.get_replica_context()
            n = tf.shape(global_batch[-1], out_type=tf.int64)[0]
            start, size = shard_bounds(n, world, ctx.replica_id_in_sync_group)
            shard = tuple(t[start:start + size] for t in global_batch)
            weight = tf.cast(size, tf.float32) / tf.cast(n, tf.float32)
            loss, grads = replica_fn(shard, weight)
            missing[:] = [g is None for g in grads]
            return loss, [tf.convert_to_tensor(g) for g in grads if g is not None]

        loss, local = self.strategy.run(on_replica, args=tuple(batch))
        values = [loss, *local]
        # Destination = the values' own devices: an all-reduce (the efficient batched path).
        summed = self.strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(v, v) for v in values])
        first = [self.strategy.experimental_local_results(v)[0] for v in summed]
        rest = iter(first[1:])
        return first[0], [None if gone else next(rest) for gone in missing], local

    def apply_in_replicas(self, optim: Any, local: Sequence[Any], variables: Sequence[Any],
                          scale: tf.Tensor | None) -> None:
        """``optim.apply_gradients`` in replica context, on each replica's own gradients.

        The Keras optimizer all-reduces (sums) them; the sum of the weighted
        shard gradients is the global batch's gradient. ``scale`` is the
        clipping factor computed from that sum (the same on every replica).
        """

        def on_replica(*grads: Any) -> None:
            if scale is not None:
                grads = tuple(g * tf.cast(scale, g.dtype) for g in grads)
            optim.apply_gradients(list(zip(grads, variables)))

        self.strategy.run(on_replica, args=tuple(local))


class DataParallelStep(TFStep):
    """:class:`~d2lx.backends.tensorflow.step.TFStep` over the strategy's devices (never cached).

    Not compiled with XLA: an XLA program runs on one device, and this step
    places work on several (``strategy.run``, the cross-device reduction).
    """

    auto_xla = False

    def __init__(self, trainer: Any, dp: DataParallel) -> None:
        super().__init__(trainer)
        self.dp = dp
        self._local: Any = None  # trace-time values: the replicas' gradients and their sum
        self._summed: list[Any] = []

    def _gradients(self, batch: Batch) -> tuple[Any, list[Any]]:
        loss, grads, self._local = self.dp.loss_and_grads(self._loss_and_grads, batch)
        self._summed = [g for g in grads if g is not None]
        return loss, grads

    def _apply(self, pairs: list[tuple[Any, Any]]) -> None:
        if not isinstance(self.optim, tf.keras.optimizers.Optimizer):
            super()._apply(pairs)  # d2l's SGD: assign_sub on the mirrored variables, cross-replica
            return
        clip, scale = self.trainer.gradient_clip_val, None
        if clip > 0:  # tf.clip_by_global_norm's factor, of the summed gradient
            scale = clip * tf.minimum(1.0 / tf.linalg.global_norm(self._summed), 1.0 / clip)
        self.dp.apply_in_replicas(self.optim, self._local, [v for _, v in pairs], scale)
