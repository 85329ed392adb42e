"""Conformance: both models train, match the NumPy oracle, record history, reproduce.

Written once; nox runs it once per backend (``D2LX_BACKEND``). A new backend
passes this file unchanged or it is not done.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from oracle import sgd_oracle

from d2lx.data import SyntheticRegressionData
from d2lx.experiment import build_model, run_fit
from d2lx.seeding import generator, initial_linear_params

RTOL, ATOL = 1e-4, 2e-5  # float32 against a float64 oracle over ~100 steps


def _true_w(num_inputs: int) -> np.ndarray:
    return np.linspace(-2.0, 2.0, num_inputs) if num_inputs > 1 else np.array([2.0])


@pytest.mark.parametrize(("model", "bound"), [("scratch", 0.5), ("concise", 0.05)])
def test_seed_experiment_reaches_the_seeds_error_bounds(backend_name: str, model: str, bound: float) -> None:
    result = run_fit(backend_name, model, progress=False)
    assert result.backend == backend_name and result.steps == 3 * 32
    assert max(abs(e) for e in result.w_error) < bound
    assert abs(result.b_error) < bound
    assert result.train_loss < result.history["train_loss"][0]


CASES = [
    # model, seed, batch_size, num_inputs, num_train  (batch sizes that do and do not divide)
    ("scratch", 0, 32, 2, 1000),
    ("scratch", 1, 25, 1, 200),
    ("scratch", 2, 7, 64, 150),
    ("concise", 0, 32, 2, 1000),
    ("concise", 1, 20, 5, 200),
    ("concise", 3, 9, 64, 150),
]


@pytest.mark.parametrize(("model", "seed", "batch_size", "num_inputs", "num_train"), CASES)
def test_parameters_match_the_numpy_oracle_after_every_epoch(
    d2l: Any, model: str, seed: int, batch_size: int, num_inputs: int, num_train: int
) -> None:
    lr, epochs = 0.03, 3
    data = SyntheticRegressionData(w=_true_w(num_inputs), b=4.2, num_train=num_train, num_val=10,
                                   batch_size=batch_size, seed=seed)
    net = build_model(d2l, model, num_inputs, lr, seed)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    trainer = d2l.Trainer(max_epochs=epochs, progress=False,
                          callbacks=[lambda t: seen.append(t.model.get_w_b())])
    trainer.fit(net, data)
    expected = sgd_oracle(data.X[:num_train], data.y[:num_train], model=model, lr=lr,
                          batch_size=batch_size, epochs=epochs, seed=seed)
    assert len(seen) == epochs
    for epoch, ((w, b), (w_ref, b_ref)) in enumerate(zip(seen, expected)):
        assert w.shape == (num_inputs, 1) and b.shape == (1,)
        np.testing.assert_allclose(w, w_ref, rtol=RTOL, atol=ATOL, err_msg=f"w after epoch {epoch}")
        np.testing.assert_allclose(b, b_ref, rtol=RTOL, atol=ATOL, err_msg=f"b after epoch {epoch}")


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_history_holds_the_true_epoch_losses(d2l: Any, model: str) -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=300, num_val=100, batch_size=30)
    net = build_model(d2l, model, 2, 0.03, 0)
    trainer = d2l.Trainer(max_epochs=4, progress=False)
    history = trainer.fit(net, data)
    assert history is trainer.history and len(history) == 4
    assert history.epoch == [0, 1, 2, 3]
    assert all(np.isfinite(history.train_loss)) and history.train_loss[-1] < history.train_loss[0]
    # The last val loss is the loss of the final parameters on the validation set.
    w, b = net.get_w_b()
    r = data.X[300:].astype(np.float64) @ w + b - data.y[300:]
    expected = float(np.mean(r**2) / (2 if model == "scratch" else 1))
    assert history.val_loss[-1] == pytest.approx(expected, rel=1e-4)
    assert trainer.train_batch_idx == 4 * 10 and trainer.val_batch_idx == 4 * 4
    assert trainer.fit_seconds > 0


def test_no_validation_set_gives_nan_val_loss(d2l: Any) -> None:
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=64, num_val=0, batch_size=16)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    history = trainer.fit(d2l.LinearRegressionScratch(1, lr=0.1), data)
    assert np.isnan(history.val_loss[0]) and np.isfinite(history.train_loss[0])


def test_scratch_model_starts_from_the_core_draw(d2l: Any) -> None:
    net = d2l.LinearRegressionScratch(3, lr=0.03, sigma=0.5, seed=11)
    w, b = net.get_w_b()
    w_ref, b_ref = initial_linear_params(generator("params", 11), 3, 0.5)
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(b, b_ref)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_same_seed_same_weights_and_other_seed_differs(backend_name: str, model: str) -> None:
    a = run_fit(backend_name, model, seed=5, progress=False)
    b = run_fit(backend_name, model, seed=5, progress=False)
    c = run_fit(backend_name, model, seed=6, progress=False)
    assert a.w == b.w and a.b == b.b  # bitwise on the same device
    assert a.w != c.w


def test_plot_is_written_once_after_fit(d2l: Any, tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=100, num_val=50, batch_size=10)
    trainer = d2l.Trainer(max_epochs=2, progress=False, plot=path)
    trainer.fit(d2l.LinearRegression(lr=0.03), data)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
