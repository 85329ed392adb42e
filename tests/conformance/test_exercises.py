"""Conformance: d2l 3.5.6 exercises as features (Huber loss, gradient access)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from oracle import grads_at, huber, sgd_oracle

import d2lx
from d2lx.data import ArrayData, SyntheticRegressionData
from d2lx.experiment import build_model
from d2lx.seeding import generator, initial_linear_params


@pytest.mark.parametrize("model", ["scratch", "concise"])
@pytest.mark.parametrize("huber_sigma", [0.5, 2.0])
def test_huber_training_matches_the_seed_formula_oracle(d2l: Any, model: str, huber_sigma: float) -> None:
    # Large noise makes residuals fall on both sides of sigma, so both branches are exercised.
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, noise=1.0, num_train=120, num_val=10,
                                   batch_size=16, seed=2)
    net = build_model(d2l, model, 2, 0.1, 2, loss="huber", huber_sigma=huber_sigma)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    trainer = d2l.Trainer(max_epochs=3, progress=False, callbacks=[lambda t: seen.append(t.model.get_w_b())])
    trainer.fit(net, data)
    expected = sgd_oracle(data.X[:120], data.y[:120], model=model, lr=0.1, batch_size=16, epochs=3,
                          seed=2, loss="huber", huber_sigma=huber_sigma)
    for (w, b), (w_ref, b_ref) in zip(seen, expected):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_huber_loss_value_is_the_seed_formula(d2l: Any, model: str) -> None:
    X = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    y = np.array([[0.1], [3.0], [-1.0], [3.2]], np.float32)  # residuals on both sides of sigma
    data = ArrayData(X, y, X_val=X, y_val=y, batch_size=4)
    net = build_model(d2l, model, 1, 1e-9, 0, loss="huber", huber_sigma=0.7)
    history = d2l.Trainer(max_epochs=1, progress=False).fit(net, data)
    w, b = net.get_w_b()
    expected = float(np.mean(huber(X.astype(np.float64) @ w + b - y, 0.7)))
    assert history.val_loss[0] == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_and_bad_sigma_are_refused(d2l: Any) -> None:
    with pytest.raises(d2lx.InvalidArgumentError, match="unknown loss 'l1'"):
        d2l.LinearRegression(lr=0.1, loss="l1")
    with pytest.raises(d2lx.InvalidArgumentError, match="huber_sigma must be > 0"):
        d2l.LinearRegressionScratch(2, lr=0.1, loss="huber", huber_sigma=0)


@pytest.mark.parametrize("model", ["scratch", "concise"])
@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_get_grads_returns_the_last_steps_closed_form_gradient(d2l: Any, model: str, loss: str) -> None:
    # One full batch per epoch: the only step's gradient is taken at the initial parameters.
    rng = np.random.default_rng(9)
    X = rng.standard_normal((24, 3)).astype(np.float32)
    y = (X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3 + rng.standard_normal((24, 1))).astype(np.float32)
    loss_args = {"loss": "huber", "huber_sigma": 0.8} if loss == "huber" else {}
    net = build_model(d2l, model, 3, 0.05, 5, **loss_args)
    d2l.Trainer(max_epochs=1, progress=False).fit(net, ArrayData(X, y, batch_size=24, seed=5))
    gw, gb = net.get_grads()
    w0, b0 = initial_linear_params(generator("params", 5), 3, 0.01)
    want_w, want_b = grads_at(X, y, w0.astype(np.float64), b0.astype(np.float64), model=model,
                              loss=loss, huber_sigma=0.8)
    assert gw.shape == (3, 1) and gb.shape == (1,) and gw.dtype == np.float32
    np.testing.assert_allclose(gw, want_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb, want_b, rtol=1e-4, atol=1e-6)
    # and the step really applied them: w1 = w0 - lr * g
    w1, _ = net.get_w_b()
    np.testing.assert_allclose(w1, w0 - 0.05 * want_w, rtol=1e-4, atol=1e-6)
