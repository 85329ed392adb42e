"""What the TensorFlow step is compiled from: batches in the graph, cheap calls, reusable functions.

Slicing and checking batches in the graph (static shapes, for XLA), the
fused steps' loop, :func:`flat_call` (a concrete function called without
TensorFlow's per-call Python) and :class:`Compiled`, concrete functions that
later fits re-bind to their own variables, kept in a small process-wide cache.
The traced step itself is :class:`~d2lx.backends.tensorflow.module.GraphStep`;
:mod:`d2lx.backends.tensorflow.step` runs it.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorflow.python import pywrap_tfe
from tensorflow.python.eager import context, record
from tensorflow.python.eager.core import _NotOkStatusException as _NotOk
from tensorflow.python.eager.core import _status_to_exception
from tensorflow.python.framework.ops import EagerTensor as _EAGER  # a loader's batch, on the device

from d2lx.backends.tensorflow.ops import tf_variable
from d2lx.errors import ArgumentTypeError


def batch_spec(batch: Sequence[Any]) -> tuple[tf.TensorSpec, ...]:
    """The signature of a batch like ``batch``: its arrays' shapes with a ``None`` batch dimension."""
    return tuple(tf.TensorSpec((None, *t.shape[1:]), tf.as_dtype(t.dtype)) for t in batch)


def batch_at(tensors: Sequence[Any], order: tf.Tensor | None, i: tf.Tensor, batch_size: int, size: int,
             jit: bool) -> tuple[Any, ...]:
    """Batch ``i`` of the epoch, ``size`` rows (a Python int: a static shape), in the graph.

    Its rows are ``i * batch_size + range(size)``, through ``order`` when
    shuffled. Each step gathers its own rows (a few MB that stay in the
    cache) rather than the epoch gathering the whole shuffled data set
    first, which writes and reads back a data set-sized array every epoch.
    Under XLA every slice is a gather: XLA takes ``tf.slice``'s start as a
    compile-time constant, so a sliced batch would compile once per batch
    index. A plain graph slices (an unshuffled batch is then a view).
    """
    lo = i * batch_size
    if jit:
        rows = lo + tf.range(size, dtype=tf.int64)
        rows = rows if order is None else tf.gather(order, rows)
        return tuple(tf.gather(t, rows) for t in tensors)

    def rows_of(t: Any) -> Any:
        rest = t.shape.rank - 1
        return tf.slice(t, tf.stack([lo, *[tf.constant(0, tf.int64)] * rest]), [size, *[-1] * rest])

    if order is None:
        return tuple(rows_of(t) for t in tensors)
    rows = rows_of(order)
    return tuple(tf.gather(t, rows) for t in tensors)


def chunk_of(full: int, spe: int) -> int:
    """Full batches per fused call (0: one step per call, ``spe <= 1``); never more than an epoch has."""
    return 0 if spe <= 1 else max(1, min(spe, full))


def steps_loop(one: Callable[[tf.Tensor], tf.Tensor], start: tf.Tensor, stop: tf.Tensor,
               length: int) -> tf.Tensor:
    """``one(i)`` for ``i`` in ``[start, stop)`` in a ``tf.while_loop``; the losses in a ``length`` vector.

    ``length`` (a Python int, at least ``stop - start``) makes the output's
    shape static, as XLA needs; a shorter call leaves zeros at the end,
    which the host drops. ``parallel_iterations=1``: each step reads the
    parameters the previous one wrote.
    """
    out = tf.TensorArray(tf.float32, size=length, element_shape=())

    def body(i: tf.Tensor, out: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        return i + 1, out.write(tf.cast(i - start, tf.int32), one(i))

    _, out = tf.while_loop(lambda i, _: i < stop, body, (start, out), parallel_iterations=1)
    return out.stack()


def xla_cause(error: Exception) -> str:
    """What XLA refused, in a few words: the ops it has no kernel for, else TensorFlow's first line."""
    message = str(getattr(error, "message", error))
    ops = sorted(set(re.findall(r"(\w+) \(No registered '", message)))
    if ops:
        return f"XLA has no kernel for {', '.join(ops)}"
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return first if len(first) <= 300 else first[:297] + "..."


_INDICES: list[tf.Tensor] = []  # index(k) for every k asked so far


def index(k: int) -> tf.Tensor:
    """The int64 scalar ``k`` as a host tensor, made once per process: passing it costs no eager op."""
    while len(_INDICES) <= k:
        with tf.device("/CPU:0"):
            _INDICES.append(tf.constant(len(_INDICES), tf.int64))
    return _INDICES[k]


def all_finite(tensors: Sequence[Any]) -> tf.Tensor:
    """A boolean scalar: are all floating-point values of ``tensors`` finite? (in the graph)"""
    flags = [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t))) for t in tensors
             if tf.as_dtype(t.dtype).is_floating]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def loss_scalar(loss: Any, what: str) -> tf.Tensor:
    """A step's loss as a float32 scalar; a loss of several numbers is refused with the fix."""
    loss = tf.convert_to_tensor(loss)
    if loss.shape.num_elements() not in (None, 1):
        raise ArgumentTypeError(f"{what} must return the batch's loss as one number (a scalar, e.g. "
                                f"tf.reduce_mean(l)), got shape {tuple(loss.shape)}")
    return tf.reshape(tf.cast(loss, tf.float32), [])


