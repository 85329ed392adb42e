"""Data-parallel training for the PyTorch backend on ``torch.distributed``.

One process per device, started by ``torchrun`` (or ``d2lx fit --devices N``,
which starts torchrun for you). Every process builds the same seeded data and
draws the same shuffling order; each takes its contiguous shard of every
global batch (:func:`d2lx.sharding.shard_slices`). The step runs through
``DistributedDataParallel`` (gloo on CPU, nccl on GPU), which all-reduces and
*averages* the gradients. Shards may differ in size by one example, so each
process scales its shard's mean loss by ``shard * world / batch``: the average
of those gradients is exactly the gradient of the global batch's mean loss,
and N-process training ends where one-process training ends. The global
batch's loss is one all-reduce of the processes' shares per step, read once
on every process, so all of them stop at the same step if it is not finite.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from d2lx.backends.torch.step import TorchStep
from d2lx.devices import DeviceSpec
from d2lx.errors import InvalidArgumentError
from d2lx.loader import Batch
from d2lx.sharding import check_shardable, shard_slices


class _TrainingStep(nn.Module):
    """Routes ``model.training_step`` through DDP's forward, so a user's step is kept."""

    def __init__(self, model: nn.Module, trainer: Any) -> None:
        super().__init__()
        self.model = model
        self.trainer = trainer

    def forward(self, batch: Batch) -> Any:
        from d2lx.step import step_loss

        with self.trainer.observing() as seen:
            return step_loss(self.model.training_step(batch), seen, "training_step")


_EXIT_BARRIER_S = 60  #: how long a process waits at exit for the others (gloo)
#: The data-parallel steps alive in this process: their DDP wrappers are let go at exit (below).
_STEPS: weakref.WeakSet[DataParallelStep] = weakref.WeakSet()


def _destroy_process_group() -> None:
    """Take the process group down together, before the interpreter exits.

    A gloo group left alive at exit, or destroyed by one process while
    another still talks to it, is torn down with its threads still running,
    and the C++ runtime aborts the process ("terminate called without an
    active exception", SIGABRT) after a run that finished and wrote its
    results: about one run in three on a 2-core CPU. So every process waits
    for the others (a barrier; with gloo at most ``_EXIT_BARRIER_S``, since
    a process that failed alone may never come), then destroys its group.

    The DDP wrappers of finished fits are let go first, and collected while
    the interpreter is whole: a wrapper (its reducer) keeps the group and
    the work of its last all-reduce alive, and destroyed only during the
    interpreter's finalization it aborted the same way, rarely (once in
    some fifty runs, more often on a busy machine).
    """
    if not dist.is_initialized():
        return
    try:  # bounded where gloo allows: a process that failed alone must not keep the others waiting
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=_EXIT_BARRIER_S))
        else:
            dist.barrier()
    except RuntimeError:
        pass  # another process is gone already: nothing to wait for
    for step in list(_STEPS):
        step.release()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


class DataParallel:
    """The process group, this process's rank and device, and the batch split."""

    def __init__(self, specs: list[DeviceSpec]) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != len(specs) or "RANK" not in os.environ:
            raise InvalidArgumentError(
                f"strategy='data_parallel' with devices={len(specs)} on torch runs one process per "
                f"device, but this is {world} process(es); start it with "
                f"`torchrun --nproc_per_node={len(specs)} your_script.py` "
                f"or `d2lx fit --devices {len(specs)}`")
        self.world = world
        self.rank = int(os.environ["RANK"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.spec = specs[self.local_rank % len(specs)]
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.spec.kind == "gpu" else "gloo")
            atexit.register(_destroy_process_group)  # the group d2lx made, d2lx takes down

    def check_batches(self, num_examples: int, batch_size: int) -> None:
        """Refuse batches that would leave a device without examples."""
        check_shardable(num_examples, batch_size, self.world)

    def shard(self, batch: Batch) -> tuple[Batch, float]:
        n = int(batch[-1].shape[0])
        part = shard_slices(n, self.world)[self.rank]
        weight = (part.stop - part.start) * self.world / n
        return tuple(t[part] for t in batch), weight


class DataParallelStep(TorchStep):
    """:class:`~d2lx.backends.torch.step.TorchStep` on this process's shard, through DDP."""

    def __init__(self, trainer: Any, dp: DataParallel) -> None:
        super().__init__(trainer)
        self.dp = dp
        ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        self.ddp: DistributedDataParallel | None = DistributedDataParallel(
            _TrainingStep(self.model, trainer), device_ids=ids)
        _STEPS.add(self)

    def release(self) -> None:
        """Let go of the DDP wrapper (at exit: see :func:`_destroy_process_group`)."""
        self.ddp = None

    def train(self, batch: Batch) -> torch.Tensor:
        shard, weight = self.dp.shard(batch)
        assert self.ddp is not None, "a released step trains no more"
        loss = self.ddp(shard) * weight
        share = loss.detach() / self.dp.world
        dist.all_reduce(share, op=dist.ReduceOp.SUM)  # the global batch's mean loss, on every process
        if self.accepts(share, batch):  # the same verdict on every process: the loss is global
            self.update(loss)
            self.guard.applied()
        return share
