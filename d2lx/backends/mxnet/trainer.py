"""``d2l.Trainer`` for MXNet: contexts, placing the model, the step, checkpoint state."""

from __future__ import annotations

from typing import Any, ClassVar

import mxnet as mx
import numpy as onp
from mxnet import gluon, np

from d2lx.backends.mxnet import ops
from d2lx.backends.mxnet.distributed import DataParallel, DataParallelStep
from d2lx.backends.mxnet.module import Module, plain_arrays
from d2lx.backends.mxnet.ops import MXNetOps
from d2lx.backends.mxnet.step import MXNetStep
from d2lx.devices import DeviceSpec, gpu_unavailable
from d2lx.errors import CheckpointError
from d2lx.loader import ArrayLoader, Batch
from d2lx.step import Step
from d2lx.trainer import TrainerBase


class Trainer(TrainerBase):
    """Trains a d2lx MXNet ``Module`` (see :class:`d2lx.trainer.TrainerBase`).

    ``steps_per_execution`` is accepted for API parity; MXNet runs one step
    per Python iteration (the concise model's layer is hybridized).

    ``devices=N`` (data parallelism) runs in this one process over N contexts
    (see :mod:`d2lx.backends.mxnet.distributed`): the data and the validation
    pass stay on the first context (``self.device``), each step's shards go
    to every context, and the gradients are summed by a ``device`` kvstore.
    """

    backend_name = "mxnet"
    module_class = Module
    module_kind = "MXNet"
    module_base = "a gluon.Block"
    fused_devices: ClassVar[frozenset[str]] = frozenset()
    _dp: DataParallel | None = None

    def _setup_data_parallel(self, specs: list[DeviceSpec]) -> None:
        self._dp = DataParallel([self._native_device(spec) for spec in specs])

    @property
    def contexts(self) -> list[mx.Context]:
        """The contexts this trainer runs on: one, or one per device under data parallelism."""
        return [self.device] if self._dp is None else list(self._dp.contexts)

    def _native_device(self, spec: DeviceSpec) -> mx.Context:
        if spec.kind == "cpu":
            # cpu(1), cpu(2)... are further CPU contexts (data parallelism on the CPU);
            # a single-device run is always cpu(0) == mx.cpu().
            return mx.cpu(spec.index)
        visible = ops.visible_gpus()
        if spec.index >= visible:
            raise gpu_unavailable("mxnet", spec, visible,
                                  "install a CUDA build of MXNet 1.9.1 (e.g. mxnet-cu112) on a machine "
                                  "with an NVIDIA GPU")
        return mx.gpu(spec.index)

    def _array_ops(self) -> MXNetOps:
        return MXNetOps(self.device)

    def _place_model(self, model: Any, example: Batch) -> None:
        if self._dp is not None and isinstance(self.train_dataloader, ArrayLoader):
            self._dp.check_batches(self.train_dataloader.num_examples, self.train_dataloader.batch_size)
        model.materialize(example, self.contexts)

    def make_step(self) -> Step:
        return MXNetStep(self) if self._dp is None else DataParallelStep(self, self._dp)

    def clip_gradients(self, grad_clip_val: float, model: Any) -> None:
        """Rescale all gradients so their joint L2 norm is at most ``grad_clip_val`` (d2l 9.5).

        Gluon's own ``clip_global_norm`` with ``check_isfinite=False``: the
        scale ``min(1, clip / norm)`` stays on the device, so unlike d2l's
        ``if norm > clip`` there is no host round trip per step. It is written
        with legacy operators, hence the zero-copy ``as_nd_ndarray()`` views
        (the scaling is in place, into the buffers the optimizer reads).
        Under data parallelism this runs after the all-reduce, on every
        context's copy of the (identical) summed gradients.
        """
        for ctx in model.contexts():
            grads = [a.grad.as_nd_ndarray() for a in model.param_arrays(ctx)]
            if grads:
                gluon.utils.clip_global_norm(grads, grad_clip_val, check_isfinite=False)

    # -- checkpoints -------------------------------------------------------------------------
    def _state_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The model's Gluon parameters and plain ``attach_grad`` arrays, by checkpoint name.

        Parameters are named by their place in the model (``net.weight``), as
        ``Block.save_parameters`` names them: ``collect_params()``'s own names
        carry a global counter (``dense3_weight``), so a fresh instance of the
        same model would not match.
        """
        params = dict(self.model._collect_params_with_prefix())
        return params, plain_arrays(self.model)

    def model_state(self) -> dict[str, onp.ndarray]:
        params, plain = self._state_arrays()
        out = {name: p.list_data()[0].asnumpy() for name, p in params.items()}
        out.update({name: a.asnumpy() for name, a in plain.items()})
        return out

    def load_model_state(self, state: dict[str, onp.ndarray]) -> None:
        params, plain = self._state_arrays()
        own = {**{n: tuple(p.shape) for n, p in params.items()}, **{n: a.shape for n, a in plain.items()}}
        if sorted(own) != sorted(state):
            raise CheckpointError(f"the checkpoint's model state {sorted(state)} does not fit this model's "
                                  f"{sorted(own)}; resume with the model it was saved from")
        for name, shape in own.items():
            if tuple(shape) != tuple(state[name].shape):
                raise CheckpointError(f"the checkpoint's {name!r} has shape {tuple(state[name].shape)}, the "
                                      f"model's {tuple(shape)}; resume with the same model")
        for name, param in params.items():
            param.set_data(np.array(state[name], dtype=state[name].dtype))  # every context's copy
        for name, array in plain.items():
            array[:] = np.array(state[name], dtype=array.dtype, ctx=array.ctx)  # in place: grad kept
        self.model.sync_replicas()

    def optimizer_state(self) -> dict[str, onp.ndarray]:
        """A ``gluon.Trainer``'s updater states by parameter index: ``state.<i>[.<j>]``, ``count.<i>``.

        Momentum buffers and the like (``state``), with the update counts that
        Adam's bias correction reads (``count``); nothing for plain SGD, whose
        states are empty. Read as arrays, never pickled (Gluon's
        ``save_states`` pickles).
        """
        optim = self.optim
        if not isinstance(optim, gluon.Trainer) or not optim._kv_initialized:
            return {}
        out: dict[str, onp.ndarray] = {}
        for index, value in _updaters(optim)[0].states.items():
            _flatten(f"state.{index}", value, out)
        if out:
            counts: dict[int, int] = next(
                (c for c in optim._optimizer._all_index_update_counts.values() if c), {})
            out.update({f"count.{i}": onp.asarray(n, dtype=onp.int64) for i, n in counts.items()})
        return out

    def load_optimizer_state(self, state: dict[str, onp.ndarray]) -> None:
        optim = self.optim
        if not isinstance(optim, gluon.Trainer):
            if state:
                raise CheckpointError(f"the checkpoint holds optimizer state ({sorted(state)}) but "
                                      f"{type(optim).__name__} keeps none; resume with the same optimizer")
            return
        if not state:
            return
        params = optim._params
        trees: dict[int, dict[tuple[int, ...], onp.ndarray]] = {}
        counts: dict[int, int] = {}
        for key, value in state.items():
            parts = key.split(".")
            ok = (len(parts) >= 2 and parts[0] in ("state", "count") and all(p.isdigit() for p in parts[1:])
                  and int(parts[1]) < len(params) and (parts[0] == "state" or len(parts) == 2))
            if not ok:
                raise CheckpointError(f"the checkpoint's optimizer entry {key!r} does not fit this "
                                      f"gluon.Trainer ({len(params)} parameters); resume with the same "
                                      "model and optimizer")
            index = int(parts[1])
            if parts[0] == "count":
                counts[index] = int(value)
                continue
            if tuple(value.shape) != tuple(params[index].shape):
                raise CheckpointError(f"the checkpoint's optimizer entry {key!r} has shape "
                                      f"{tuple(value.shape)}, but parameter {index} ({params[index].name}) "
                                      f"has {tuple(params[index].shape)}; resume with the same model")
            trees.setdefault(index, {})[tuple(int(p) for p in parts[2:])] = value
        if not optim._kv_initialized:
            optim._init_kvstore()  # where the states live: per-context updaters, or the kvstore's
        for updater in _updaters(optim):
            for index, tree in trees.items():
                updater.states[index] = _rebuild(tree, ())
                updater.states_synced[index] = False  # MXNet moves them to the weight's context
        optimizer = optim._optimizer
        for device in {0, *(ctx.device_id for ctx in optim._contexts)}:
            optimizer._all_index_update_counts.setdefault(device, {}).update(counts)
        optimizer.num_update = max([optimizer.num_update, *counts.values()])

    def rng_state(self) -> dict[str, onp.ndarray]:
        """Nothing: MXNet's global generator (``mx.random.seed``) has no state that can be read back.

        What d2lx's runs draw does not come from it: the data, the initial
        weights and d2lx's shuffling come from d2lx's seeded NumPy streams,
        and a Gluon ``DataLoader(shuffle=True)`` shuffles with NumPy's global
        generator, which the core saves and restores with every checkpoint.
        """
        return {}


def _updaters(optim: gluon.Trainer) -> list[Any]:
    """Where a ``gluon.Trainer`` keeps its optimizer states: the kvstore's updater, or one per context."""
    if optim._kvstore is not None and optim._update_on_kvstore:
        return [optim._kvstore._updater]
    return list(optim._updaters)


def _flatten(prefix: str, value: Any, out: dict[str, onp.ndarray]) -> None:
    """An updater state (an array, ``None``, or nested tuples of them) as named NumPy arrays."""
    if isinstance(value, (tuple, list)):
        for j, item in enumerate(value):
            _flatten(f"{prefix}.{j}", item, out)
    elif value is not None:
        out[prefix] = value.asnumpy()


def _rebuild(tree: dict[tuple[int, ...], onp.ndarray], at: tuple[int, ...]) -> Any:
    """The inverse of :func:`_flatten` below position ``at`` (a ``None`` that was skipped comes back)."""
    if at in tree:
        return mx.nd.array(tree[at], dtype=tree[at].dtype)
    below = {path[len(at)] for path in tree if len(path) > len(at) and path[:len(at)] == at}
    if not below:
        return None
    return tuple(_rebuild(tree, (*at, j)) for j in range(max(below) + 1))
