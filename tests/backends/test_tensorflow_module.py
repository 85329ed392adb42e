"""TensorFlow backend: ``Module`` as a ``tf.keras.Model`` -- the Keras 3 ``loss`` trap and raw variables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import d2lx  # noqa: E402
import d2lx.tensorflow as d2l  # noqa: E402  (the reader's namespace)
from d2lx.backends.tensorflow.module import KERAS_LOSS_ATTR  # noqa: E402
from d2lx.data import SyntheticRegressionData  # noqa: E402
from d2lx.seeding import generator, initial_linear_params  # noqa: E402


def _l1(y_hat: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_hat, np.float64) - np.asarray(y, np.float64))))


def test_plain_keras_still_shadows_loss_so_the_fix_is_needed() -> None:
    """The trap itself: a loss method on a bare keras.Model subclass is hidden by None."""

    class Bare(tf.keras.Model):
        def loss(self, y_hat, y):  # type: ignore[no-untyped-def,override]
            return y_hat - y

    assert Bare().loss is None  # if Keras ever stops doing this, the workaround can go


def test_loss_defined_in_the_class_body_wins() -> None:
    model = d2l.LinearRegression(lr=0.03)
    assert "loss" not in model.__dict__
    assert model.__dict__[KERAS_LOSS_ATTR] is None  # Keras' value is kept, just elsewhere
    y_hat = tf.constant([[1.0], [3.0]])
    y = tf.constant([[0.0], [0.0]])
    assert float(model.loss(y_hat, y)) == pytest.approx(5.0)  # MSE, not None


def test_loss_added_with_add_to_class_after_construction_wins_and_trains() -> None:
    class Net(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = tf.keras.layers.Dense(1)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return tf.keras.optimizers.SGD(self.lr)

    model = Net(lr=0.03)  # Keras' __init__ has run: this is where the shadowing happened

    @d2l.add_to_class(Net)
    def loss(self, y_hat, y):  # type: ignore[no-untyped-def]
        return tf.reduce_mean(tf.abs(y_hat - y))  # L1, easy to tell from the MSE

    y_hat, y = np.array([[1.0], [-2.0]], np.float32), np.array([[0.0], [0.0]], np.float32)
    assert float(model.loss(tf.constant(y_hat), tf.constant(y))) == pytest.approx(_l1(y_hat, y))

    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=200, num_val=50, batch_size=20, seed=1)
    history = d2l.Trainer(max_epochs=2, progress=False).fit(model, data)
    w, b = model.get_weights()
    # The recorded validation loss is the L1 of the final parameters: the trainer used the new loss.
    assert history.val_loss[-1] == pytest.approx(_l1(data.X[200:] @ w + b, data.y[200:]), rel=1e-4)


def test_the_seed_style_loss_via_add_to_class_before_construction() -> None:
    class Seeded(d2l.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tf.keras.layers.Dense(1)

    @d2l.add_to_class(Seeded)
    def loss(self, y_hat, y):  # type: ignore[no-untyped-def]
        fn = tf.keras.losses.MeanSquaredError()
        return fn(y, y_hat)

    model = Seeded()
    assert float(model.loss(tf.constant([[2.0]]), tf.constant([[0.0]]))) == pytest.approx(4.0)


def test_keras_compile_and_fit_still_work_and_do_not_shadow_loss() -> None:
    model = d2l.LinearRegression(lr=0.1)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss=tf.keras.losses.MeanAbsoluteError())
    assert isinstance(model.__dict__[KERAS_LOSS_ATTR], tf.keras.losses.MeanAbsoluteError)
    assert "loss" not in model.__dict__
    X = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    y = X @ np.array([[1.0], [-1.0]], np.float32)
    fitted = model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    assert fitted.history["loss"][-1] < fitted.history["loss"][0]
    assert float(model.loss(tf.constant([[3.0]]), tf.constant([[1.0]]))) == pytest.approx(4.0)


def test_a_callable_assigned_to_self_loss_on_purpose_is_kept() -> None:
    class Custom(d2l.Module):
        def __init__(self) -> None:
            super().__init__()
            self.loss = lambda y_hat, y: tf.reduce_sum(y_hat - y)

    model = Custom()
    assert float(model.loss(tf.constant([3.0, 4.0]), tf.constant([1.0, 1.0]))) == pytest.approx(5.0)


def test_d2l_style_scratch_model_with_raw_tf_variables_trains() -> None:
    """d2l's TF 3.4 model keeps tf.Variables; Keras 3 alone would not list them as trainable."""

    class Scratch(d2l.Module):
        def __init__(self, num_inputs: int, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.w = tf.Variable(tf.zeros((num_inputs, 1)), trainable=True)
            self.b = tf.Variable(tf.zeros(1), trainable=True)

        def forward(self, X):  # type: ignore[no-untyped-def]
            return tf.matmul(X, self.w) + self.b

        def loss(self, y_hat, y):  # type: ignore[no-untyped-def]
            return tf.reduce_mean((y_hat - y) ** 2 / 2)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return d2l.SGD(self.lr)

    model = Scratch(2, lr=0.03)
    ids = {id(v) for v in model.trainable_variables}
    assert id(model.w) in ids and id(model.b) in ids
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, seed=0)
    d2l.Trainer(max_epochs=3, progress=False).fit(model, data)
    assert np.all(np.abs(data.w - model.w.numpy().reshape(-1)) < 0.5)
    assert abs(data.b - float(model.b.numpy()[0])) < 0.5


