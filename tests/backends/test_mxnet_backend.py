"""MXNet-specific checks beyond the shared conformance suite.

The conformance suite proves the run matches the NumPy oracle; these tests pin
down the MXNet-shaped parts it cannot see: Gluon-native access to the layer,
the L2Loss scaling, ``gluon.Trainer.step``'s rescaling with a user's own
d2l-style Gluon model, gradient clipping, ``set_w_b`` keeping autograd
working, and device mapping. Skipped where MXNet is not installed.
"""

from __future__ import annotations

from typing import Any

import numpy as onp
import pytest

mx = pytest.importorskip("mxnet")

from mxnet import gluon, init, np  # noqa: E402
from oracle import sgd_oracle  # noqa: E402

import d2lx  # noqa: E402
from d2lx import registry  # noqa: E402
from d2lx.data import ArrayData, SyntheticRegressionData  # noqa: E402
from d2lx.seeding import generator, initial_linear_params  # noqa: E402

RTOL, ATOL = 1e-4, 2e-5


def _example(num_inputs: int) -> tuple[Any, Any]:
    """A batch of one example of ``num_inputs`` features: what ``materialize`` builds a layer from."""
    return np.zeros((1, num_inputs)), np.zeros((1, 1))


@pytest.fixture(scope="module")
def d2l() -> Any:
    return registry.load("mxnet")


def test_modules_are_gluon_blocks_and_the_concise_layer_is_a_hybridized_dense(d2l: Any) -> None:
    assert issubclass(d2l.Module, gluon.Block)
    scratch = d2l.LinearRegressionScratch(2, lr=0.03)
    assert isinstance(scratch.w, np.ndarray) and scratch.w.grad is not None
    model = d2l.LinearRegression(lr=0.03)
    assert isinstance(model.net, gluon.nn.Dense)
    assert model.net._active  # hybridize() was called: the layer runs as a cached graph
    assert model.num_inputs is None  # input width is inferred from the data, as in Gluon


def test_concise_weights_are_the_core_draw_transposed_into_dense(d2l: Any) -> None:
    model = d2l.LinearRegression(lr=0.03, sigma=0.5, seed=11)
    model.materialize(_example(3), mx.cpu())
    w_ref, b_ref = initial_linear_params(generator("params", 11), 3, 0.5)
    # Gluon-native access, as d2l's `self.net.weight.data()`: Dense keeps (1, num_inputs).
    onp.testing.assert_array_equal(model.net.weight.data().asnumpy(), w_ref.T)
    onp.testing.assert_array_equal(model.net.bias.data().asnumpy(), b_ref)
    w, b = model.get_w_b()
    assert w.dtype == onp.float32 and w.shape == (3, 1) and b.shape == (1,)
    onp.testing.assert_array_equal(w, w_ref)


def test_concise_weights_before_the_first_fit_are_an_error(d2l: Any) -> None:
    with pytest.raises(d2lx.NotFittedError, match="has no weights yet: its layer learns its width"):
        d2l.LinearRegression(lr=0.03).get_w_b()


def test_concise_loss_is_the_mse_without_the_half(d2l: Any) -> None:
    rng = onp.random.default_rng(3)
    y_hat, y = rng.standard_normal((2, 9, 1)).astype(onp.float32)
    loss = d2l.LinearRegression(lr=0.03).loss(np.array(y_hat), np.array(y))
    assert float(loss) == pytest.approx(float(onp.mean((y_hat - y) ** 2)), rel=1e-6)
    scratch = d2l.LinearRegressionScratch(1, lr=0.03).loss(np.array(y_hat), np.array(y))
    assert float(scratch) == pytest.approx(float(onp.mean((y_hat - y) ** 2) / 2), rel=1e-6)


