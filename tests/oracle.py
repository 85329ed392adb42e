"""A float64 NumPy oracle of d2lx's two models under minibatch SGD (test helper).

Closed-form gradients, no framework, no autodiff. It is fed exactly what d2lx
hands a backend: the data module's arrays, the shuffling order drawn from the
same seeded stream, and the same initial parameters. A backend that matches it
after every epoch (float32 tolerance) runs *the* experiment, not a variant.
"""

from __future__ import annotations

import numpy as np

from d2lx.seeding import generator, initial_linear_params


def sgd_oracle(
    X: np.ndarray,
    y: np.ndarray,
    *,
    model: str,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    sigma: float = 0.01,
    loss: str = "squared",
    huber_sigma: float = 1.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``(w, b)`` after each epoch; ``w`` is ``(n, 1)``, ``b`` is ``(1,)``.

    ``model="scratch"``: loss mean((y_hat - y)^2 / 2) (d2l 3.4).
    ``model="concise"``: loss mean((y_hat - y)^2), the MSE (d2l 3.5).
    ``loss="huber"`` (either model): the seed's formula (d2l 3.5.6, ex. 2),
    ``|r| - s/2`` if ``|r| > s`` else ``r^2 / (2 s)`` with ``s = huber_sigma``.
    """
    X = X.astype(np.float64)
    y = y.astype(np.float64).reshape(-1, 1)
    w0, b0 = initial_linear_params(generator("params", seed), X.shape[1], sigma)
    w, b = w0.astype(np.float64), b0.astype(np.float64)
    scale = 1.0 if model == "scratch" else 2.0  # d/dr of r^2/2 vs r^2
    shuffle = generator("shuffle", seed)
    out = []
    for _ in range(epochs):
        order = shuffle.permutation(len(X))
        for start in range(0, len(X), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = X[idx], y[idx]
            r = xb @ w + b - yb
            dl_dr = huber_grad(r, huber_sigma) if loss == "huber" else scale * r
            grad_w = xb.T @ dl_dr / len(idx)
            grad_b = dl_dr.mean(axis=0)
            w = w - lr * grad_w
            b = b - lr * grad_b
        out.append((w.copy(), b.copy()))
    return out


def huber(r: np.ndarray, sigma: float) -> np.ndarray:
    """The seed's Huber loss, elementwise (d2l 3.5.6, eq. 3.5.1)."""
    a = np.abs(r)
    return np.where(a > sigma, a - sigma / 2, r**2 / (2 * sigma))


def huber_grad(r: np.ndarray, sigma: float) -> np.ndarray:
    """d huber / d r, closed form."""
    return np.where(np.abs(r) > sigma, np.sign(r), r / sigma)


def grads_at(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, *, model: str,
             loss: str = "squared", huber_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form gradients of the batch-mean loss at (w, b)."""
    r = X.astype(np.float64) @ w + b - y.astype(np.float64).reshape(-1, 1)
    if loss == "huber":
        dl_dr = huber_grad(r, huber_sigma)
    else:
        dl_dr = r if model == "scratch" else 2 * r
    return X.T @ dl_dr / len(X), dl_dr.mean(axis=0)
