"""``d2l.Module`` for MXNet: a ``gluon.Block`` with d2l's methods, on one context or several."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, np
from mxnet.gluon.parameter import DeferredInitializationError

from d2lx.module import ModuleBase

_REPLICAS = "_d2lx_replicas"  # in the instance __dict__: host bookkeeping, not a Gluon child


def context_list(ctx: mx.Context | Sequence[mx.Context]) -> list[mx.Context]:
    """One context or several (data parallelism) as a list, the first one primary."""
    return [ctx] if isinstance(ctx, mx.Context) else list(ctx)


def plain_arrays(block: Any) -> dict[str, np.ndarray]:
    """A d2l-style scratch model's trainable arrays: attributes with ``attach_grad`` (by name).

    d2l 3.4 keeps ``self.w = d2l.normal(...); self.w.attach_grad()``: plain
    arrays that ``collect_params()`` does not list, yet the update changes.
    """
    return {name: value for name, value in vars(block).items()
            if isinstance(value, mx.nd.NDArray) and value.grad is not None}


class Module(ModuleBase, mx.gluon.Block):
    """Base class of models: ``gluon.Block`` + d2l's ``training_step``, ``plot``, ``board``...

    A ``Block`` (not a ``HybridBlock``) on purpose: a d2l model keeps Python
    state (``self.trainer``, plain ``attach_grad`` arrays in the scratch model)
    that a symbolic graph cannot hold; the concise model hybridizes its layer
    (``self.net``), which is where the compute is.

    The trainer treats every model alike through :meth:`materialize` (finish
    deferred initialization, place the copies), :meth:`contexts` (where
    copies of the parameters live: one context, or one per device under data
    parallelism, as Gluon keeps one copy of a ``Parameter`` per context) and
    :meth:`param_arrays` (the trainable arrays on one context: what clipping,
    the all-reduce and the guard act on, the scratch model's plain arrays
    included).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        mx.gluon.Block.__init__(self)
        self.save_hyperparameters()

    # -- where the parameters live ------------------------------------------------------
    def _replicas(self) -> dict[mx.Context, dict[str, np.ndarray]]:
        """The plain arrays' copies on the further contexts (data parallelism), by context."""
        return self.__dict__.setdefault(_REPLICAS, {})

    def contexts(self) -> list[mx.Context]:
        """The contexts holding a copy of the parameters, the primary one first."""
        for param in self.collect_params().values():
            try:
                return list(param.list_ctx())
            except RuntimeError:  # never initialized
                continue
        arrays = list(plain_arrays(self).values())
        if arrays:
            return [arrays[0].ctx, *self._replicas()]
        return [mx.cpu()]

    def param_arrays(self, ctx: mx.Context | None = None) -> list[np.ndarray]:
        """The trainable arrays on ``ctx`` (default: the primary context); ``a.grad`` is each one's gradient.

        The context is always named: Gluon's ``Parameter.data()`` without one
        means "the current default context", which is wrong for parameters
        that live on ``gpu(0), gpu(1)``.
        """
        ctx = self.contexts()[0] if ctx is None else ctx
        arrays = [p.data(ctx) for p in self.collect_params().values() if p.grad_req != "null"]
        plain = plain_arrays(self)
        replica = self._replicas().get(ctx)
        if replica is not None:
            return arrays + [replica[name] for name in plain]
        return arrays + [a for a in plain.values() if a.ctx == ctx]

    def materialize(self, example: Sequence[Any], ctx: mx.Context | Sequence[mx.Context]) -> None:
        """Place the parameters on ``ctx`` (one context or a list); finish deferred init from ``example``.

        Gluon parameters get one synchronised copy per context
        (``Parameter.reset_ctx``), which is what ``gluon.Trainer``
        all-reduces over; a reader's ``self.net.initialize(...)`` in
        ``__init__`` (d2l 3.5) leaves them on the CPU, or deferred until the
        width of the data is known: one forward pass on the real batch
        ``example`` (already on the first context) completes them. Plain
        ``attach_grad`` arrays move to the first context with fresh gradient
        buffers, and each further context gets its own copy (see
        :meth:`on_context`). Parameters that were never initialized are left
        alone, so Gluon reports that itself.
        """
        ctxs = context_list(ctx)
        deferred = False
        for param in self.collect_params().values():
            try:
                contexts = param.list_ctx()
            except RuntimeError:  # never initialized
                continue
            if list(contexts) != ctxs:
                param.reset_ctx(ctxs)
            try:
                param.list_data()
            except DeferredInitializationError:
                deferred = True
        for name, array in plain_arrays(self).items():
            if array.ctx != ctxs[0]:
                moved = array.as_in_ctx(ctxs[0])
                moved.attach_grad()
                self.__dict__[name] = moved
        replicas = self._replicas()
        replicas.clear()
        for other in ctxs[1:]:
            copies = {name: array.copyto(other) for name, array in plain_arrays(self).items()}
            for array in copies.values():
                array.attach_grad()
            replicas[other] = copies
        if deferred:
            with autograd.pause():
                self(*example[:-1])

    @contextlib.contextmanager
    def on_context(self, ctx: mx.Context) -> Iterator[None]:
        """Let the plain arrays' attributes name their copies on ``ctx`` for a while.

        Gluon picks a parameter's copy by its input's context; a scratch
        model's ``np.dot(X, self.w)`` cannot. So under data parallelism a
        shard's step on ``ctx`` runs with ``self.w`` pointing at the copy
        there: any d2l-style scratch model (and its own ``loss``, e.g. a
        weight-decay penalty on ``self.w``) becomes data parallel unchanged.
        """
        copies = self._replicas().get(ctx)
        if not copies:
            yield
            return
        saved = {name: self.__dict__[name] for name in copies}
        self.__dict__.update(copies)
        try:
            yield
        finally:
            self.__dict__.update(saved)

    def sync_replicas(self) -> None:
        """Copy the plain arrays' primaries into their copies (after an update of the primaries)."""
        plain = plain_arrays(self)
        for copies in self._replicas().values():
            for name, copy in copies.items():
                plain[name].copyto(copy)  # in place: the copy keeps its gradient buffer

    def predict(self, X: onp.ndarray) -> onp.ndarray:
        """The model's output for a NumPy batch, as NumPy float32 (framework-free)."""
        ctx = self.contexts()[0]
        out = self(np.array(onp.asarray(X, dtype=onp.float32), dtype=onp.float32, ctx=ctx))
        return onp.asarray(out.asnumpy(), dtype=onp.float32)