def _seed_gluon_model(d2l: Any, initializer: Any) -> Any:
    """d2l 3.5's MXNet ``LinearRegression``, as a reader writes it (seed 002)."""

    class LinearRegression(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = gluon.nn.Dense(1)
            self.net.initialize(initializer)

        def forward(self, X: Any) -> Any:
            return self.net(X)

        def loss(self, y_hat: Any, y: Any) -> Any:
            fn = gluon.loss.L2Loss()
            return fn(y_hat, y).mean()

        def configure_optimizers(self) -> Any:
            return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})

        def get_w_b(self) -> Any:
            return (self.net.weight.data(), self.net.bias.data())

    return LinearRegression(lr=0.03)


def test_a_users_own_gluon_model_gets_exactly_lr_times_the_mean_gradient(d2l: Any) -> None:
    """gluon.Trainer.step(n) divides gradients by n; the step must still be lr * grad(mean loss).

    Batch 7 does not divide 150, so the last batch (3 examples) would expose a
    per-batch rescaling error. The seed's loss is half the MSE, which is the
    oracle's "scratch" loss; zero initial weights are the oracle with sigma=0.
    """
    data = SyntheticRegressionData(w=[2, -3.4, 0.7], b=4.2, num_train=150, num_val=5,
                                   batch_size=7, seed=4)
    model = _seed_gluon_model(d2l, init.Zero())
    seen: list[tuple[onp.ndarray, onp.ndarray]] = []
    trainer = d2l.Trainer(max_epochs=3, progress=False,
                          callbacks=[lambda t: seen.append(tuple(a.asnumpy() for a in t.model.get_w_b()))])
    trainer.fit(model, data)
    expected = sgd_oracle(data.X[:150], data.y[:150], model="scratch", lr=0.03, batch_size=7,
                          epochs=3, seed=4, sigma=0.0)
    assert len(seen) == 3
    for (w, b), (w_ref, b_ref) in zip(seen, expected):
        onp.testing.assert_allclose(w.reshape(-1, 1), w_ref, rtol=RTOL, atol=ATOL)
        onp.testing.assert_allclose(b, b_ref, rtol=RTOL, atol=ATOL)


def test_the_seed_gluon_model_reaches_the_seeds_printed_accuracy(d2l: Any) -> None:
    data = SyntheticRegressionData(w=np.array([2, -3.4]), b=4.2)  # an mxnet.np w, as in the seed
    model = _seed_gluon_model(d2l, init.Normal(sigma=0.01))
    d2l.Trainer(max_epochs=3, progress=False).fit(model, data)
    w, b = model.get_w_b()
    # The seed printed errors of about 0.1-0.2 for this half-MSE model.
    assert onp.all(onp.abs(data.w - w.asnumpy().reshape(data.w.shape)) < 0.5)
    assert onp.all(onp.abs(data.b - b.asnumpy()) < 0.5)


def _one_full_batch_step(X: onp.ndarray, y: onp.ndarray, w: onp.ndarray, model: str,
                         lr: float, clip: float) -> tuple[onp.ndarray, onp.ndarray]:
    """One SGD step on the whole batch with d2l's joint-norm clipping, in float64."""
    X64, y64, w64 = X.astype(onp.float64), y.astype(onp.float64), w.astype(onp.float64)
    r = X64 @ w64 - y64  # b starts at 0
    scale = 1.0 if model == "scratch" else 2.0
    g_w, g_b = scale * X64.T @ r / len(X), scale * r.mean(axis=0)
    norm = onp.sqrt((g_w**2).sum() + (g_b**2).sum())
    factor = min(1.0, clip / norm)
    return w64 - lr * factor * g_w, -lr * factor * g_b