def flat_call(cf: Any, head: Sequence[Any] = ()) -> Callable[..., Any] | None:
    """A call of concrete function ``cf`` with its flat inputs after ``head`` (``None``: use the public call).

    ``ConcreteFunction.__call__`` binds and casts every argument against the
    signature (about 130 us a call on a CPU), and even its ``_call_flat``
    spends about 40 us in Python around the 15 us TensorFlow needs to start
    the function: gradient-tape bookkeeping, context managers, output
    packing. A step's call needs none of it when no tape is watching (the
    step differentiates inside its own graph), the function has one plain
    output and the program runs eagerly; its inputs then go to the
    runtime's execute directly, as ``_call_flat`` finally does, with the
    captures (the variables) bound when this call is made. Anything else
    takes ``_call_flat``. Errors are TensorFlow's own (``tf.errors``).
    """
    call_flat = getattr(cf, "_call_flat", None)
    if call_flat is None:
        return None
    head, captured = list(head), list(cf.captured_inputs)
    try:
        function = cf._inference_function
        outputs = function.function_type.flat_outputs
        ctx = context.context()
        direct = (ctx.executing_eagerly() and not record.could_possibly_record() and len(outputs) == 1
                  and not outputs[0].dtype._handle_data)
        name, handle, device = function.name.decode(), ctx._handle, ctx.device_name
        attrs = tuple(itertools.chain(*ctx.function_call_options.as_attrs().items()))
    except (AttributeError, TypeError):  # another TensorFlow than the one pinned: the long way
        direct = False
    if not direct:
        return lambda *rest: call_flat([*head, *rest], captured)
    execute = pywrap_tfe.TFE_Py_Execute

    def call(*rest: Any) -> Any:
        try:
            return execute(handle, device, name, [*head, *rest, *captured], attrs, 1)[0]
        except _NotOk as e:  # what TensorFlow's execute raises instead, as a tf.errors.OpError
            raise _status_to_exception(e) from None

    return call