class GraphStepModule(Module):
    """A d2lx model whose step can run as one cached graph, with exactly d2l's numbers.

    On a small batch a step costs MXNet's per-operator overhead (some
    20-40 us of Python and engine work per operator on the CPU), not
    arithmetic: on the seed's batches of 32, computing ``loss(self(X), y)``
    as one graph instead of six or seven operators takes about 45% (concise)
    and 30% (scratch) off a fit. So :meth:`training_step` and
    :meth:`validation_step` take the loss from :meth:`graph_loss`, which
    d2lx's models give where it is bit for bit what their ``forward`` and
    ``loss`` compute (the tests check value and gradients). ``None`` means
    "not here": d2l's step runs as written, as it does for a subclass with
    its own ``forward`` or ``loss`` (see :meth:`runs_own_step`).

    The graph is kept outside Gluon's view (:meth:`kept`): a block in the
    instance ``__dict__`` would be a second home of the parameters, named
    twice in checkpoints and printed with the model.
    """

    def graph_loss(self, batch: Any) -> np.ndarray | None:
        return None

    def training_step(self, batch: Any) -> Any:
        l = self.graph_loss(batch)
        if l is None:
            return super().training_step(batch)
        self.plot("loss", l, train=True)
        return l

    def validation_step(self, batch: Any) -> Any:
        l = self.graph_loss(batch)
        if l is None:
            return super().validation_step(batch)
        self.plot("loss", l, train=False)
        return l

    def runs_own_step(self, cls: type[GraphStepModule], batch: Any) -> bool:
        """Whether a step on ``batch`` would be exactly ``cls``'s ``loss(self(X), y)``, hooks and all.

        ``cls``'s own ``forward``, ``loss`` and Gluon's ``__call__`` (not a
        subclass's, nor an ``add_to_class`` replacement), one input, and no
        forward hooks, which would not fire inside a graph.
        """
        own = type(self)
        return (len(batch) == 2 and own.forward is cls.forward and own.loss is cls.loss
                and own.__call__ is gluon.Block.__call__
                and not (self._forward_hooks or self._forward_pre_hooks))

    @staticmethod
    def hybridized(block: gluon.HybridBlock) -> Any:
        """``block`` hybridized with ``static_alloc``: its buffers are allocated once, then reused.

        That is the hand-written loop's "static" variant (about 5% of a seed
        step). Not ``static_shape``: the last, shorter batch of every epoch
        would re-plan the graph. MXNet gives every call its own outputs and
        keeps a recorded call's buffers until its backward (the tests check
        both), so the epoch's losses and a second call before ``backward``
        are safe.
        """
        block.hybridize(static_alloc=True)
        return block

    def kept(self) -> Kept:
        """What this model keeps for its graph step: the graph, the loss block it made (made on first use)."""
        kept = self.__dict__.get(_KEPT)
        if kept is None:
            kept = self.__dict__[_KEPT] = Kept()
        return kept


class Kept:
    """A plain holder, which Gluon neither registers as a child nor warns about as a container."""

    __slots__ = ("graph", "loss_fn")

    def __init__(self) -> None:
        self.graph: Any = None
        self.loss_fn: Any = None  # the loss block the model made (a reader may set another)


_KEPT = "_d2lx_graph"
