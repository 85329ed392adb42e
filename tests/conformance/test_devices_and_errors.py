"""Conformance: devices, and one clear d2lx error for every kind of bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import gpu_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import d2lx
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData
from d2lx.experiment import run_fit


def test_cpu_device_is_accepted_everywhere(d2l: Any) -> None:
    trainer = d2l.Trainer(max_epochs=1, device="cpu", progress=False)
    assert str(trainer.device_spec) == "cpu"
    assert "cpu" in d2l.list_devices()


def test_gpu_requested_but_absent_is_a_clear_error(d2l: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    index = gpu_count(d2l)  # one past the last visible GPU: absent on every machine
    with pytest.raises(d2lx.DeviceUnavailableError, match="device='cpu'") as info:
        d2l.Trainer(max_epochs=1, device=f"gpu:{index}")
    assert f"gpu:{index}" in str(info.value)
    monkeypatch.setenv("D2LX_DEVICE", f"gpu:{index}")
    with pytest.raises(d2lx.DeviceUnavailableError):
        d2l.Trainer(max_epochs=1)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_gpu_run_matches_cpu_run(d2l: Any, backend_name: str, model: str) -> None:
    if gpu_count(d2l) == 0:
        pytest.skip(f"{backend_name} sees no GPU on this machine")
    cpu = run_fit(backend_name, model, device="cpu", progress=False)
    gpu = run_fit(backend_name, model, device="gpu", progress=False)
    assert gpu.device == "gpu:0"
    np.testing.assert_allclose(gpu.w, cpu.w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.b, cpu.b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_epochs": 0}, d2lx.InvalidArgumentError, "max_epochs must be >= 1"),
        ({"max_epochs": "3"}, d2lx.ArgumentTypeError, "max_epochs must be an integer"),
        ({"max_epochs": 1, "gradient_clip_val": -1}, d2lx.InvalidArgumentError, "gradient_clip_val"),
        ({"max_epochs": 1, "device": "tpu"}, d2lx.InvalidArgumentError, "unknown device"),
        ({"max_epochs": 1, "steps_per_execution": 0}, d2lx.InvalidArgumentError, "steps_per_execution"),
    ],
)
def test_trainer_rejects_bad_arguments(d2l: Any, kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        d2l.Trainer(**kwargs)


@pytest.mark.parametrize(
    ("lr", "error", "words"),
    [(0.0, d2lx.InvalidArgumentError, "lr must be > 0"), (-0.1, d2lx.InvalidArgumentError, "lr must be > 0"),
     ("0.03", d2lx.ArgumentTypeError, "lr must be a real number")],
)
def test_models_reject_bad_learning_rates(d2l: Any, lr: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        d2l.LinearRegressionScratch(2, lr=lr)
    with pytest.raises(error, match=words):
        d2l.LinearRegression(lr=lr)


def test_num_inputs_must_match_the_data_width(d2l: Any) -> None:
    data = SyntheticRegressionData(w=[2, -3.4, 1.0], b=4.2, num_train=64, batch_size=8)
    with pytest.raises(d2lx.ShapeMismatchError, match="num_inputs=2 but the data has 3 features"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegressionScratch(2, lr=0.03), data)
    with pytest.raises(d2lx.ArgumentTypeError, match="num_inputs must be an integer"):
        d2l.LinearRegressionScratch("2", lr=0.03)


class FlatTargets(DataModule):
    """A user data module that forgets to make y a column: (n,) instead of (n, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 8
        rng = np.random.default_rng(0)
        self.X = rng.standard_normal((32, 2)).astype(np.float32)
        self.y = (self.X @ np.array([2.0, -3.4])).astype(np.float32)

    def get_dataloader(self, train: bool):  # type: ignore[no-untyped-def]
        return self.get_tensorloader((self.X, self.y), train)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_one_dimensional_targets_are_refused_not_broadcast(d2l: Any, model: str) -> None:
    net = d2l.LinearRegressionScratch(2, lr=0.03) if model == "scratch" else d2l.LinearRegression(lr=0.03)
    with pytest.raises(d2lx.ShapeMismatchError, match=r"y has shape \(32,\)"):
        d2l.Trainer(max_epochs=1, progress=False).fit(net, FlatTargets())


def test_non_finite_data_is_refused_before_training(d2l: Any) -> None:
    X = np.ones((16, 2), np.float32)
    X[3, 1] = np.inf
    with pytest.raises(d2lx.NonFiniteDataError, match="non-finite"):
        ArrayData(X, np.ones((16, 1)), batch_size=4)

    class Sneaky(FlatTargets):
        def __init__(self) -> None:
            super().__init__()
            self.y = self.y.reshape(-1, 1)
            self.X[5, 0] = np.nan

    with pytest.raises(d2lx.NonFiniteDataError, match=r"first at index \(5, 0\)"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegressionScratch(2, lr=0.03), Sneaky())


def test_batch_larger_than_the_dataset_is_refused(d2l: Any) -> None:
    data = ArrayData(np.ones((10, 2)), np.ones((10, 1)), batch_size=11)
    with pytest.raises(d2lx.InvalidArgumentError, match="larger than the training set"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegressionScratch(2, lr=0.03), data)


def test_fit_refuses_something_that_is_not_a_data_module(d2l: Any) -> None:
    with pytest.raises(d2lx.ArgumentTypeError, match="DataModule"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegressionScratch(2, lr=0.03),
                                                      (np.ones((4, 2)), np.ones((4, 1))))


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_divergence_stops_at_once_and_keeps_finite_parameters(d2l: Any, model: str) -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=640, num_val=0, batch_size=16)
    net = d2l.LinearRegressionScratch(2, lr=60.0) if model == "scratch" else d2l.LinearRegression(lr=30.0)
    trainer = d2l.Trainer(max_epochs=20, progress=False)
    with pytest.raises(d2lx.DivergenceError) as info:
        trainer.fit(net, data)
    err = info.value
    assert f"epoch {err.epoch}, step {err.step}" in str(err) and "Lower the learning rate" in str(err)
    assert 0 < err.step < 20 * 40
    w, b = net.get_w_b()
    assert np.isfinite(w).all() and np.isfinite(b).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_inputs=st.integers(1, 6),
    num_train=st.integers(1, 40),
    batch_size=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_any_valid_shape_trains_and_any_invalid_batch_is_refused(
    d2l: Any, num_inputs: int, num_train: int, batch_size: int, seed: int
) -> None:
    w = np.linspace(-1, 1, num_inputs)
    if batch_size > num_train:
        with pytest.raises(d2lx.InvalidArgumentError, match="larger than the training set"):
            SyntheticRegressionData(w=w, b=0.5, num_train=num_train, num_val=3, batch_size=batch_size)
        return
    data = SyntheticRegressionData(w=w, b=0.5, num_train=num_train, num_val=3,
                                   batch_size=batch_size, seed=seed)
    net = d2l.LinearRegressionScratch(num_inputs, lr=0.01, seed=seed)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    history = trainer.fit(net, data)
    assert trainer.train_batch_idx == -(-num_train // batch_size)
    w_hat, b_hat = net.get_w_b()
    assert w_hat.shape == (num_inputs, 1) and b_hat.shape == (1,)
    assert np.isfinite(history.train_loss[0])