@pytest.mark.parametrize("model", ["scratch", "concise"])
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_gradient_clipping_scales_the_joint_norm(d2l: Any, model: str, clip: float) -> None:
    rng = onp.random.default_rng(8)
    X = rng.standard_normal((16, 3)).astype(onp.float32)
    y = (X @ onp.array([[1.0], [-2.0], [0.5]]) + 3.0).astype(onp.float32)
    net = (d2l.LinearRegressionScratch(3, lr=0.1, seed=2) if model == "scratch"
           else d2l.LinearRegression(lr=0.1, seed=2))
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=clip, progress=False)
    trainer.fit(net, ArrayData(X, y, batch_size=16, seed=2))
    w0, _ = initial_linear_params(generator("params", 2), 3, 0.01)
    w_ref, b_ref = _one_full_batch_step(X, y, w0, model, 0.1, clip)
    w, b = net.get_w_b()
    onp.testing.assert_allclose(w, w_ref, rtol=RTOL, atol=ATOL)
    onp.testing.assert_allclose(b, b_ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_set_w_b_keeps_the_gradients_attached(d2l: Any, model: str) -> None:
    """A checkpoint restore (set_w_b) must write in place, or training would stop updating."""
    data = SyntheticRegressionData(w=[1.5, -0.5], b=1.0, num_train=90, num_val=0, batch_size=9, seed=2)
    net = (d2l.LinearRegressionScratch(2, lr=0.03, seed=1) if model == "scratch"
           else d2l.LinearRegression(lr=0.03, seed=1))
    net.materialize(_example(2), mx.cpu())
    net.set_w_b(*initial_linear_params(generator("params", 2), 2, 0.01))  # seed 2's start
    seen: list[tuple[onp.ndarray, onp.ndarray]] = []
    d2l.Trainer(max_epochs=2, progress=False,
                callbacks=[lambda t: seen.append(t.model.get_w_b())]).fit(net, data)
    expected = sgd_oracle(data.X, data.y, model=model, lr=0.03, batch_size=9, epochs=2, seed=2)
    for (w, b), (w_ref, b_ref) in zip(seen, expected):
        onp.testing.assert_allclose(w, w_ref, rtol=RTOL, atol=ATOL)
        onp.testing.assert_allclose(b, b_ref, rtol=RTOL, atol=ATOL)


def test_data_is_copied_to_the_context_once_and_batches_stay_there(d2l: Any) -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=32, batch_size=16)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    cached = len(data._device_cache)
    assert cached == 4  # train X, y and validation X, y
    X, y = next(iter(trainer.train_dataloader))
    assert isinstance(X, np.ndarray) and X.ctx == mx.cpu() and X.shape == (16, 2)
    assert isinstance(y, np.ndarray) and y.ctx == mx.cpu() and y.shape == (16, 1)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    assert len(data._device_cache) == cached


def test_epoch_losses_come_back_as_float64_in_order(d2l: Any) -> None:
    from d2lx.backends.mxnet.step import all_finite

    trainer = d2l.Trainer(max_epochs=1, progress=False)
    values = [np.array(v, dtype="float32") for v in (0.5, 1.25, 3.0)]
    out = trainer.ops.to_host(values)
    assert out.dtype == onp.float64
    onp.testing.assert_array_equal(out, [0.5, 1.25, 3.0])
    # A reader's own loop may plot host numbers between device values: order is kept.
    mixed = trainer.ops.to_host([values[0], 7.0, np.array([1.0, 2.0]), onp.float32(4.5)])
    onp.testing.assert_array_equal(mixed, [0.5, 7.0, 1.0, 2.0, 4.5])
    assert trainer.ops.to_host([]).shape == (0,)
    assert all_finite([values[0]]) and not all_finite([values[0], np.array(float("nan"))])
    assert not all_finite([values[1], np.array([1.0, float("inf")], ctx=mx.cpu(1))])  # any context


