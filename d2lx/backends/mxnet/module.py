"""``d2l.Module`` for MXNet: a ``gluon.Block`` with d2l's methods."""

from __future__ import annotations

from collections.abc import Sequence

import mxnet as mx
import numpy as onp
from mxnet import gluon, np

from d2lx.module import ModuleBase


def context_list(ctx: mx.Context | Sequence[mx.Context]) -> list[mx.Context]:
    """One context or several (data parallelism) as a list, the first one primary."""
    return [ctx] if isinstance(ctx, mx.Context) else list(ctx)


class Module(ModuleBase, gluon.Block):
    """Base class of models: ``gluon.Block`` + ``training_step``/``validation_step``...

    A ``Block`` (not a ``HybridBlock``) on purpose: a d2l model keeps Python
    state (``self.trainer``, plain ``attach_grad`` arrays in the scratch model)
    that a symbolic graph cannot hold; the concise model hybridizes its layer
    (``self.net``) instead, which is where the compute is.

    Three hooks let the trainer treat any model alike: :meth:`contexts`
    (where copies of the parameters live: one context, or one per device
    under data parallelism, as Gluon keeps one copy of a ``Parameter`` per
    context), :meth:`param_arrays` (the trainable arrays on one context; what
    gradient clipping and the gradient all-reduce act on, because the scratch
    model's ``attach_grad`` arrays are not Gluon ``Parameter``\\ s) and
    :meth:`materialize` (finish deferred initialization, place the copies).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        gluon.Block.__init__(self)
        self.save_hyperparameters()

    def contexts(self) -> list[mx.Context]:
        """The contexts holding a copy of the parameters, the primary one first."""
        for param in self.collect_params().values():
            try:
                return list(param.list_ctx())
            except RuntimeError:  # never initialized
                continue
        return [mx.cpu()]

    def param_arrays(self, ctx: mx.Context | None = None) -> list[np.ndarray]:
        """The trainable arrays on ``ctx`` (default: the primary context); ``a.grad`` is each one's gradient.

        The context is always named: Gluon's ``Parameter.data()`` without one
        means "the current default context", which is wrong for parameters
        that live on ``gpu(0), gpu(1)``.
        """
        ctx = self.contexts()[0] if ctx is None else ctx
        return [p.data(ctx) for p in self.collect_params().values() if p.grad_req != "null"]

    def materialize(self, num_inputs: int, ctx: mx.Context | Sequence[mx.Context]) -> None:
        """Move initialized (or deferred) Gluon parameters to ``ctx`` (one context or a list).

        A user's d2l-style model that calls ``self.net.initialize(...)`` in its
        ``__init__`` (as d2l 3.5 does) has parameters on the CPU, or deferred;
        they follow the trainer's devices here. With several contexts Gluon
        keeps one synchronised copy per context (``Parameter.reset_ctx``), which
        is what its ``Trainer`` all-reduces over. Parameters that were never
        initialized are left alone, so Gluon reports that itself.
        """
        ctxs = context_list(ctx)
        for param in self.collect_params().values():
            try:
                contexts = param.list_ctx()
            except RuntimeError:  # never initialized
                continue
            if list(contexts) != ctxs:
                param.reset_ctx(ctxs)

    def predict(self, X: onp.ndarray) -> onp.ndarray:
        """Forward a NumPy batch on the model's (primary) context; return NumPy (framework-free)."""
        params = self.param_arrays()
        ctx = params[0].ctx if params else mx.cpu()
        out = self(np.array(onp.asarray(X, dtype=onp.float32), dtype=onp.float32, ctx=ctx))
        result: onp.ndarray = out.asnumpy()
        return result
