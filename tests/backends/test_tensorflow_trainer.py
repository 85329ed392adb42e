"""TensorFlow backend: tf.function tracing, fused steps, divergence guard, clipping, devices, state."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import d2lx  # noqa: E402
import d2lx.tensorflow as d2l  # noqa: E402  (the reader's namespace)
from d2lx.data import ArrayData, SyntheticRegressionData  # noqa: E402
from d2lx.seeding import generator, initial_linear_params  # noqa: E402


def _model(kind: str, num_inputs: int, lr: float, seed: int = 0) -> Any:
    if kind == "scratch":
        return d2l.LinearRegressionScratch(num_inputs, lr=lr, seed=seed)
    return d2l.LinearRegression(lr=lr, seed=seed)


def _fit(kind: str, steps: int, *, epochs: int = 3, batch_size: int = 7, seed: int = 2,
         **trainer_kwargs: Any) -> tuple[Any, Any, list[tuple[np.ndarray, np.ndarray]]]:
    data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=100, num_val=30,
                                   batch_size=batch_size, seed=seed)  # 100 % 7 != 0: short last batch
    net = _model(kind, 3, 0.03, seed)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    trainer = d2l.Trainer(max_epochs=epochs, steps_per_execution=steps, progress=False,
                          callbacks=[lambda t: seen.append(t.model.get_w_b())], **trainer_kwargs)
    trainer.fit(net, data)
    return trainer, net, seen


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [4, 15, 1000])  # divides nothing / the whole epoch / more than an epoch
def test_fused_steps_equal_the_step_by_step_run(kind: str, steps: int) -> None:
    ref_trainer, _, ref_seen = _fit(kind, 1)
    trainer, _, seen = _fit(kind, steps)
    assert trainer.train_batch_idx == ref_trainer.train_batch_idx == 3 * 15
    assert trainer.val_batch_idx == ref_trainer.val_batch_idx == 3 * 5
    for (w, b), (w_ref, b_ref) in zip(seen, ref_seen, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trainer.history.train_loss, ref_trainer.history.train_loss, rtol=1e-5)
    np.testing.assert_allclose(trainer.history.val_loss, ref_trainer.history.val_loss, rtol=1e-5)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [1, 4])
def test_one_trace_per_function_not_per_epoch(kind: str, steps: int) -> None:
    # A clipping value no other test uses: a run structure not compiled before in this process.
    trainer, _, _ = _fit(kind, steps, epochs=4, gradient_clip_val=50.0 + steps)
    assert not trainer.compile_cache_hit
    # Full batches and the shorter last one (100 % 7, 30 % 7) are two functions (static shapes, for XLA).
    assert trainer.trace_counts == {"train": 1, "train_tail": 1, "val": 1, "val_tail": 1}  # Python-side
    compiled = trainer._step.compiled
    assert set(compiled.fns) == set(trainer.trace_counts)
    for fn in compiled.fns.values():
        assert fn.experimental_get_tracing_count() == 1  # TensorFlow's own count


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [1, 4])
def test_a_fresh_model_of_the_same_structure_reuses_the_compiled_step_on_its_own_variables(
        kind: str, steps: int) -> None:
    first, net1, seen1 = _fit(kind, steps, gradient_clip_val=60.0 + steps)
    w1, b1 = net1.get_w_b()
    g1 = net1.get_grads()
    second, net2, seen2 = _fit(kind, steps, gradient_clip_val=60.0 + steps)
    assert second.compile_cache_hit
    assert second.trace_counts == {"train": 0, "train_tail": 0, "val": 0, "val_tail": 0}
    assert second._step.compiled is first._step.compiled
    assert second._step.compiled.fns["train"].experimental_get_tracing_count() == 1
    for (w, b), (w_ref, b_ref) in zip(seen2, seen1, strict=True):  # the same run again
        np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b, b_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(second.history.train_loss, first.history.train_loss, rtol=1e-6)
    np.testing.assert_allclose(second.history.val_loss, first.history.val_loss, rtol=1e-6)
    # The second run wrote its own variables only: the first model and its gradients are untouched.
    np.testing.assert_array_equal(net1.get_w_b()[0], w1)
    np.testing.assert_array_equal(net1.get_w_b()[1], b1)
    for got, want in zip(net1.get_grads(), g1):
        np.testing.assert_array_equal(got, want)
    # The first model can train again with the same compiled step (re-bound to it).
    again = d2l.Trainer(max_epochs=1, steps_per_execution=steps, gradient_clip_val=60.0 + steps,
                        progress=False)
    again.fit(net1, SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=100, num_val=30,
                                            batch_size=7, seed=2))
    assert again.compile_cache_hit and not np.array_equal(net1.get_w_b()[0], w1)
    np.testing.assert_array_equal(net2.get_w_b()[0], seen2[-1][0])


def test_other_structures_and_user_models_are_traced_anew() -> None:
    _fit("concise", 1, gradient_clip_val=70.0)
    other_lr = d2l.Trainer(max_epochs=1, gradient_clip_val=70.0, progress=False)
    data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=100, num_val=30, batch_size=7, seed=2)
    other_lr.fit(d2l.LinearRegression(lr=0.031), data)  # lr is a Python value of the step's config
    assert not other_lr.compile_cache_hit and other_lr.trace_counts["train"] == 1

    class Scaled(d2l.LinearRegression):  # may read Python state d2lx cannot see: never shared
        def loss(self, y_hat: Any, y: Any) -> Any:
            return 2.0 * super().loss(y_hat, y)

    for _ in range(2):
        trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=70.0, progress=False)
        trainer.fit(Scaled(lr=0.03), data)
        assert not trainer.compile_cache_hit and trainer.trace_counts["train"] == 1


@pytest.mark.parametrize("steps", [1, 4])
def test_losses_stay_on_the_device_and_an_epoch_is_read_in_one_transfer(
        steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorflow.python.framework import ops as tf_ops

    reads: list[tuple[int, ...]] = []
    numpy = tf_ops._EagerTensorBase.numpy

    def counted(self: Any) -> np.ndarray:
        reads.append(tuple(self.shape))
        return numpy(self)

    def run(batch_size: int) -> list[tuple[int, ...]]:
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=120, num_val=40, batch_size=batch_size)
        trainer = d2l.Trainer(max_epochs=2, steps_per_execution=steps, progress=False)
        net = d2l.LinearRegressionScratch(2, lr=0.03)
        reads.clear()
        monkeypatch.setattr(tf_ops._EagerTensorBase, "numpy", counted)
        trainer.fit(net, data)
        monkeypatch.undo()
        return list(reads)

    few, many = run(40), run(8)  # 3 + 1 and 15 + 5 steps per epoch
    assert len(few) == len(many) == 2  # one read per epoch, whatever the number of steps
    # Training losses, validation losses and the guard's latch; a fused call (a static shape, for XLA)
    # returns room for a whole chunk of 4 steps: 15 and 5 steps come back in 4 + 2 vectors of 4.
    assert many == [(15 + 5 + 2 if steps == 1 else 4 * 4 + 2 * 4 + 2,)] * 2


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [1, 3])
def test_divergent_update_is_not_applied(kind: str, steps: int) -> None:
    """One batch per epoch: step k is epoch k, so the callback saw the params the error must keep."""
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((64, 2)) * 10).astype(np.float32)
    y = (X @ np.array([[2.0], [-3.4]]) + 4.2).astype(np.float32)
    data = ArrayData(X, y, batch_size=64)
    net = _model(kind, 2, lr=5.0)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    trainer = d2l.Trainer(max_epochs=200, steps_per_execution=steps, progress=False,
                          callbacks=[lambda t: seen.append(t.model.get_w_b())])
    with pytest.raises(d2lx.DivergenceError) as info:
        trainer.fit(net, data)
    err = info.value
    assert err.step == err.epoch == len(seen) > 0
    w, b = net.get_w_b()
    assert np.isfinite(w).all() and np.isfinite(b).all()
    np.testing.assert_array_equal(w, seen[-1][0])
    np.testing.assert_array_equal(b, seen[-1][1])
    assert trainer.train_batch_idx == err.step


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_fused_divergence_stops_at_the_same_step_with_the_same_parameters(kind: str) -> None:
    results = []
    for steps in (1, 6):
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=640, num_val=0, batch_size=16)
        net = _model(kind, 2, lr=60.0 if kind == "scratch" else 30.0)
        with pytest.raises(d2lx.DivergenceError) as info:
            d2l.Trainer(max_epochs=20, steps_per_execution=steps, progress=False).fit(net, data)
        results.append((info.value.epoch, info.value.step, *net.get_w_b()))
    (e1, s1, w1, b1), (e2, s2, w2, b2) = results
    assert (e1, s1) == (e2, s2)
    assert np.isfinite(w1).all()
    np.testing.assert_allclose(w2, w1, rtol=1e-5)
    np.testing.assert_allclose(b2, b1, rtol=1e-5)


def test_check_finite_off_lets_the_run_go_non_finite() -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=640, num_val=0, batch_size=16)
    net = d2l.LinearRegressionScratch(2, lr=60.0)
    history = d2l.Trainer(max_epochs=3, progress=False, check_finite=False).fit(net, data)
    assert not np.isfinite(history.train_loss[-1])


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [1, 2])
def test_gradient_clipping_scales_the_joint_norm(kind: str, steps: int) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2)).astype(np.float32)
    y = (X @ np.array([[2.0], [-3.4]]) + 4.2).astype(np.float32)
    lr, clip = 0.1, 0.5
    net = _model(kind, 2, lr=lr, seed=4)
    d2l.Trainer(max_epochs=1, gradient_clip_val=clip, steps_per_execution=steps,
                progress=False).fit(net, ArrayData(X, y, batch_size=40))  # exactly one step
    w0, b0 = (a.astype(np.float64) for a in initial_linear_params(generator("params", 4), 2, 0.01))
    r = X.astype(np.float64) @ w0 + b0 - y
    scale = 1.0 if kind == "scratch" else 2.0
    gw, gb = scale * X.T.astype(np.float64) @ r / 40, scale * r.mean(axis=0)
    norm = np.sqrt((gw**2).sum() + (gb**2).sum())
    assert norm > clip  # the clip is active in this case
    factor = min(1.0, clip / norm)
    w, b = net.get_w_b()
    np.testing.assert_allclose(w, w0 - lr * factor * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, b0 - lr * factor * gb, rtol=1e-5, atol=1e-6)


def test_clip_gradients_leaves_small_gradients_alone() -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    grads = [tf.constant([[0.3], [0.4]]), tf.constant([0.0])]
    np.testing.assert_allclose(trainer.clip_gradients(10.0, grads)[0].numpy(), [[0.3], [0.4]])
    np.testing.assert_allclose(trainer.clip_gradients(0.25, grads)[0].numpy(), [[0.15], [0.2]], rtol=1e-6)


class MomentumModel(d2l.LinearRegression):
    def configure_optimizers(self) -> Any:
        return tf.keras.optimizers.SGD(self.lr, momentum=0.9)


def test_keras_optimizer_state_round_trips_and_rejects_a_foreign_state() -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=0, batch_size=10)
    trainer = d2l.Trainer(max_epochs=2, progress=False)
    trainer.fit(MomentumModel(lr=0.03), data)
    state = trainer.optimizer_state()
    # The slots (momentum per variable), by position and name, not Keras' numbered path; the step
    # counter and the learning rate are the run's step and the model's lr, not optimizer state.
    keys = sorted(state)  # Keras numbers layers per instance (dense_22...): positions are what match
    assert len(keys) == 2 and keys[0].startswith("0:dense") and keys[0].endswith("kernel_momentum"), keys
    assert keys[1].startswith("1:dense") and keys[1].endswith("bias_momentum"), keys
    assert all(np.abs(v).sum() > 0 for v in state.values())
    fresh = d2l.Trainer(max_epochs=1, progress=False)
    fresh.model = MomentumModel(lr=0.03)
    fresh.model.materialize((tf.zeros((1, 2)), tf.zeros((1, 1))), "/CPU:0")
    fresh.optim = fresh.model.configure_optimizers()
    fresh.load_optimizer_state(state)
    np.testing.assert_array_equal(sorted(v.tobytes() for v in fresh.optimizer_state().values()),
                                  sorted(v.tobytes() for v in state.values()))
    with pytest.raises(d2lx.CheckpointError, match="does not match"):
        fresh.load_optimizer_state({"0:adam/m": np.array(3)})
    plain = d2l.Trainer(max_epochs=1, progress=False)
    plain.fit(d2l.LinearRegression(lr=0.03), data)
    assert plain.optimizer_state() == {}  # Keras' plain SGD: nothing but step and lr
    scratch = d2l.Trainer(max_epochs=1, progress=False)
    scratch.fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    assert scratch.optimizer_state() == {}
    with pytest.raises(d2lx.CheckpointError, match="keeps none"):
        scratch.load_optimizer_state(state)


def test_data_is_sent_to_the_device_once() -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=20, batch_size=10)
    first = d2l.Trainer(max_epochs=1, progress=False)
    first.fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    second = d2l.Trainer(max_epochs=1, progress=False)
    second.fit(d2l.LinearRegression(lr=0.03), data)
    assert second.train_dataloader.tensors[0] is first.train_dataloader.tensors[0]
    assert "CPU:0" in first.train_dataloader.tensors[0].device


def test_absent_gpu_error_names_tensorflow_and_the_fix() -> None:
    index = sum(1 for d in d2l.list_devices() if d.startswith("gpu"))
    with pytest.raises(d2lx.DeviceUnavailableError, match="tensorflow sees") as info:
        d2l.Trainer(max_epochs=1, device=f"gpu:{index}")
    assert "device='cpu'" in str(info.value) and "CUDA build of TensorFlow" in str(info.value)


def test_allow_tf32_must_be_a_bool() -> None:
    with pytest.raises(d2lx.ArgumentTypeError, match="allow_tf32"):
        d2l.Trainer(max_epochs=1, allow_tf32="yes")  # type: ignore[arg-type]


@pytest.mark.gpu
def test_gpu_run_places_parameters_on_the_gpu_with_tf32_off() -> None:
    if not tf.config.list_logical_devices("GPU"):
        pytest.skip("TensorFlow sees no GPU on this machine")
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=20, batch_size=10)
    net = d2l.LinearRegressionScratch(2, lr=0.03)
    d2l.Trainer(max_epochs=1, device="gpu", progress=False).fit(net, data)
    assert "GPU:0" in net.w.device
    assert not tf.config.experimental.tensor_float_32_execution_enabled()


@pytest.mark.parametrize(("preset", "expected"), [(None, "2"), ("0", "0")])
def test_cpp_log_level_defaults_to_quiet_unless_the_user_set_it(preset: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if preset is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = preset
    code = "import os, d2lx.backends.tensorflow; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    assert out.stdout.strip() == expected


def _d2l_fit_epoch(self: Any) -> None:
    """d2l 1.0.3's TensorFlow ``Trainer.fit_epoch`` (the book's 3.4 cell), as a reader adds it."""
    self.model.training = True
    for batch in self.train_dataloader:
        with tf.GradientTape() as tape:
            loss = self.model.training_step(self.prepare_batch(batch))
        grads = tape.gradient(loss, self.model.trainable_variables)
        if self.gradient_clip_val > 0:
            grads = self.clip_gradients(self.gradient_clip_val, grads)
        self.optim.apply_gradients(zip(grads, self.model.trainable_variables))
        self.train_batch_idx += 1
    if self.val_dataloader is None:
        return
    self.model.training = False
    for batch in self.val_dataloader:
        self.model.validation_step(self.prepare_batch(batch))
        self.val_batch_idx += 1


def test_tensorflows_start_up_log_lines_follow_the_log_level() -> None:
    """TF 2.21 logs at import (oneDNN) before its logging reads the level: the import holds them to it."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", "import d2lx.backends.tensorflow"], capture_output=True,
                         text=True, env=env, timeout=120, check=True)
    assert out.stderr.strip() == ""  # the default level 2: no INFO banner, no absl preamble


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_d2l_eager_fit_epoch_written_for_tensorflow_matches_the_compiled_step(kind: str) -> None:
    """d2l's own TF ``fit_epoch`` (an eager tape loop, added with add_to_class) gives the compiled result."""

    class EagerTrainer(d2l.Trainer):  # a subclass, so that d2l.Trainer itself stays untouched
        pass

    d2l.add_to_class(EagerTrainer)(_d2l_fit_epoch)
    runs = []
    for cls in (EagerTrainer, d2l.Trainer):
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=90, num_val=20, batch_size=8, seed=5)
        net = _model(kind, 2, 0.03, seed=5)
        trainer = cls(max_epochs=2, gradient_clip_val=1.0, progress=False)
        history = trainer.fit(net, data)
        assert trainer.train_batch_idx == 2 * 12 and trainer.val_batch_idx == 2 * 3  # 20 = 8 + 8 + 4
        runs.append((*net.get_w_b(), history.train_loss, history.val_loss))
    (w1, b1, t1, v1), (w2, b2, t2, v2) = runs
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t1, t2, rtol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)


