"""The MXNet step contract beyond the conformance suite: loaders, guard, autograd modes, checkpoints.

What these pin down: any loader a ``DataModule`` returns trains (a Gluon
``DataLoader``, NumPy batches, a generator) and equals a float64 replay of
its batches; the guard names the right cause (data, loss, overflowed
parameters) and leaves the right parameters; training runs under
``autograd.record()`` and validation outside it; a reader's Gluon and
``attach_grad`` models resume exactly (model state by name, optimizer state
such as momentum and Adam's counts), also on two contexts; mismatched state
is refused. Skipped where MXNet is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import autograd, gluon, np  # noqa: E402
from mxnet_readers import GluonNet, ReaderSGD  # noqa: E402

import d2lx  # noqa: E402
from d2lx import registry  # noqa: E402
from d2lx.checkpoint import ModelCheckpoint  # noqa: E402
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData  # noqa: E402
from d2lx.seeding import generator, initial_linear_params  # noqa: E402

Module = registry.load("mxnet").Module


@pytest.fixture(scope="module")
def d2l() -> Any:
    return registry.load("mxnet")


def _xy(n: int = 40, seed: int = 1) -> tuple[onp.ndarray, onp.ndarray]:
    rng = onp.random.default_rng(seed)
    X = rng.standard_normal((n, 2)).astype(onp.float32)
    return X, (X @ onp.array([[2.0], [-3.4]]) + 4.2).astype(onp.float32)


class Foreign(DataModule):
    """Training batches from whatever ``make(X, y)`` returns (d2l 3.3's ``get_dataloader``)."""

    def __init__(self, make: Any, X: onp.ndarray, y: onp.ndarray) -> None:
        super().__init__()
        self.make, self.X, self.y = make, X, y

    def get_dataloader(self, train: bool) -> Any:
        return self.make(self.X, self.y) if train else None


def _gluon_loader(X: onp.ndarray, y: onp.ndarray) -> Any:
    return gluon.data.DataLoader(gluon.data.ArrayDataset(np.array(X), np.array(y)), 8, shuffle=True)


def _replay(X: onp.ndarray, y: onp.ndarray, orders: list[onp.ndarray], lr: float) -> onp.ndarray:
    """float64 minibatch SGD of the scratch model (seed 0 start) over the given example orders."""
    w, b = (a.astype(onp.float64) for a in initial_linear_params(generator("params", 0), 2, 0.01))
    for order in orders:
        for start in range(0, len(order), 8):
            i = order[start:start + 8]
            r = X[i] @ w + b - y[i]
            w, b = w - lr * X[i].T @ r / len(i), b - lr * r.mean(axis=0)
    return w


@pytest.mark.parametrize("kind", ["gluon", "numpy", "generator"])
def test_a_foreign_loader_trains_on_exactly_its_batches(d2l: Any, kind: str) -> None:
    X, y = _xy()
    make = {"gluon": _gluon_loader,
            "numpy": lambda X, y: [(X[i:i + 8].astype(onp.float64), y[i:i + 8]) for i in range(0, 40, 8)],
            "generator": lambda X, y: ((X[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8))}[kind]
    onp.random.seed(5)  # Gluon's DataLoader shuffles with NumPy's global generator
    orders = []
    for _ in range(3):
        orders.append(onp.arange(40))
        if kind == "gluon":
            onp.random.shuffle(orders[-1])
    onp.random.seed(5)
    net = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    history = trainer.fit(net, Foreign(make, X, y))
    assert trainer.train_batch_idx == 15 and history.train_loss[-1] < history.train_loss[0]
    onp.testing.assert_allclose(net.get_w_b()[0], _replay(X, y, orders, 0.05), rtol=1e-4, atol=2e-5)


def test_a_gluon_loader_run_resumes_exactly(d2l: Any, tmp_path: Path) -> None:
    """MXNet has no readable global RNG state: Gluon's shuffle draws from NumPy's, which the core saves."""
    X, y = _xy()
    onp.random.seed(3)
    straight = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    d2l.Trainer(max_epochs=3, progress=False).fit(straight, Foreign(_gluon_loader, X, y))
    onp.random.seed(3)
    path = tmp_path / "gluon.safetensors"
    first = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        first, Foreign(_gluon_loader, X, y))
    onp.random.seed(99)  # a new process would start elsewhere
    resumed = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    d2l.Trainer(max_epochs=3, progress=False).fit(resumed, Foreign(_gluon_loader, X, y), ckpt_path=path)
    onp.testing.assert_allclose(resumed.get_w_b()[0], straight.get_w_b()[0], rtol=1e-6, atol=1e-7)


def test_batches_reach_the_step_as_float32_mxnet_arrays_on_the_context(d2l: Any) -> None:
    ops = d2l.Trainer(max_epochs=1).ops
    moved = ops.to_device(onp.ones((2, 3)))
    assert isinstance(moved, np.ndarray) and moved.dtype == onp.float32 and moved.ctx == mx.cpu()
    there = np.ones(2)
    assert ops.to_device(there) is there  # no copy where it already is
    assert ops.to_device(np.ones(2, ctx=mx.cpu(1))).ctx == mx.cpu()
    assert isinstance(ops.to_device(mx.nd.ones(2)), np.ndarray)  # a legacy array is viewed as mxnet.np


def test_training_records_and_validation_does_not(d2l: Any) -> None:
    seen: dict[str, tuple[bool, bool]] = {}

    class Spy(d2l.LinearRegressionScratch):  # type: ignore[misc, name-defined]
        def training_step(self, batch: Any) -> Any:
            seen["train"] = (autograd.is_recording(), autograd.is_training())
            return super().training_step(batch)

        def validation_step(self, batch: Any) -> Any:
            seen["val"] = (autograd.is_recording(), autograd.is_training())
            return super().validation_step(batch)

    X, y = _xy()
    d2l.Trainer(max_epochs=1, progress=False).fit(Spy(2, lr=0.05), ArrayData(X, y, X, y, batch_size=8))
    assert seen == {"train": (True, True), "val": (False, False)}


def test_a_per_example_loss_is_refused_with_the_fix(d2l: Any) -> None:
    class PerExample(d2l.LinearRegressionScratch):  # type: ignore[misc, name-defined]
        def loss(self, y_hat: Any, y: Any) -> Any:
            return (y_hat - y) ** 2 / 2  # backward would sum it: a step batch_size times too large

    X, y = _xy()
    with pytest.raises(d2lx.ArgumentTypeError, match=r"one number .*l\.mean\(\)\), got \(8, 1\)"):
        d2l.Trainer(max_epochs=1, progress=False).fit(PerExample(2, lr=0.05), ArrayData(X, y, batch_size=8))


def test_a_validation_step_that_only_plots_gives_the_plotted_loss(d2l: Any) -> None:
    class D2lStyle(d2l.LinearRegressionScratch):  # type: ignore[misc, name-defined]
        def validation_step(self, batch: Any) -> None:  # d2l's returns nothing
            self.plot("loss", self.loss(self(*batch[:-1]), batch[-1]) * 0 + 7.0, train=False)

    X, y = _xy()
    history = d2l.Trainer(max_epochs=1, progress=False).fit(D2lStyle(2, lr=0.05), ArrayData(X, y, X, y))
    assert history.val_loss == [pytest.approx(7.0)]


def test_non_finite_data_from_a_foreign_loader_is_named_and_not_applied(d2l: Any) -> None:
    X, y = _xy()
    X[12, 0] = onp.nan  # batch 1; a foreign loader is not checked up front
    net = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    seen: list[onp.ndarray] = []
    original = net.configure_optimizers

    def spying() -> Any:
        optim = original()
        step = optim.step
        optim.step = lambda n=1: (step(n), seen.append(net.get_w_b()[0]))
        return optim

    net.configure_optimizers = spying
    loader = lambda X, y: [(X[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)]  # noqa: E731
    with pytest.raises(d2lx.NonFiniteDataError, match=r"training batch 1 of epoch 0 \(step 1\)"):
        d2l.Trainer(max_epochs=1, progress=False).fit(net, Foreign(loader, X, y))
    # The late guard (d2lx's SGD on one context) let batch 1's update land, read its loss a step later and
    # undid it: the model holds the parameters after batch 0, exactly.
    assert len(seen) == 2 and onp.isnan(seen[1]).all() and onp.isfinite(seen[0]).all()
    assert onp.array_equal(net.get_w_b()[0], seen[0])


def test_a_non_finite_loss_leaves_the_parameters_of_the_step_before(d2l: Any) -> None:
    X, y = _xy(8)
    y[3] = 3e38  # finite data, infinite squared loss
    net = d2l.LinearRegressionScratch(2, lr=0.05, seed=0)
    with pytest.raises(d2lx.DivergenceError, match="the loss became NaN or inf at epoch 0, step 0"):
        d2l.Trainer(max_epochs=1, progress=False).fit(net, ArrayData(X, y, batch_size=8))
    onp.testing.assert_array_equal(net.get_w_b()[0], initial_linear_params(generator("params", 0), 2)[0])


@pytest.mark.parametrize("batch_size", [4, 8])
def test_overflowed_parameters_are_reset_to_the_epochs_start(d2l: Any, batch_size: int) -> None:
    """The update overflows (finite loss, infinite step): seen at the next step or at the epoch's end."""
    X = onp.full((8, 2), 1e18, onp.float32)
    y = onp.zeros((8, 1), onp.float32)
    net = d2l.LinearRegressionScratch(2, lr=1e10, seed=0)
    with pytest.raises(d2lx.DivergenceError, match=r"made the parameters NaN or inf .*start of epoch 0"):
        d2l.Trainer(max_epochs=2, progress=False).fit(net, ArrayData(X, y, batch_size=batch_size))
    onp.testing.assert_array_equal(net.get_w_b()[0], initial_linear_params(generator("params", 0), 2)[0])


class Scratch(Module):  # type: ignore[misc, valid-type]
    """d2l 3.4's reader model: plain arrays with attach_grad, with a weight-decay term on ``self.w``."""

    def __init__(self, num_inputs: int, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.w = np.array(initial_linear_params(generator("params", 0), num_inputs)[0])
        self.b = np.zeros(1)
        self.w.attach_grad()
        self.b.attach_grad()

    def forward(self, X: Any) -> Any:
        return np.dot(X, self.w) + self.b

    def loss(self, y_hat: Any, y: Any) -> Any:
        return ((y_hat - y) ** 2 / 2).mean() + 0.1 * (self.w**2).sum()

    def configure_optimizers(self) -> ReaderSGD:
        return ReaderSGD([self.w, self.b], self.lr)

    def arrays(self) -> list[onp.ndarray]:
        return [self.w.asnumpy(), self.b.asnumpy()]


MODELS = {"momentum": lambda: GluonNet(0.02, momentum=0.9), "adam": lambda: GluonNet(0.05, "adam"),
          "scratch": lambda: Scratch(3, 0.05)}


def _data() -> SyntheticRegressionData:
    return SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=50, num_val=10, batch_size=16, seed=6)


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_readers_model_resumes_exactly(d2l: Any, kind: str, devices: int, tmp_path: Path) -> None:
    straight = MODELS[kind]()
    d2l.Trainer(max_epochs=3, devices=devices, progress=False).fit(straight, _data())
    path = tmp_path / "run.safetensors"
    first = MODELS[kind]()
    trainer = d2l.Trainer(max_epochs=1, devices=devices, progress=False, callbacks=[ModelCheckpoint(path)])
    trainer.fit(first, _data())
    names = set(trainer.optimizer_state())
    assert set(trainer.model_state()) == ({"w", "b"} if kind == "scratch" else {"net.weight", "net.bias"})
    assert names == ({"state.0", "state.1", "count.0", "count.1"} if kind == "momentum" else
                     {f"state.{i}.{j}" for i in (0, 1) for j in (0, 1)} | {"count.0", "count.1"}
                     if kind == "adam" else set())
    resumed = MODELS[kind]()
    d2l.Trainer(max_epochs=3, devices=devices, progress=False).fit(resumed, _data(), ckpt_path=path)
    for got, want in zip(resumed.arrays(), straight.arrays()):
        onp.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if devices == 2:  # both contexts' copies agree
        for got, want in zip(resumed.param_arrays(mx.cpu(1)), resumed.param_arrays(mx.cpu(0))):
            onp.testing.assert_array_equal(got.asnumpy(), want.asnumpy())


def test_two_contexts_end_where_one_ends_for_a_readers_scratch_model(d2l: Any) -> None:
    """Its forward reads ``self.w``: each shard's step sees the copy on its own context."""
    ends = []
    for devices in (1, 2):
        net = Scratch(3, 0.05)
        history = d2l.Trainer(max_epochs=2, devices=devices, progress=False).fit(net, _data())
        ends.append((net.arrays(), history.train_loss))
    for got, want in zip(ends[1][0], ends[0][0]):
        onp.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(ends[1][1], ends[0][1], rtol=1e-5)


def test_plain_sgd_keeps_no_optimizer_state(d2l: Any) -> None:
    for net in (d2l.LinearRegression(lr=0.03), d2l.LinearRegressionScratch(3, lr=0.03)):
        trainer = d2l.Trainer(max_epochs=1, progress=False)
        trainer.fit(net, _data())
        assert trainer.optimizer_state() == {}


def test_mismatched_model_and_optimizer_state_is_refused(d2l: Any) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(GluonNet(0.02, momentum=0.9), _data())
    model, optim = trainer.model_state(), trainer.optimizer_state()
    with pytest.raises(d2lx.CheckpointError, match=r"does not fit this model's \['net.bias', 'net.weight'\]"):
        trainer.load_model_state({**model, "net2.weight": model["net.weight"]})
    with pytest.raises(d2lx.CheckpointError, match=r"'net.weight' has shape \(1, 4\), the model's \(1, 3\)"):
        trainer.load_model_state({**model, "net.weight": onp.zeros((1, 4), onp.float32)})
    with pytest.raises(d2lx.CheckpointError, match=r"'state.7' does not fit this gluon.Trainer \(2 param"):
        trainer.load_optimizer_state({**optim, "state.7": optim["state.0"]})
    with pytest.raises(d2lx.CheckpointError, match=r"'state.0' has shape \(2,\), but parameter 0"):
        trainer.load_optimizer_state({**optim, "state.0": onp.zeros(2, onp.float32)})
    scratch = d2l.Trainer(max_epochs=1, progress=False)
    scratch.fit(d2l.LinearRegressionScratch(3, lr=0.03), _data())
    with pytest.raises(d2lx.CheckpointError, match="SGD keeps none; resume with the same optimizer"):
        scratch.load_optimizer_state(optim)
    assert scratch.rng_state() == {}  # Gluon's loaders shuffle with NumPy's generator, which the core saves
