"""d2lx's own models' one-graph step and the epoch's loss read-back (the MXNet adapter's fast paths).

``LinearRegression`` and ``LinearRegressionScratch`` compute a step's
``loss(self(X), y)`` as one cached graph. What these tests pin down: its
numbers are exactly those of d2l's step run operator by operator (value
and gradients bit for bit, for any batch; whole fits with validation,
clipping, a shorter last batch and two contexts); it is used only where that
holds (the squared loss, the class's own ``forward``/``loss``/layer/loss
block, no forward hooks), and it is remade when the layer is replaced, so a
stale graph never runs; it is no Gluon child, so checkpoints name each
parameter once. ``to_host`` gives the losses in order whatever their shapes,
dtypes and contexts. Skipped where MXNet is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon, init, np  # noqa: E402

from d2lx import add_to_class, registry  # noqa: E402
from d2lx.data import SyntheticRegressionData  # noqa: E402
from d2lx.experiment import build_model  # noqa: E402

KINDS = ("concise", "scratch")


def _graph(model: Any) -> Any:
    """The graph a d2lx model made, if any (kept in its ``__dict__``, not as a Gluon child)."""
    kept = model.__dict__.get("_d2lx_graph")
    return None if kept is None else kept.graph


def _model(d2l: Any, kind: str, unfused: bool = False, **kw: Any) -> Any:
    """d2lx's model of ``kind``; ``unfused``: a subclass with the same ``forward`` of its own (d2l's step)."""
    base = d2l.LinearRegression if kind == "concise" else d2l.LinearRegressionScratch
    args = {"lr": 0.05, "seed": 2, **kw}
    if not unfused:
        return base(**args) if kind == "concise" else base(3, **args)

    class Unfused(base):  # type: ignore[misc, valid-type]
        def forward(self, X: Any) -> Any:
            return base.forward(self, X)

    return Unfused(**args) if kind == "concise" else Unfused(3, **args)


def _grads(model: Any) -> list[Any]:
    return [a.grad for a in model.param_arrays()]


@pytest.fixture(scope="module")
def d2l() -> Any:
    return registry.load("mxnet")


def _data(**kw: Any) -> SyntheticRegressionData:
    # 70 examples in batches of 16: a last batch of 6, as in the seed's 1000 / 32.
    args = {"w": [2, -3.4, 0.5], "b": 4.2, "num_train": 70, "num_val": 30, "batch_size": 16, "seed": 3}
    return SyntheticRegressionData(**{**args, **kw})


def _run(model: Any, d2l: Any, epochs: int = 3, **kw: Any) -> dict[str, Any]:
    trainer = d2l.Trainer(max_epochs=epochs, progress=False, **kw)
    history = trainer.fit(model, _data())
    return {"train": history.train_loss, "val": history.val_loss, "wb": model.get_w_b(),
            "grads": model.get_grads()}


def _assert_identical(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["train"] == want["train"] and got["val"] == want["val"]  # floats, bit for bit
    for name in ("wb", "grads"):
        for a, b in zip(got[name], want[name]):
            onp.testing.assert_array_equal(a, b)


def _loss_and_grads(model: Any, step: Any) -> list[onp.ndarray]:
    with autograd.record():
        loss = step()
    loss.backward()
    return [loss.asnumpy()] + [g.asnumpy() for g in _grads(model)]


@pytest.mark.parametrize("kind", KINDS)
def test_the_graph_computes_d2ls_loss_and_gradients_bit_for_bit(d2l: Any, kind: str) -> None:
    """200 random batches and weights, values over six orders of magnitude: no bit differs.

    A third of the batches have a 1-D ``y``: Gluon's ``L2Loss`` reshapes it like the prediction
    (a plain ``y_hat - y`` would broadcast it into an ``(n, n)`` loss), d2l 3.4's loss broadcasts.
    """
    rng = onp.random.default_rng(0)
    for trial in range(200):
        n, d = int(rng.integers(2, 200)), int(rng.integers(1, 40))
        scale = 10 ** rng.uniform(-3, 3)
        X = np.array((rng.standard_normal((n, d)) * scale).astype(onp.float32))
        y = np.array((rng.standard_normal((n, 1) if trial % 3 else (n,)) * scale).astype(onp.float32))
        model = build_model(d2l, kind, d, 0.1, int(rng.integers(99)))
        model.sigma = float(10 ** rng.uniform(-2, 1))
        model.set_w_b(rng.standard_normal((d, 1)) * model.sigma, rng.standard_normal(1))
        fused = _loss_and_grads(model, lambda: model.training_step((X, y)))  # noqa: B023 (called here)
        assert _graph(model) is not None  # it ran through the graph
        d2ls = _loss_and_grads(model, lambda: model.loss(model(X), y))  # noqa: B023
        for got, want in zip(fused, d2ls):
            onp.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_the_graphs_fixed_buffers_keep_every_calls_loss_and_gradient(d2l: Any, kind: str) -> None:
    """``static_alloc`` reuses buffers: yet each call's loss stays, and a second call before
    ``backward`` (a reader's loop may evaluate inside ``record()``) leaves the first's gradients."""
    rng = onp.random.default_rng(1)
    batches = [tuple(np.array(rng.standard_normal(shape).astype(onp.float32) * scale) for shape in shapes)
               for shapes, scale in ((((16, 3), (16, 1)), 1.0), (((16, 3), (16, 1)), 50.0),
                                     (((5, 3), (5, 1)), 9.0))]
    model = _model(d2l, kind)
    model.set_w_b(onp.ones((3, 1)), onp.zeros(1))
    alone = [_loss_and_grads(model, lambda b=b: model.training_step(b)) for b in batches]
    for first in range(3):
        with autograd.record():
            losses = [model.training_step(b) for b in batches[first:] + batches[:first]]
        losses[0].backward()
        got = [losses[0].asnumpy()] + [g.asnumpy() for g in _grads(model)]
        for a, b in zip(got, alone[first]):
            onp.testing.assert_array_equal(a, b)
        for loss, want in zip(losses, alone[first:] + alone[:first]):
            onp.testing.assert_array_equal(loss.asnumpy(), want[0])
    assert _graph(model) is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", [{}, {"gradient_clip_val": 0.5}, {"devices": 2}])
def test_a_fit_through_the_graph_equals_d2ls_step_exactly(d2l: Any, kind: str, kw: dict[str, Any]) -> None:
    fused, unfused = _model(d2l, kind), _model(d2l, kind, unfused=True)
    got, want = _run(fused, d2l, **kw), _run(unfused, d2l, **kw)
    assert _graph(fused) is not None and _graph(unfused) is None
    _assert_identical(got, want)


def test_a_replaced_layer_gets_a_new_graph_never_the_stale_one(d2l: Any) -> None:
    """Fit, swap ``self.net`` for a new Dense, fit again: exactly what d2l's step gives for the same."""
    runs = []
    for unfused in (False, True):
        model = _model(d2l, "concise", unfused)
        _run(model, d2l, epochs=1)
        old = _graph(model)
        model.net = gluon.nn.Dense(1)  # another layer, with other weights, built on the next fit
        model.net.hybridize()
        model.net.initialize(init.Constant(0.3))
        runs.append({**_run(model, d2l, epochs=2), "old": old, "new": _graph(model)})
    fused, unfused_run = runs
    assert fused["new"] is not None and fused["new"] is not fused["old"] and unfused_run["new"] is None
    _assert_identical(fused, unfused_run)


def test_replaced_scratch_arrays_are_the_ones_trained(d2l: Any) -> None:
    runs = []
    for unfused in (False, True):
        model = _model(d2l, "scratch", unfused)
        _run(model, d2l, epochs=1)
        model.w = np.full((3, 1), 0.3)
        model.w.attach_grad()
        runs.append(_run(model, d2l, epochs=2))
    _assert_identical(*runs)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_hooks_still_fire_on_every_step(d2l: Any, kind: str) -> None:
    model = _model(d2l, kind)
    calls: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda block, args, out: calls.append(tuple(args[0].shape)))
    _run(model, d2l, epochs=1)
    # (The concise model's build on a one-row batch), 5 training batches (16, 16, 16, 16, 6), 2 validation.
    built = [(1, 3)] if kind == "concise" else []
    assert calls == [*built, (16, 3), (16, 3), (16, 3), (16, 3), (6, 3), (16, 3), (14, 3)]
    assert _graph(model) is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_overridden_loss_is_the_one_that_trains(d2l: Any, kind: str) -> None:
    """A subclass's ``loss``, or one added later with ``add_to_class``, runs as written."""
    base = type(_model(d2l, kind))

    class Tripled(base):  # type: ignore[misc, valid-type]
        def loss(self, y_hat: Any, y: Any) -> Any:
            return 3 * base.loss(self, y_hat, y)

    class Later(base):  # type: ignore[misc, valid-type]
        pass

    args = {"lr": 0.01, "seed": 2} if kind == "concise" else {"num_inputs": 3, "lr": 0.01, "seed": 2}
    plain = _run(base(**args), d2l, epochs=1)
    tripled = _run(Tripled(**args), d2l, epochs=1)
    later = Later(**args)
    _run(later, d2l, epochs=1)
    assert _graph(later) is not None  # inherited: the graph

    @add_to_class(Later)
    def loss(self: Any, y_hat: Any, y: Any) -> Any:
        return 3 * base.loss(self, y_hat, y)

    later = Later(**args)
    added = _run(later, d2l, epochs=1)
    assert _graph(later) is None
    assert tripled["train"][0] == pytest.approx(3 * plain["train"][0], rel=0.2)  # the first steps agree
    assert added["train"] == tripled["train"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_huber_loss_runs_d2ls_step(d2l: Any, kind: str) -> None:
    model = _model(d2l, kind, loss="huber")
    _run(model, d2l, epochs=1)
    assert _graph(model) is None


def test_a_replaced_loss_block_is_the_one_that_trains(d2l: Any) -> None:
    batch = (np.ones((4, 3)), np.ones((4, 1)))
    model = _model(d2l, "concise")
    model.loss_fn = gluon.loss.L2Loss()  # d2l's own: half the squared error
    model.materialize((batch[0][:1], batch[1][:1]), mx.cpu())
    expected = ((model.predict(batch[0].asnumpy()) - 1) ** 2).mean() / 2
    assert float(model.training_step(batch)) == pytest.approx(float(expected), rel=1e-6)
    assert _graph(model) is None


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_name_each_parameter_once(d2l: Any, kind: str) -> None:
    model = _model(d2l, kind)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(model, _data())
    assert _graph(model) is not None
    names = {"concise": ["net.bias", "net.weight"], "scratch": ["b", "w"]}[kind]
    assert sorted(trainer.model_state()) == names
    assert list(model._children) == (["net", "loss_fn"] if kind == "concise" else [])


def test_epoch_losses_of_any_shape_dtype_and_context_come_back_in_order(d2l: Any) -> None:
    ops = d2l.Trainer(max_epochs=1).ops
    scalars = [np.array(v, dtype="float32") for v in (0.5, 1.25, 3.0)]
    onp.testing.assert_array_equal(ops.to_host(scalars), [0.5, 1.25, 3.0])  # one stack
    onp.testing.assert_array_equal(ops.to_host([np.array([1.0, 2.0]), np.array([3.0, 4.0])]), [1, 2, 3, 4])
    two_contexts = [scalars[0], np.array(2.0, ctx=mx.cpu(1)), scalars[2]]
    onp.testing.assert_array_equal(ops.to_host(two_contexts), [0.5, 2.0, 3.0])
    mixed = [np.array(0.1, dtype="float64"), scalars[1], np.array([7.0, 8.0], dtype="float16")]
    out = ops.to_host(mixed)
    assert out.dtype == onp.float64
    onp.testing.assert_array_equal(out, [0.1, 1.25, 7.0, 8.0])  # float64 kept whole, not via float32