def test_d2l_eager_fit_epoch_stops_a_diverging_run_before_the_bad_update() -> None:
    class EagerTrainer(d2l.Trainer):
        pass

    d2l.add_to_class(EagerTrainer)(_d2l_fit_epoch)
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=640, num_val=0, batch_size=16)
    net = d2l.LinearRegressionScratch(2, lr=60.0)
    with pytest.raises(d2lx.DivergenceError, match="the loss became NaN or inf"):
        EagerTrainer(max_epochs=20, progress=False).fit(net, data)
    assert np.isfinite(net.get_w_b()[0]).all()


def test_autograph_can_be_switched_on_for_python_control_flow_on_tensors() -> None:
    class Branchy(d2l.LinearRegressionScratch):
        def loss(self, y_hat, y):  # type: ignore[no-untyped-def]
            l = tf.reduce_mean((y_hat - y) ** 2 / 2)
            if l > 1e6:  # a Python `if` on a tensor: needs AutoGraph inside tf.function
                l = l * 0.0
            return l

    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=0, batch_size=16)
    with pytest.raises(TypeError):  # AutoGraph off (the default): a symbolic tensor used as a bool
        d2l.Trainer(max_epochs=1, progress=False).fit(Branchy(2, lr=0.03), data)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.autograph = True
    history = trainer.fit(Branchy(2, lr=0.03), data)
    assert np.isfinite(history.train_loss[0])