def test_concise_kernel_is_the_core_draw_even_when_built_by_a_call() -> None:
    model = d2l.LinearRegression(lr=0.03, sigma=0.3, seed=7)
    model(tf.zeros((4, 5)))  # Keras builds the lazy Dense here, outside any Trainer
    w, b = model.get_w_b()
    w_ref, b_ref = initial_linear_params(generator("params", 7), 5, 0.3)
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(b, b_ref)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_set_w_b_round_trips_numpy(kind: str) -> None:
    model = d2l.LinearRegressionScratch(3, lr=0.1) if kind == "scratch" else d2l.LinearRegression(lr=0.1)
    if kind == "concise":
        with pytest.raises(d2lx.NotFittedError, match="no weights yet: its layer learns its width"):
            model.get_w_b()
        model.materialize((tf.zeros((1, 3)), tf.zeros((1, 1))), "/CPU:0")
    w = np.array([[1.5], [-2.0], [0.25]], np.float32)
    b = np.array([0.75], np.float32)
    model.set_w_b(w, b)
    w2, b2 = model.get_w_b()
    assert w2.dtype == np.float32 and w2.shape == (3, 1) and b2.shape == (1,)
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_array_equal(b2, b)
    out = model(tf.constant([[1.0, 1.0, 1.0]])).numpy()
    assert out[0, 0] == pytest.approx(0.5)


def test_module_is_a_keras_model_and_get_weights_works() -> None:
    model = d2l.LinearRegression(lr=0.03)
    assert isinstance(model, tf.keras.Model) and isinstance(model, d2l.Module)
    model.materialize((tf.zeros((1, 2)), tf.zeros((1, 1))), "/CPU:0")
    kernel, bias = model.get_weights()
    assert kernel.shape == (2, 1) and bias.shape == (1,)


def test_d2l_alias_table_has_d2ls_names_and_meanings() -> None:
    assert d2l.nn_Module is tf.keras.Model and d2l.reshape is tf.reshape and d2l.astype is tf.cast
    assert d2l.tensor is tf.constant and d2l.arange is tf.range and d2l.normal is tf.random.normal
    w = tf.Variable(tf.ones((2, 1)))
    assert d2l.reshape(w, (2,)).shape == (2,)  # the book reshapes a tf.Variable (no .reshape method)
    assert d2l.size(tf.zeros((2, 3))) == 6 and isinstance(d2l.size(tf.zeros((2, 3))), int)
    np.testing.assert_array_equal(d2l.numpy(w), np.ones((2, 1), np.float32))
    assert float(d2l.reduce_sum(np.ones((2, 2), np.float32) ** 2) / 2) == 2.0  # the book's l2_penalty
    scope = d2l.cpu()
    with scope, scope:  # a re-entrant tf.device scope
        assert "CPU:0" in tf.zeros(1).device
    assert d2l.cpu() == scope and str(scope) == "tf.device('/CPU:0')" and d2l.gpu(1) != d2l.gpu(0)
    assert d2l.num_gpus() == len(tf.config.list_physical_devices("GPU"))
    gpus = [d2l.gpu(i) for i in range(d2l.num_gpus())]
    assert d2l.try_all_gpus() == (gpus or [d2l.cpu()]) and d2l.try_gpu() == (gpus or [d2l.cpu()])[0]


