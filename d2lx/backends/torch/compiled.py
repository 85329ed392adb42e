"""PyTorch's fused path: ``steps_per_execution > 1`` on a CUDA device replays CUDA graphs.

Why: on a GPU an eager step of a small model waits on Python and on kernel
launches, not on the GPU. One CUDA graph records a step's kernels once and
relaunches them all with one call. On an H200 (1,000,000 x 256, batch
4096, validation included) a one-epoch fit this way took 47-52 ms, against
109-172 ms for the hand-written eager loop in the same runs.

What it means for the reader, as with JAX's and TensorFlow's traced steps:
``training_step`` and ``validation_step`` run in Python once per batch shape,
when that shape's graph is captured; a replay runs only their GPU work. So a
Python side effect in them (a counter, a print) happens at capture only, and
values plotted other than the loss are not drawn. The optimizer's numbers
are baked into a capture too, so a learning rate changed between epochs
makes the next epoch capture afresh (:func:`optimizer_settings`). Each shape
runs :data:`WARMUP_CALLS` times uncaptured first, because optimizers create
their state on their first step. A step that cannot be captured (one that
reads a value to the host, ``loss.item()``) runs uncaptured for the rest of
the fit, with a warning that says why.

The divergence guard moves onto the device: a step keeps copies of the
parameters and of the optimizer's state tensors and puts them back when its
loss or its new parameters are not finite, or when an earlier step of the
epoch was refused. The epoch's losses and the guard's latch come back in
one read at the end of the epoch. After a refused step ``p.grad`` holds that
step's gradients, which were not applied.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Divergence, EpochResult

#: Uncaptured calls of each batch shape before its capture (optimizers make their state on the first step).
WARMUP_CALLS = 1


def capture_problem(optim: Any) -> str | None:
    """Why ``optim`` cannot run inside a CUDA graph, with the fix; ``None`` if it can."""
    if isinstance(optim, torch.optim.Optimizer) \
            and any(group.get("capturable") is False for group in optim.param_groups):
        return (f"{type(optim).__name__} keeps its step count on the host; make it with capturable=True "
                f"(torch.optim.{type(optim).__name__}(..., capturable=True))")
    return None


def optimizer_settings(optim: Any) -> tuple[Any, ...]:
    """The optimizer's plain-number settings (learning rate, momentum...), which a capture bakes in.

    ``torch.optim``'s are its param groups' numbers; a hand-written
    optimizer's (d2l's ``SGD``) its attributes that are numbers. A callback
    that changes one between epochs makes the next epoch capture afresh.
    """
    groups = getattr(optim, "param_groups", None)
    if isinstance(groups, list):
        items = groups
    else:
        items = [vars(optim)] if hasattr(optim, "__dict__") else []
    return tuple(tuple(sorted((key, value) for key, value in group.items()
                              if isinstance(value, (bool, int, float)))) for group in items)


class _Graph:
    """One captured call and its static input buffers (a replay reads its batch from them)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor]) -> None:
        self.graph, self.inputs = graph, inputs

    def replay(self, batch: Batch) -> None:
        for buffer, value in zip(self.inputs, batch):
            buffer.copy_(value)
        self.graph.replay()