class _NumpyBatches(d2lx.DataModule):
    """The batches an ``ArrayData`` loader yields, as NumPy float64 batches from a generator."""

    def __init__(self, data: Any, seed: int) -> None:
        super().__init__(seed=seed)
        self.source, self.batch_size = data, data.batch_size

    def get_dataloader(self, train: bool) -> Any:
        return None if not train and self.source.X_val is None else self._batches(train)

    def _batches(self, train: bool) -> Any:  # a generator: d2lx asks for a new one every epoch
        d, bs = self.source, self.batch_size
        X, y = (d.X, d.y) if train else (d.X_val, d.y_val)
        order = self.shuffle_rng.permutation(len(X)) if train else np.arange(len(X))  # ArrayLoader's draw
        for i in range(0, len(X), bs):
            yield X[order[i:i + bs]].astype(np.float64), y[order[i:i + bs]]


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_any_other_loader_runs_one_traced_step_per_batch_and_equals_the_compiled_epoch(kind: str) -> None:
    rng = np.random.default_rng(1)
    X, X_val = rng.standard_normal((100, 3)), rng.standard_normal((30, 3))
    w = np.array([[2.0], [-3.4], [0.5]])
    y, y_val = X @ w + 4.2, X_val @ w + 4.2
    runs = []
    for data in (ArrayData(X, y, X_val, y_val, batch_size=7, seed=3),
                 _NumpyBatches(ArrayData(X, y, X_val, y_val, batch_size=7), seed=3)):
        net = _model(kind, 3, 0.03, seed=1)
        trainer = d2l.Trainer(max_epochs=3, progress=False)
        history = trainer.fit(net, data)
        runs.append((trainer, net.get_w_b(), history))
    (_, (w1, b1), h1), (other, (w2, b2), h2) = runs
    assert other._step.compiled is None and set(other._step.functions) == {"train", "val"}
    assert other.trace_counts == {"train": 1, "val": 1}  # full and short (100 % 7) batches: one graph
    assert other.train_batch_idx == 3 * 15 and other.val_batch_idx == 3 * 5
    np.testing.assert_allclose(w2, w1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b2, b1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(h2.train_loss, h1.train_loss, rtol=1e-6)
    np.testing.assert_allclose(h2.val_loss, h1.val_loss, rtol=1e-6)
    loss = other._step.train(other.prepare_batch((X[:5], y[:5])))
    assert isinstance(loss, tf.Tensor) and loss.shape == () and "CPU:0" in loss.device  # left on the device


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("loader", ["array", "numpy"])
def test_an_update_that_overflows_the_parameters_is_undone_and_named(steps: int, loader: str) -> None:
    """A finite loss whose update makes w inf: the guard restores w from before the step, exactly."""
    X = np.full((4, 1), 1e18, np.float32)
    y = np.zeros((4, 1), np.float32)  # loss ~ 1e32 (finite), gradient ~ 1e34, lr * gradient overflows
    data = ArrayData(X, y, batch_size=4)
    data = data if loader == "array" else _NumpyBatches(data, 0)
    net = d2l.LinearRegressionScratch(1, lr=1e10, seed=3)
    w0, b0 = net.get_w_b()
    trainer = d2l.Trainer(max_epochs=2, steps_per_execution=steps, progress=False)
    with pytest.raises(d2lx.DivergenceError, match="the update made the parameters NaN or inf") as info:
        trainer.fit(net, data)
    assert info.value.step == 0 and trainer.train_batch_idx == 0
    np.testing.assert_array_equal(net.get_w_b()[0], w0)
    np.testing.assert_array_equal(net.get_w_b()[1], b0)
    with pytest.raises(d2lx.NotFittedError, match="no gradients yet"):  # no update was ever applied
        net.get_grads()


def test_a_refused_step_refuses_every_later_step_of_its_epoch() -> None:
    """Batch 1 has a NaN; batches 2 and 3 are clean but must not be applied either."""
    X = np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32)
    y = X @ np.array([[1.0], [2.0]], np.float32)
    batches = [(X[i:i + 8].copy(), y[i:i + 8]) for i in range(0, 32, 8)]
    batches[1][0][0, 0] = np.nan

    class Dirty(d2lx.DataModule):
        batch_size = 8

        def get_dataloader(self, train: bool) -> Any:
            return batches if train else None

    seen: list[Any] = []
    net = d2l.LinearRegression(lr=0.1)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    original = d2l.Trainer.prepare_batch

    def record(self: Any, batch: Any) -> Any:  # the parameters before each step
        if self.model.net.built:
            seen.append(self.model.get_w_b())
        return original(self, batch)

    trainer.prepare_batch = record.__get__(trainer)
    with pytest.raises(d2lx.NonFiniteDataError, match="training batch 1 of epoch 0"):
        trainer.fit(net, Dirty())
    assert len(seen) == 4 and not np.array_equal(seen[1][0], seen[0][0])  # batch 0 was applied
    for w_b in [*seen[2:], net.get_w_b()]:  # batches 1, 2 and 3 were not
        np.testing.assert_array_equal(w_b[0], seen[1][0])


