"""``d2l.Module`` for MXNet: a ``gluon.Block`` with d2l's methods."""

from __future__ import annotations

import mxnet as mx
from mxnet import gluon, np

from d2lx.module import ModuleBase


class Module(ModuleBase, gluon.Block):
    """Base class of models: ``gluon.Block`` + ``training_step``/``validation_step``...

    A ``Block`` (not a ``HybridBlock``) on purpose: a d2l model keeps Python
    state (``self.trainer``, plain ``attach_grad`` arrays in the scratch model)
    that a symbolic graph cannot hold; the concise model hybridizes its layer
    (``self.net``) instead, which is where the compute is.

    Two hooks let the trainer treat any model alike: :meth:`param_arrays`
    (what gradient clipping acts on; the scratch model's ``attach_grad``
    arrays are not Gluon ``Parameter``\\ s) and :meth:`materialize` (finish
    deferred initialization, move to the context).
    """

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        gluon.Block.__init__(self)
        self.save_hyperparameters()

    def param_arrays(self) -> list[np.ndarray]:
        """The trainable arrays; ``a.grad`` is each one's gradient buffer."""
        return [p.data() for p in self.collect_params().values() if p.grad_req != "null"]

    def materialize(self, num_inputs: int, ctx: mx.Context) -> None:
        """Move initialized (or deferred) Gluon parameters to ``ctx``.

        A user's d2l-style model that calls ``self.net.initialize(...)`` in its
        ``__init__`` (as d2l 3.5 does) has parameters on the CPU, or deferred;
        they follow the trainer's device here. Parameters that were never
        initialized are left alone, so Gluon reports that itself.
        """
        for param in self.collect_params().values():
            try:
                contexts = param.list_ctx()
            except RuntimeError:  # never initialized
                continue
            if contexts != [ctx]:
                param.reset_ctx(ctx)
