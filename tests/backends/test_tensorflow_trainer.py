"""TensorFlow backend: tf.function tracing, fused steps, divergence guard, clipping, devices, state."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import d2lx  # noqa: E402
import d2lx.backends.tensorflow as d2l  # noqa: E402
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
def test_one_trace_per_run_not_per_epoch_or_short_batch(kind: str, steps: int) -> None:
    trainer, _, _ = _fit(kind, steps, epochs=4)
    assert trainer.trace_counts == {"train": 1, "val": 1}  # Python-side counter
    compiled = trainer._compiled
    train_fn = compiled.train_step if steps == 1 else compiled.train_many
    val_fn = compiled.val_step if steps == 1 else compiled.val_many
    assert train_fn.experimental_get_tracing_count() == 1  # TensorFlow's own count
    assert val_fn.experimental_get_tracing_count() == 1


def test_losses_stay_on_the_device_until_the_epoch_ends() -> None:
    trainer, _, _ = _fit("scratch", 1, epochs=1)
    values = trainer._train_meter.values
    assert len(values) == 15 and all(isinstance(v, tf.Tensor) for v in values)


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


def test_keras_optimizer_state_round_trips_and_rejects_a_foreign_state() -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=0, batch_size=10)
    trainer = d2l.Trainer(max_epochs=2, progress=False)
    trainer.fit(d2l.LinearRegression(lr=0.03), data)
    state = trainer._optimizer_state()
    iteration = [v for k, v in state.items() if k.endswith("iteration")]
    assert len(iteration) == 1 and int(iteration[0]) == 20
    fresh = d2l.Trainer(max_epochs=1, progress=False)
    fresh.model = d2l.LinearRegression(lr=0.03)
    fresh.model.materialize(2, "/CPU:0")
    fresh.optim = fresh.model.configure_optimizers()
    fresh._load_optimizer_state(state)
    assert int(fresh.optim.iterations.numpy()) == 20
    with pytest.raises(d2lx.CheckpointError, match="does not match"):
        fresh._load_optimizer_state({"0:adam/iteration": np.array(3)})
    scratch = d2l.Trainer(max_epochs=1, progress=False)
    scratch.fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    assert scratch._optimizer_state() == {}


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


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_d2l_eager_fit_epoch_written_for_tensorflow_matches_the_compiled_step(kind: str) -> None:
    """d2l's own TF ``fit_epoch`` (eager tape loop) still works and gives the compiled run's result."""

    class EagerTrainer(d2l.Trainer):
        def fit_epoch(self) -> None:  # d2l 1.0.3's TensorFlow Trainer.fit_epoch, verbatim in spirit
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
            for batch in self.val_dataloader:
                self.model.validation_step(self.prepare_batch(batch))
                self.val_batch_idx += 1

    runs = []
    for cls in (EagerTrainer, d2l.Trainer):
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=90, num_val=20, batch_size=8, seed=5)
        net = _model(kind, 2, 0.03, seed=5)
        history = cls(max_epochs=2, gradient_clip_val=1.0, progress=False).fit(net, data)
        runs.append((*net.get_w_b(), history.train_loss, history.val_loss))
    (w1, b1, t1, v1), (w2, b2, t2, v2) = runs
    np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t1, t2, rtol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)


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