def test_a_keras_model_state_round_trips_by_position_and_refuses_another_model() -> None:
    class MLP(d2l.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"),
                                            tf.keras.layers.BatchNormalization(), tf.keras.layers.Dense(1)])

        def loss(self, y_hat: Any, y: Any) -> Any:
            return tf.reduce_mean(tf.square(y_hat - y))

        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.SGD(0.01)

    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=0, batch_size=16)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(MLP(), data)
    state = trainer.model_state()
    names = [k.split(":", 1)[1] for k in sorted(state, key=lambda k: int(k.split(":")[0]))]
    assert names[:2] == ["kernel", "bias"] and "moving_mean" in names  # batch statistics too
    other = d2l.Trainer(max_epochs=1, progress=False)
    other.model = MLP()
    other.model.materialize((tf.zeros((1, 2)), tf.zeros((1, 1))), "/CPU:0")
    other.load_model_state(state)
    assert sorted(other.model_state()) == sorted(state)  # Keras' per-instance numbering is not in the keys
    for key, value in other.model_state().items():
        np.testing.assert_array_equal(value, state[key])
    with pytest.raises(d2lx.CheckpointError, match="model state does not match"):
        other.load_model_state({k: v for k, v in state.items() if not k.startswith("0:")})


def test_tensorflows_global_generator_is_saved_and_restored_when_used() -> None:
    from tensorflow.python.ops import stateful_random_ops

    before = stateful_random_ops.global_generator
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    assert trainer.rng_state() == {} or before is not None  # none until the program makes it
    try:
        generator = tf.random.get_global_generator()
        state = trainer.rng_state()
        assert set(state) == {"tf_global_generator"}
        first = generator.normal((3,)).numpy()
        trainer.load_rng_state(state)
        np.testing.assert_array_equal(generator.normal((3,)).numpy(), first)
    finally:  # later tests (and the docs' checkpoint listing) run in a program that made none
        tf.random.set_global_generator(before)