def test_gpu_requests_map_to_mx_gpu(d2l: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the d2lx-to-MXNet mapping: mx.gpu(N) is a context object, made without a GPU."""
    from d2lx.backends.mxnet import ops

    monkeypatch.setattr(ops, "visible_gpus", lambda: 2)
    assert d2l.Trainer(max_epochs=1, device="gpu:1").device == mx.gpu(1)
    assert d2l.Trainer(max_epochs=1, num_gpus=1).device == mx.gpu(0)
    with pytest.raises(d2lx.DeviceUnavailableError, match=r"only 2 GPU\(s\)"):
        d2l.Trainer(max_epochs=1, device="gpu:2")
    assert d2l.Trainer(max_epochs=1, device="cpu").device == mx.cpu()


def test_backend_namespace(d2l: Any) -> None:
    assert d2l.BACKEND == "mxnet" and d2l.framework_version() == mx.__version__
    assert d2l.list_devices()[0] == "cpu"
    assert d2l.default_array_ops().device_key == "mxnet:cpu(0)"
    assert mx.util.is_np_array()  # npx.set_np() ran on import


#: d2l 1.0.3's alias table for MXNet (``# Alias defined in config.ini`` in d2l/mxnet.py): the names.
D2L_ALIASES = ("size", "transpose", "nn_Module", "sigmoid", "batch_matmul", "ones_like", "ones",
               "zeros_like", "zeros", "arange", "meshgrid", "sin", "sinh", "cos", "cosh", "tanh",
               "linspace", "exp", "log", "tensor", "normal", "randn", "expand_dims", "rand", "matmul",
               "int32", "int64", "float32", "concat", "stack", "abs", "eye", "numpy", "reshape", "to",
               "reduce_sum", "argmax", "astype", "reduce_mean", "swapaxes", "repeat")


def test_the_alias_table_has_d2ls_names_and_meanings(d2l: Any) -> None:
    missing = [name for name in D2L_ALIASES if not hasattr(d2l, name)]
    assert not missing
    assert d2l.nn_Module is gluon.nn.Block and d2l.tensor is np.array and d2l.matmul is np.dot
    assert d2l.normal is np.random.normal and d2l.concat is np.concatenate and d2l.float32 is np.float32
    x = d2l.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    assert d2l.size(x) == 6 and d2l.transpose(x).shape == (3, 2)
    host = d2l.numpy(x)
    assert isinstance(host, onp.ndarray) and host.tolist() == [[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]]
    assert float(d2l.reduce_sum(x)) == 5.0 and float(d2l.reduce_mean(x, axis=0)[1]) == 1.5
    assert d2l.reshape(x, (3, 2)).shape == (3, 2) and d2l.reshape(x, -1).shape == (6,)
    assert int(d2l.argmax(x)) == 4 and d2l.astype(x, "int32").dtype == onp.int32
    assert d2l.swapaxes(x, 0, 1).shape == (3, 2) and d2l.repeat(x, 2).shape == (12,)
    assert d2l.to(x, mx.cpu(1)).ctx == mx.cpu(1)
    onp.testing.assert_allclose(d2l.sigmoid(np.zeros(2)).asnumpy(), [0.5, 0.5])
    assert d2l.batch_matmul(np.ones((2, 3, 4)), np.ones((2, 4, 5))).shape == (2, 3, 5)
    assert isinstance(d2l.randn(2, 3), np.ndarray) and d2l.zeros(1).shape == (1,)


def test_device_helpers_are_d2ls(d2l: Any) -> None:
    assert d2l.cpu() == mx.cpu() and d2l.gpu(1) == mx.gpu(1)
    assert d2l.num_gpus() == sum(1 for d in d2l.list_devices() if d.startswith("gpu"))
    if d2l.num_gpus() == 0:
        assert d2l.try_gpu() == mx.cpu() and d2l.try_all_gpus() == [mx.cpu()]


def test_the_gpu_count_of_a_cpu_only_build_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only MXNet may raise when asked how many GPUs it has: that means none."""
    from mxnet import npx

    from d2lx.backends.mxnet import ops

    def raises() -> int:
        raise mx.base.MXNetError("CUDA: no device")

    monkeypatch.setattr(npx, "num_gpus", raises)
    assert ops.num_gpus() == 0 and ops.visible_gpus() == 0


def test_steps_per_execution_without_a_fused_path_warns(d2l: Any) -> None:
    with pytest.warns(UserWarning, match="the mxnet backend has no fused path"):
        d2l.Trainer(max_epochs=1, steps_per_execution=8)
