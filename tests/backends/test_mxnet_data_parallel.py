"""MXNet data parallelism and the d2l 3.5.6 features, beyond the conformance suite.

The conformance suite proves that two contexts end where one ends for plain
training. These tests pin down the parts it does not reach: that the copies
really live on ``cpu(0)`` and ``cpu(1)`` and stay equal, that clipping acts on
the *summed* gradient, that ``get_grads`` returns the all-reduced gradient,
that a user's own Gluon model gets data parallelism too, that checkpoints
restore every copy, that small batches and NaN losses are refused, and that
the Huber loss is Gluon's. Skipped where MXNet is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon  # noqa: E402

import d2lx  # noqa: E402
from d2lx import registry  # noqa: E402
from d2lx.checkpoint import ModelCheckpoint  # noqa: E402
from d2lx.data import ArrayData, SyntheticRegressionData  # noqa: E402
from d2lx.experiment import build_model  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
TWO = [mx.cpu(0), mx.cpu(1)]


@pytest.fixture(scope="module")
def d2l() -> Any:
    return registry.load("mxnet")


def _data(**kw: Any) -> SyntheticRegressionData:
    # 50 examples in batches of 16: the last batch (2) splits 1 + 1, the others 8 + 8.
    args = {"w": [2, -3.4, 0.5], "b": 4.2, "num_train": 50, "num_val": 10, "batch_size": 16, "seed": 6}
    return SyntheticRegressionData(**{**args, **kw})


def _fit(d2l: Any, model: str, devices: int, **trainer_kw: Any) -> tuple[Any, Any]:
    net = build_model(d2l, model, 3, 0.05, 6)
    trainer = d2l.Trainer(max_epochs=2, devices=devices, progress=False, **trainer_kw)
    trainer.fit(net, _data())
    return net, trainer


def _start(d2l: Any, model: str) -> Any:
    """The model before training: built (a concise layer learns its width from a batch), untrained."""
    net = build_model(d2l, model, 3, 0.05, 6)
    net.materialize((mx.np.zeros((1, 3)), mx.np.zeros((1, 1))), mx.cpu())
    return net


def _copies(net: Any) -> list[tuple[onp.ndarray, onp.ndarray]]:
    return [tuple(a.asnumpy().reshape(-1) for a in net.param_arrays(ctx)) for ctx in net.contexts()]


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_parameters_have_one_equal_copy_per_context(d2l: Any, model: str) -> None:
    net, trainer = _fit(d2l, model, 2)
    assert trainer.contexts == TWO and trainer.device == mx.cpu(0)
    assert net.contexts() == TWO
    copies = _copies(net)
    assert [a.ctx for a in net.param_arrays(mx.cpu(1))] == [mx.cpu(1), mx.cpu(1)]
    for got, want in zip(copies[1], copies[0]):
        onp.testing.assert_array_equal(got, want)
    assert not onp.allclose(copies[0][0], _start(d2l, model).get_w_b()[0].reshape(-1))  # it trained
    if model == "concise":
        assert isinstance(trainer.optim, gluon.Trainer) and net.net.weight.list_ctx() == TWO


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_clipping_acts_on_the_summed_gradient(d2l: Any, model: str) -> None:
    """Clipping each shard's gradient before the sum would give a different (smaller) step."""
    one, _ = _fit(d2l, model, 1, gradient_clip_val=0.05)
    two, _ = _fit(d2l, model, 2, gradient_clip_val=0.05)
    for got, want in zip(two.get_w_b(), one.get_w_b()):
        onp.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_get_grads_is_the_all_reduced_gradient(d2l: Any, model: str) -> None:
    # The last step is the 2-example batch: one example per context.
    one, _ = _fit(d2l, model, 1)
    two, _ = _fit(d2l, model, 2)
    for got, want in zip(two.get_grads(), one.get_grads()):
        onp.testing.assert_allclose(got, want, rtol=1e-4, atol=ATOL)
    for ctx in two.contexts():  # every copy applied the same gradient
        onp.testing.assert_allclose(two.param_arrays(ctx)[0].grad.asnumpy().reshape(-1, 1),
                                    two.get_grads()[0], rtol=RTOL, atol=ATOL)