def test_the_compiled_step_cache_does_not_keep_a_finished_fits_data_alive() -> None:
    import gc
    import weakref

    def fit() -> tuple[Any, Any]:
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=20, batch_size=10)
        trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=80.0, progress=False)  # a structure of its own
        trainer.fit(d2l.LinearRegression(lr=0.03), data)
        assert not trainer.compile_cache_hit
        return weakref.ref(trainer), weakref.ref(data)

    trainer, data = fit()
    gc.collect()
    assert trainer() is None and data() is None
    again = d2l.Trainer(max_epochs=1, gradient_clip_val=80.0, progress=False)  # the cache still serves
    again.fit(d2l.LinearRegression(lr=0.03), SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100,
                                                                      num_val=20, batch_size=10))
    assert again.compile_cache_hit and np.isfinite(again.history.train_loss).all()


# -- XLA (jit_compile), static batch sizes, reuse on any loader ---------------------------------
@pytest.mark.parametrize("value", ["yes", "AUTO", "xla", 1, 0, None, 1.0])
def test_jit_compile_accepts_auto_true_or_false_only(value: Any) -> None:
    with pytest.raises(d2lx.ArgumentTypeError, match=r"jit_compile must be 'auto', True or False"):
        d2l.Trainer(max_epochs=1, jit_compile=value)
    for good in ("auto", True, False):
        assert d2l.Trainer(max_epochs=1, jit_compile=good).jit_compile == good