class Compiled:
    """Compiled step functions (an epoch's ``train``, ``train_tail``... or a batch's), reusable by later fits.

    The functions are traced when made, with the variables of the step that
    made them (``owner``: model, optimizer and step variables, in
    ``TFStep.state()`` order). A later fit whose step has the *same
    structure* (see ``TFStep.structure_key``) reuses them: when the
    concrete functions' only captured inputs are those variables' resource
    handles, :meth:`bind` points them at the new fit's variables with
    ``ConcreteFunction.set_external_captures``, TensorFlow's own way of
    re-binding a traced function's state (used when loading a SavedModel).
    The graph is unchanged: no retracing, no graph re-optimisation, and
    under XLA no recompilation (XLA's cache is the function's). ``jit``
    says whether they compile with XLA; ``fallback``, why XLA was given up
    for them (the warning a fit that reuses them repeats).
    """

    def __init__(self, fns: dict[str, Any], owner: Sequence[Any], reusable: bool, jit: bool = False) -> None:
        self.fns = fns
        self.jit = jit
        self.fallback: str | None = None
        self.concrete = {name: fn.get_concrete_function() for name, fn in fns.items()}
        # (A mirrored variable has no handle outside its replicas: data-parallel steps are not reused.)
        self._owner = [id(tf_variable(v).handle) for v in owner] if reusable else []
        self._bound = list(self._owner)
        # The captures as traced (set_external_captures replaces a function's list).
        self._captures = {name: list(cf.captured_inputs) for name, cf in self.concrete.items()}
        owned = set(self._owner)
        self.rebindable = reusable and all(id(t) in owned for caps in self._captures.values() for t in caps)

    def bind(self, state: Sequence[Any]) -> None:
        """Make the functions read and write ``state`` (same layout as the owner's variables)."""
        if not self.rebindable:
            return
        handles = [tf_variable(v).handle for v in state]
        ids = [id(h) for h in handles]
        if ids == self._bound:
            return
        position = {owner_id: i for i, owner_id in enumerate(self._owner)}
        for name, cf in self.concrete.items():
            cf.set_external_captures([handles[position[id(t)]] for t in self._captures[name]])
        self._bound = ids

    def caller(self, name: str, tensors: Sequence[Any], *fixed: Any) -> Callable[..., Any]:
        """Function ``name`` on the epoch's ``tensors`` (and order) as a call ``(*indices)``.

        The epoch's inputs are d2lx's own loader's arrays and indices, made
        to fit the signature, so they go straight to :func:`flat_call`.
        Fetch after :meth:`bind`: the call passes the captures bound then,
        whatever another fit binds later.
        """
        cf = self.concrete[name]
        call = flat_call(cf, [*tensors, *fixed])
        return call or (lambda *indices: cf(tuple(tensors), *fixed, *indices))

    def batch_caller(self, name: str, spec: Sequence[tf.TensorSpec], state: Sequence[Any]
                     ) -> Callable[..., Any]:
        """Function ``name`` as a call ``(batch, *indices)`` for any loader's batch (see :meth:`caller`).

        A foreign batch is known only when it comes, so it skips argument
        binding only when it matches the signature exactly: every array an
        eager tensor of ``spec``'s dtype, rank and row shape (what binding
        would check). Anything else (NumPy, another dtype or row shape)
        takes the public call, re-bound to ``state`` first, which converts
        it or refuses it with TensorFlow's error: never a silent wrong shape.
        Fetch after :meth:`bind`.
        """
        cf = self.concrete[name]
        call_flat = flat_call(cf)
        layout = tuple((s.dtype, s.shape.rank, tuple(s.shape[1:])) for s in spec)
        count = len(layout)

        def public(batch: Sequence[Any], *indices: tf.Tensor) -> Any:
            self.bind(state)
            return cf(tuple(batch), *indices)

        if call_flat is None:
            return public

        def call(batch: Sequence[Any], *indices: tf.Tensor) -> Any:
            if len(batch) == count:
                for t, (dtype, rank, rows) in zip(batch, layout):
                    if type(t) is not _EAGER or t.dtype != dtype:
                        break
                    shape = t._shape_tuple()
                    if len(shape) != rank or shape[1:] != rows:
                        break
                else:
                    return call_flat(*batch, *indices)
            return public(batch, *indices)

        return call


#: Compiled functions by step structure (see ``TFStep.structure_key``): a few recent ones, per process.
_CACHE: OrderedDict[Any, Compiled] = OrderedDict()
_CACHE_SIZE = 16


def cached(key: Any, build: Callable[[], Compiled]) -> tuple[Compiled, bool]:
    """The functions of structure ``key`` and ``True``; else ``build()`` (kept if re-bindable), ``False``."""
    found = _CACHE.get(key) if key is not None else None
    if found is not None:
        _CACHE.move_to_end(key)
        return found, True
    compiled = build()
    keep(key, compiled)
    return compiled, False


def keep(key: Any, compiled: Compiled) -> None:
    """Cache ``compiled`` as structure ``key`` (replacing what was there) if it can serve later fits."""
    if key is not None and compiled.rebindable:
        _CACHE[key] = compiled
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