def test_array_ops_copy_only_what_is_elsewhere_and_read_in_one_go() -> None:
    from d2lx.backends.tensorflow.ops import TFOps

    ops = TFOps("/CPU:0")
    moved = ops.to_device(np.ones((3, 2)))  # float64 from a NumPy loader
    assert moved.dtype == tf.float32 and "CPU:0" in moved.device
    assert ops.to_device(moved) is moved  # already there: no copy
    assert ops.to_device(np.arange(3)).dtype == tf.int64  # only float64 is narrowed
    host = ops.to_host([tf.constant(1.5), tf.constant(2.5)])
    assert host.dtype == np.float64 and host.tolist() == [1.5, 2.5]
    assert ops.to_host([tf.constant([1.0, 2.0]), tf.constant([3.0])]).tolist() == [1.0, 2.0, 3.0]
    assert ops.to_host([np.array([1.0, 2.0]), 3.0, tf.constant(4.0)]).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert ops.to_host([]).shape == (0,)


def test_training_flag_follows_keras_calls_as_in_d2l() -> None:
    model = d2l.LinearRegression(lr=0.1)
    assert model.training is None
    model(tf.zeros((2, 3)), training=True)
    assert model.training is True


def test_the_training_flag_drives_keras_layers_in_the_compiled_steps() -> None:
    """d2l's ``model.training`` (the trainer sets it) reaches Keras' dropout: on to train, off to validate."""

    class Dropped(d2l.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tf.keras.Sequential([tf.keras.layers.Dropout(0.5), tf.keras.layers.Dense(1)])

        def loss(self, y_hat: Any, y: Any) -> Any:
            return tf.reduce_mean(tf.square(y_hat - y))

        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.SGD(1e-12)  # the weights stay put: the losses tell the mode

    X = np.ones((64, 4), np.float32)
    data = d2lx.ArrayData(X, np.zeros((64, 1)), X_val=X, y_val=np.zeros((64, 1)), batch_size=64)
    model = Dropped()
    history = d2l.Trainer(max_epochs=1, progress=False).fit(model, data)
    model.training = False
    clean = float(model.loss(model(tf.constant(X)), tf.zeros((64, 1))))
    assert history.val_loss[0] == pytest.approx(clean, rel=1e-5)  # validation: no dropout
    assert history.train_loss[0] != pytest.approx(clean, rel=1e-3)  # training: dropout was on


def test_predict_runs_in_evaluation_mode_after_a_fit_that_ended_training() -> None:
    class Dropped(d2l.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tf.keras.Sequential([tf.keras.layers.Dropout(0.9), tf.keras.layers.Dense(1)])

        def loss(self, y_hat: Any, y: Any) -> Any:
            return tf.reduce_mean(tf.square(y_hat - y))

        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.SGD(0.01)

    model = Dropped()
    X = np.ones((32, 4), np.float32)
    d2l.Trainer(max_epochs=1, progress=False).fit(model, d2lx.ArrayData(X, np.zeros((32, 1)), batch_size=32))
    assert model.training is True  # no validation set: the fit ended in training mode
    first, second = model.predict(X), model.predict(X)
    np.testing.assert_array_equal(first, second)  # no dropout: deterministic
    np.testing.assert_allclose(first, np.ones((32, 1)) * first[0, 0], rtol=1e-6)
