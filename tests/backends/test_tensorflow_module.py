"""TensorFlow backend: ``Module`` as a ``tf.keras.Model`` -- the Keras 3 ``loss`` trap and raw variables."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import d2lx.backends.tensorflow as d2l  # noqa: E402
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
        with pytest.raises(RuntimeError, match="before its first fit"):
            model.get_w_b()
        model.materialize(3, "/CPU:0")
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
    model.materialize(2, "/CPU:0")
    kernel, bias = model.get_weights()
    assert kernel.shape == (2, 1) and bias.shape == (1,)