class _SeedGluonModel(registry.load("mxnet").Module):
    """d2l 3.5's MXNet model as a reader writes it: default gluon.Trainer, init in __init__."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = gluon.nn.Dense(1, in_units=3)
        self.net.initialize(mx.init.Constant(0.1))

    def forward(self, X: Any) -> Any:
        return self.net(X)

    def loss(self, y_hat: Any, y: Any) -> Any:
        return gluon.loss.L2Loss()(y_hat, y).mean()

    def configure_optimizers(self) -> Any:
        return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})


def test_a_users_own_gluon_model_is_data_parallel_too(d2l: Any) -> None:
    """Its default gluon.Trainer updates on the kvstore; step(1) must still be lr * grad(mean)."""
    results = []
    for devices in (1, 2):
        net = _SeedGluonModel(lr=0.05)
        d2l.Trainer(max_epochs=2, devices=devices, progress=False).fit(net, _data())
        assert net.net.weight.list_ctx() == TWO[:devices]
        results.append(net.net.weight.data(mx.cpu(0)).asnumpy())
    onp.testing.assert_allclose(results[1], results[0], rtol=RTOL, atol=ATOL)


def test_clipping_a_users_kvstore_updated_model_names_the_fix(d2l: Any) -> None:
    trainer = d2l.Trainer(max_epochs=1, devices=2, gradient_clip_val=1.0, progress=False)
    with pytest.raises(d2lx.InvalidArgumentError, match="update_on_kvstore=False"):
        trainer.fit(_SeedGluonModel(lr=0.05), _data())


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_resuming_under_data_parallelism_restores_every_copy(d2l: Any, model: str, tmp_path: Path) -> None:
    straight = build_model(d2l, model, 3, 0.05, 6)
    d2l.Trainer(max_epochs=3, devices=2, progress=False).fit(straight, _data())
    path = tmp_path / "dp.npz"
    first = build_model(d2l, model, 3, 0.05, 6)
    d2l.Trainer(max_epochs=1, devices=2, progress=False,
                callbacks=[ModelCheckpoint(path)]).fit(first, _data())
    resumed = build_model(d2l, model, 3, 0.05, 6)
    d2l.Trainer(max_epochs=3, devices=2, progress=False).fit(resumed, _data(), ckpt_path=path)
    for got, want in zip(resumed.get_w_b(), straight.get_w_b()):
        onp.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    copies = _copies(resumed)
    for got, want in zip(copies[1], copies[0]):
        onp.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("num_train", "batch_size", "size"), [(40, 1, 1), (33, 16, 1)])
def test_batches_smaller_than_the_device_count_are_refused(
    d2l: Any, num_train: int, batch_size: int, size: int
) -> None:
    data = _data(num_train=num_train, batch_size=batch_size)
    trainer = d2l.Trainer(max_epochs=1, devices=2, progress=False)
    with pytest.raises(d2lx.InvalidArgumentError, match=rf"a batch of {size} example\(s\) cannot be split "
                       r"across 2 devices; use batch_size >= 2"):
        trainer.fit(d2l.LinearRegressionScratch(3, lr=0.05), data)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_a_nan_in_one_shard_stops_before_the_update(d2l: Any, model: str) -> None:
    X = onp.ones((8, 3), onp.float32)
    y = onp.ones((8, 1), onp.float32)
    y[7] = 3e38  # finite data, infinite squared loss; only one context's shard sees it
    net = build_model(d2l, model, 3, 0.05, 6)
    trainer = d2l.Trainer(max_epochs=1, devices=2, progress=False)
    with pytest.raises(d2lx.DivergenceError, match="epoch 0, step 0"):
        trainer.fit(net, ArrayData(X, y, batch_size=8))
    fresh = _start(d2l, model)
    for copy in _copies(net):
        onp.testing.assert_array_equal(copy[0], fresh.get_w_b()[0].reshape(-1))


def test_history_records_the_global_batch_mean_once_per_step(d2l: Any) -> None:
    """3 examples over 2 contexts (2 + 1): shard means, summed or averaged, are not the batch mean."""
    X = onp.zeros((3, 3), onp.float32)
    y = onp.array([[0.0], [0.0], [3.0]], onp.float32)
    net = d2l.LinearRegressionScratch(3, lr=1e-9, sigma=0.0)
    net.b[:] = 1.0  # y_hat = 1: example losses (1 - y)**2 / 2 are 0.5, 0.5 and 2
    trainer = d2l.Trainer(max_epochs=1, devices=2, progress=False)
    history = trainer.fit(net, ArrayData(X, y, batch_size=3))
    assert trainer.train_batch_idx == 1
    assert history.train_loss[0] == pytest.approx((0.5 + 0.5 + 2.0) / 3, rel=1e-5)


def test_huber_is_gluons_loss_and_recorded_in_hparams(d2l: Any) -> None:
    net = d2l.LinearRegression(lr=0.1, loss="huber", huber_sigma=0.5)
    assert isinstance(net.huber, gluon.loss.HuberLoss) and net.huber._rho == 0.5
    assert net.hparams["loss"] == "huber" and net.hparams["huber_sigma"] == 0.5
    assert callable(net.loss)  # the loss() method is not shadowed by the choice
    scratch = d2l.LinearRegressionScratch(2, lr=0.1)
    assert scratch.huber is None and scratch.hparams["loss"] == "squared"


def test_get_grads_before_any_step_is_an_error(d2l: Any) -> None:
    with pytest.raises(d2lx.NotFittedError, match="no gradients yet"):
        d2l.LinearRegressionScratch(2, lr=0.1).get_grads()
    concise = d2l.LinearRegression(lr=0.1)
    concise.set_w_b(onp.ones((3, 1)), onp.zeros(1))  # built, but never stepped
    with pytest.raises(d2lx.NotFittedError, match="no gradients yet"):
        concise.get_grads()


def test_predict_before_any_weights_is_an_error(d2l: Any) -> None:
    with pytest.raises(d2lx.NotFittedError, match="has no weights yet"):
        d2l.LinearRegression(lr=0.1).predict(onp.zeros((2, 3), onp.float32))


def test_a_foreign_loaders_batch_too_small_to_split_is_refused(d2l: Any) -> None:
    """d2lx's own loaders are checked before the first step; a foreign loader's batches as they come."""
    X, y = onp.ones((9, 3), onp.float32), onp.ones((9, 1), onp.float32)

    class Batches(d2l.DataModule):  # type: ignore[misc, name-defined]
        def get_dataloader(self, train: bool) -> Any:
            return [(X[i:i + 4], y[i:i + 4]) for i in range(0, 9, 4)] if train else None

    trainer = d2l.Trainer(max_epochs=1, devices=2, progress=False)
    with pytest.raises(d2lx.InvalidArgumentError, match=r"a batch of 1 example\(s\) cannot be split across"):
        trainer.fit(d2l.LinearRegressionScratch(3, lr=0.05), Batches())
    assert trainer.train_batch_idx == 2  # the two full batches were applied