class GraphedSteps:
    """The epochs of one fit as CUDA-graph replays (see the module docstring); ``step`` is its TorchStep.

    ``capture=False`` runs the same device-guarded steps uncaptured: the
    path's bookkeeping, testable where there is no GPU.
    """

    def __init__(self, step: Any, capture: bool = True) -> None:
        self.step, self.trainer, self.capture = step, step.trainer, capture
        device = self.trainer.device
        self.params = step.guard.params  # trainable_tensors(model): what the eager guard watches too
        self.check = bool(self.trainer.check_finite)
        # Everything a graph writes lives here for the whole fit: a graph keeps the addresses it captured.
        self.status = torch.zeros(3, dtype=torch.int64, device=device)  # refused, applied, finite loss?
        self.slots = torch.zeros(2, dtype=torch.int64, device=device)  # next train and validation slot
        self.losses = torch.zeros(0, device=device)
        self.val_losses = torch.zeros(0, device=device)
        self._graphs: dict[tuple[Any, ...], _Graph | None] = {}  # None: runs uncaptured
        self._calls: dict[tuple[Any, ...], int] = {}
        self._saved: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self._settings = optimizer_settings(step.optim)

    def run_epoch(self, train: ArrayLoader, val: ArrayLoader | None) -> EpochResult:
        steps, val_steps = len(train), 0 if val is None else len(val)
        self._reserve(steps, val_steps)
        settings = optimizer_settings(self.step.optim)
        if settings != self._settings:  # a graph holds the learning rate it was captured with
            self._settings = settings
            self._forget_graphs()
        self.status.zero_()
        self.slots.zero_()
        self.step.set_training(True)
        for batch in train:
            self._call("train", self._train, batch)
        if val is not None:
            self.step.set_training(False)
            for batch in val:
                self._call("val", self._validate, batch)
        parts = [self.status.double(), self.losses[:steps].double(), self.val_losses[:val_steps].double()]
        host = torch.cat(parts).cpu().numpy()  # the epoch's one device-to-host read
        divergence = None
        if host[0]:
            divergence = Divergence(int(host[1]), "parameters" if host[2] else "loss")
        train_losses = host[3:3 + steps] if divergence is None else host[3:3 + divergence.step + 1]
        return EpochResult(train_losses, None if val is None else host[3 + steps:], divergence)

    def _reserve(self, steps: int, val_steps: int) -> None:
        """Loss buffers for this epoch; new ones (bigger loaders) invalidate every captured graph."""
        if steps > len(self.losses) or val_steps > len(self.val_losses):
            self.losses = torch.zeros(max(steps, len(self.losses)), device=self.trainer.device)
            self.val_losses = torch.zeros(max(val_steps, len(self.val_losses)), device=self.trainer.device)
            self._forget_graphs()

    def _forget_graphs(self) -> None:
        """Capture every batch shape afresh (after its uncaptured call) from the next batch on."""
        self._graphs.clear()
        self._calls.clear()

    def _call(self, kind: str, fn: Callable[[Batch], None], batch: Batch) -> None:
        key = (kind, *(getattr(t, "shape", type(t)) for t in batch))  # dtypes are fixed by the loader
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay(batch)
            return
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        if key in self._graphs or calls <= WARMUP_CALLS or not self.capture:  # not (yet) captured
            fn(batch)
            return
        graph = self._graphs[key] = self._capture(kind, fn, batch)
        if graph is None:
            fn(batch)
        else:
            graph.replay(batch)

    def _capture(self, kind: str, fn: Callable[[Batch], None], batch: Batch) -> _Graph | None:
        """Record ``fn`` on a batch shape; ``None`` (with a warning why) if CUDA refuses to record it.

        Like ``torch.cuda.graph``, but on a stream of its own, so that a failed
        capture leaves neither that stream current nor the allocator routing
        the default stream's memory into the graph's pool.
        """
        if not all(isinstance(t, torch.Tensor) for t in batch):
            return None  # a batch item that is no tensor cannot be fed to a replay
        device = self.trainer.device
        inputs = [t.clone() for t in batch]
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
        torch.cuda.synchronize(device)
        failure: Exception | None = None
        with torch.cuda.stream(stream):
            graph.capture_begin()
            try:
                fn(tuple(inputs))
            except Exception as exc:  # a host read, or another operation CUDA graphs forbid
                failure = exc
            try:
                graph.capture_end()
            except Exception as exc:
                failure = failure or exc
        torch.cuda.synchronize(device)
        if failure is None:
            return _Graph(graph, inputs)
        what = "training_step" if kind == "train" else "validation_step"
        reason = (str(failure).strip().splitlines() or [""])[0]
        warnings.warn(f"steps_per_execution={self.trainer.steps_per_execution}: {what} cannot be captured "
                      f"in a CUDA graph ({type(failure).__name__}: {reason}), so its batches of this shape "
                      f"run one at a time, uncaptured (same results, slower). Remove host reads such as "
                      f".item() or float(loss) from it, or use steps_per_execution=1", UserWarning,
                      stacklevel=8)  # the reader's fit()
        return None

    def _kept(self) -> list[torch.Tensor]:
        """What a refused step puts back: the parameters and the optimizer's state tensors."""
        state = getattr(self.step.optim, "state", None)
        slots = [value for entry in state.values() for value in entry.values()
                 if isinstance(value, torch.Tensor)] if isinstance(state, dict) else []
        return [*self.params, *slots]

    def _save(self, kept: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copy ``kept`` into buffers of the fit (one multi-tensor copy; a graph keeps their addresses)."""
        key = tuple(id(t) for t in kept)
        saved = self._saved.get(key)
        if saved is None:
            saved = self._saved[key] = [torch.empty_like(t) for t in kept]
        with torch.no_grad():
            torch._foreach_copy_(saved, [t.detach() for t in kept])
        return saved

    def _train(self, batch: Batch) -> None:
        """One guarded step, in few kernels: on a GPU each one costs microseconds, whatever its size.

        The batch is not checked: d2lx's loader refused non-finite arrays
        when it was made. The loss and the new parameters are checked in one
        ``isfinite`` over their concatenation; ``status`` counts the applied
        steps and latches the first refused one (its cause: 1 if its loss was
        finite, so the parameters were not).
        """
        loss = self.step._loss(batch, draw_extras=False)
        if not self.check:
            self.step.update(loss)
            self._record(self.losses, 0, loss)
            return
        kept = self._kept()
        saved = self._save(kept)
        self.step.update(loss)
        with torch.no_grad():
            finite = torch.isfinite(torch.cat([loss.detach().reshape(1),
                                               *(p.detach().reshape(-1) for p in self.params)]))
            open_ = self.status[0] == 0
            keep = open_ & finite.all()
            for tensor, before in zip(kept, saved):
                torch.where(keep, tensor, before, out=tensor)
            refused = open_ & ~keep
            self.status.add_(torch.stack([refused, keep, refused & finite[0]]))
        self._record(self.losses, 0, loss)

    def _validate(self, batch: Batch) -> None:
        self._record(self.val_losses, 1, self.step._val_loss(batch, draw_extras=False))

    def _record(self, buffer: torch.Tensor, slot: int, loss: torch.Tensor) -> None:
        index = self.slots[slot:slot + 1]
        with torch.no_grad():
            buffer.index_copy_(0, index, loss.detach().reshape(1).to(buffer.dtype))
            index.add_(1)