def _xla_compiled(fn: Any) -> bool:
    """Whether a tf.function's graph is marked for XLA (TensorFlow's own attribute)."""
    return bool(fn.get_concrete_function().function_def.attr["_XlaMustCompile"].b)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
@pytest.mark.parametrize("steps", [1, 8])
def test_xla_and_the_plain_graph_train_the_seed_problem_to_the_same_parameters(kind: str, steps: int) -> None:
    runs = []
    for jit in (True, False, "auto"):
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2)  # d2l's seed problem: 1000 examples, batch 32
        net = _model(kind, 2, 0.03)
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        trainer = d2l.Trainer(max_epochs=3, steps_per_execution=steps, jit_compile=jit, progress=False,
                              callbacks=[lambda t, seen=seen: seen.append(t.model.get_w_b())])
        trainer.fit(net, data)
        compiled = trainer._step.compiled
        assert {_xla_compiled(fn) for fn in compiled.fns.values()} == {jit is not False}
        runs.append((seen, trainer.history))
    (xla, h_xla), (plain, h_plain), (auto, _) = runs
    for (w, b), (w_ref, b_ref), (w_auto, b_auto) in zip(xla, plain, auto, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(w_auto, w)  # "auto" is XLA here
        np.testing.assert_array_equal(b_auto, b)
    np.testing.assert_allclose(h_xla.train_loss, h_plain.train_loss, rtol=1e-5)
    np.testing.assert_allclose(h_xla.val_loss, h_plain.val_loss, rtol=1e-5, atol=1e-7)
    assert abs(xla[-1][1][0] - 4.2) < 0.3  # and it learned (b starts at 0)


def _sgd_reference(data: Any, lr: float, epochs: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """d2l 3.4's minibatch SGD in float64 NumPy over ``data``'s own loader (its shuffles, its last batch)."""
    w, b = (a.astype(np.float64) for a in initial_linear_params(generator("params", 0), 3, 0.01))
    losses = []
    for _ in range(epochs):
        batch_losses = []
        for X, y in data.train_dataloader():
            X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
            r = X @ w + b - y
            batch_losses.append(float((r**2 / 2).mean()))
            w, b = w - lr * X.T @ r / len(X), b - lr * r.mean(axis=0)
        losses.append(float(np.mean(batch_losses)))
    return w, b, losses


@pytest.mark.parametrize("steps", [1, 4, 1000])
@pytest.mark.parametrize("num_train", [100, 96])  # 100 % 8 = 4: a shorter last batch; 96: none
def test_every_batch_and_the_short_last_one_train_as_a_hand_written_loop(steps: int, num_train: int) -> None:
    def data() -> Any:
        return SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=num_train, num_val=20, batch_size=8,
                                       seed=6)

    w_ref, b_ref, losses = _sgd_reference(data(), 0.03, 3)
    net = d2l.LinearRegressionScratch(3, lr=0.03, seed=0)
    trainer = d2l.Trainer(max_epochs=3, steps_per_execution=steps, progress=False)
    trainer.fit(net, data())
    assert trainer.train_batch_idx == 3 * -(-num_train // 8)
    assert ("train_tail" in trainer._step.compiled.fns) == (num_train % 8 != 0)
    np.testing.assert_allclose(net.get_w_b()[0], w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.get_w_b()[1], b_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trainer.history.train_loss, losses, rtol=1e-5)
    assert trainer.val_batch_idx == 3 * 3 and len(trainer.history.val_loss) == 3  # 20 = 8 + 8 + 4


class NumpyLossModel(d2l.LinearRegressionScratch):
    """A loss that calls NumPy through ``tf.numpy_function``: an op XLA has no kernel for."""

    def loss(self, y_hat: Any, y: Any) -> Any:
        l = super().loss(y_hat, y)
        zero = tf.numpy_function(lambda v: np.zeros((), np.float32), [l], tf.float32)
        return l + tf.stop_gradient(tf.reshape(zero, []))


def _fit_numpy_loss(jit: Any, steps: int, loader: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from d2lx.backends.tensorflow.step import TFStep

    data: Any = ArrayData(*_arrays(), batch_size=7, seed=3)
    data = data if loader == "array" else _NumpyBatches(data, seed=3)
    net = NumpyLossModel(3, lr=0.03, seed=1)
    at_fallback: list[Any] = []
    original = TFStep._fall_back

    def spy(self: Any, compiled: Any, *args: Any) -> Any:  # the state when XLA's error arrives
        at_fallback.append((self.model.get_w_b(), int(self.trainer.train_batch_idx), compiled.jit))
        return original(self, compiled, *args)

    monkeypatch.setattr(TFStep, "_fall_back", spy)
    trainer = d2l.Trainer(max_epochs=2, steps_per_execution=steps, jit_compile=jit, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(net, data)
        finally:
            monkeypatch.undo()
    return trainer, net, [w for w in caught if issubclass(w.category, UserWarning)], at_fallback


def _arrays() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    X, X_val = rng.standard_normal((100, 3)), rng.standard_normal((30, 3))
    w = np.array([[2.0], [-3.4], [0.5]])
    return X, X @ w + 4.2, X_val, X_val @ w + 4.2


@pytest.mark.parametrize(("steps", "loader"), [(1, "array"), (4, "array"), (1, "numpy")])
def test_auto_falls_back_to_the_plain_graph_where_xla_cannot_compile_the_step(
        steps: int, loader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    w0, b0 = NumpyLossModel(3, lr=0.03, seed=1).get_w_b()
    plain, plain_net, plain_warnings, plain_spied = _fit_numpy_loss(False, steps, loader, monkeypatch)
    assert plain_warnings == [] and plain_spied == []
    auto, auto_net, auto_warnings, spied = _fit_numpy_loss("auto", steps, loader, monkeypatch)
    assert len(auto_warnings) == 1, [str(w.message) for w in auto_warnings]
    message = str(auto_warnings[0].message)
    assert "XLA has no kernel for PyFunc" in message and "jit_compile=False" in message
    # XLA failed on the fit's first call, before it ran: nothing had changed yet.
    assert len(spied) == 1
    (w_seen, b_seen), batch_idx, was_jit = spied[0]
    assert was_jit and batch_idx == 0
    np.testing.assert_array_equal(w_seen, w0)
    np.testing.assert_array_equal(b_seen, b0)
    # The rest of the fit ran the plain graph: the same run as jit_compile=False.
    np.testing.assert_array_equal(auto_net.get_w_b()[0], plain_net.get_w_b()[0])
    np.testing.assert_array_equal(auto_net.get_w_b()[1], plain_net.get_w_b()[1])
    np.testing.assert_array_equal(auto.history.train_loss, plain.history.train_loss)
    np.testing.assert_array_equal(auto.history.val_loss, plain.history.val_loss)
    assert auto.trace_counts["train"] == 2 and plain.trace_counts["train"] == 1  # XLA's trace, then plain
    assert not np.array_equal(auto_net.get_w_b()[0], w0)


def test_jit_compile_true_raises_xlas_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="PyFunc") as info:
        _fit_numpy_loss(True, 1, "array", monkeypatch)
    assert "jit_compile='auto' or False" in "".join(getattr(info.value, "__notes__", []))


def test_a_cached_step_that_fell_back_is_reused_plain_and_warns_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def loss(self: Any, y_hat: Any, y: Any) -> Any:  # on d2lx's own class: its steps are cached
        zero = tf.numpy_function(lambda v: np.zeros((), np.float32), [y_hat], tf.float32)
        return tf.reduce_mean((y_hat - y) ** 2 / 2) + tf.stop_gradient(tf.reshape(zero, []))

    monkeypatch.setattr(d2l.LinearRegressionScratch, "loss", loss)
    runs = []
    for _ in range(2):
        trainer = d2l.Trainer(max_epochs=2, gradient_clip_val=90.0, progress=False)  # a structure of its own
        net = d2l.LinearRegressionScratch(2, lr=0.03)
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=20, batch_size=8)
        with pytest.warns(UserWarning, match="XLA has no kernel for PyFunc"):
            trainer.fit(net, data)
        runs.append((trainer, net.get_w_b()))
    (first, (w1, b1)), (second, (w2, b2)) = runs
    assert not first.compile_cache_hit and second.compile_cache_hit
    assert set(second.trace_counts.values()) == {0} and not second._step.compiled.jit
    np.testing.assert_array_equal(w2, w1)
    np.testing.assert_array_equal(b2, b1)


class _TFData(d2lx.DataModule):
    """A reader's data module whose loaders are ``tf.data`` pipelines (made afresh per data module)."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        X, y, X_val, y_val = (a.astype(np.float32) for a in _arrays())
        self.batch_size = batch_size
        self.loaders = (tf.data.Dataset.from_tensor_slices((X, y)).shuffle(100, seed=4).batch(batch_size),
                        tf.data.Dataset.from_tensor_slices((X_val, y_val)).batch(batch_size))

    def get_dataloader(self, train: bool) -> Any:
        return self.loaders[0 if train else 1]


_TF_DATA_FIT = """
import numpy as np, tensorflow as tf, d2lx, d2lx.tensorflow as d2l
from tests.backends.test_tensorflow_trainer import _TFData
trainer = d2l.Trainer(max_epochs=3, gradient_clip_val=95.0, progress=False)
net = d2l.LinearRegression(lr=0.03, seed=2)
trainer.fit(net, _TFData())
w, b = net.get_w_b()
print({"w": w.ravel().tolist(), "b": b.tolist(), "loss": list(trainer.history.train_loss),
       "val": list(trainer.history.val_loss), "traces": trainer.trace_counts})
"""


def test_a_second_fit_over_a_tf_data_loader_reuses_the_compiled_step_and_equals_a_fresh_process() -> None:
    import ast
    import pathlib

    fits = []
    for _ in range(2):
        trainer = d2l.Trainer(max_epochs=3, gradient_clip_val=95.0, progress=False)  # a structure of its own
        net = d2l.LinearRegression(lr=0.03, seed=2)
        trainer.fit(net, _TFData())
        fits.append((trainer, net))
    (first, net1), (second, net2) = fits
    assert not first.compile_cache_hit and first.trace_counts == {"train": 1, "val": 1}
    assert second.compile_cache_hit and second.trace_counts == {"train": 0, "val": 0}
    assert second._step.functions["train"] is first._step.functions["train"]
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "D2LX_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-c", _TF_DATA_FIT], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300, check=True)
    fresh = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert fresh["traces"] == {"train": 1, "val": 1}
    w2, b2 = net2.get_w_b()
    np.testing.assert_allclose(w2.ravel(), fresh["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b2, fresh["b"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(second.history.train_loss, fresh["loss"], rtol=1e-6)
    np.testing.assert_allclose(second.history.val_loss, fresh["val"], rtol=1e-6)
    np.testing.assert_array_equal(w2, net1.get_w_b()[0])  # and the first fit, in this process


def test_a_batch_that_does_not_match_the_traced_signature_is_refused_not_run() -> None:
    X, y, _, _ = (a.astype(np.float32) for a in _arrays())
    batches = [(X[:8], y[:8]), (X[8:16], y[8:16, 0])]  # the second y lost its column: (8,) not (8, 1)

    class Ragged(d2lx.DataModule):
        batch_size = 8

        def get_dataloader(self, train: bool) -> Any:
            return batches if train else None

    net = d2l.LinearRegressionScratch(3, lr=0.03)
    with pytest.raises((TypeError, ValueError)):
        d2l.Trainer(max_epochs=1, progress=False).fit(net, Ragged())
