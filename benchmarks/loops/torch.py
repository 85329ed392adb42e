"""The hand-written PyTorch loop (d2l 3.4/3.5 without d2lx), for ``d2lx bench``.

PyTorch runs eagerly; the step is the textbook one: forward, loss,
``zero_grad``/``backward``/``step`` (``torch.optim.SGD`` for the concise
model, ``p -= lr * p.grad`` for the scratch one). Losses stay on the device
and are read once per epoch.

Variant ``compiled`` wraps the model's forward+loss in ``torch.compile``; it
is only timed when asked for (``D2LX_BENCH_TORCH_COMPILE=1``): on a CPU a
two-weight linear layer gains nothing from Inductor, and compiling for every
sweep shape costs minutes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

FRAMEWORK = "torch"
VARIANTS: tuple[str, ...] = ("eager", "compiled") if os.environ.get("D2LX_BENCH_TORCH_COMPILE") else (
    "eager",)


def framework_version() -> str:
    return str(torch.__version__)


class Loop:
    def __init__(self, X: np.ndarray, y: np.ndarray, model: str, lr: float, batch_size: int,
                 variant: str = "eager") -> None:
        if model not in ("concise", "scratch"):
            raise ValueError(model)
        if variant not in ("eager", "compiled"):
            raise ValueError(variant)
        self.device = torch.device("cpu")
        self.X = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(self.device)
        self.y = torch.from_numpy(np.ascontiguousarray(y, np.float32)).to(self.device)
        self.n, self.d = X.shape
        self.model, self.lr, self.bs, self.variant = model, lr, batch_size, variant

    def _concise_loss(self, net: nn.Module) -> Any:
        mse = nn.MSELoss()

        def loss(Xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return mse(net(Xb), yb)

        return torch.compile(loss, dynamic=False) if self.variant == "compiled" else loss

    def run(self, epochs: int, w0: np.ndarray, b0: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        X, y, n, bs, lr = self.X, self.y, self.n, self.bs, self.lr
        losses: list[float] = []
        if self.model == "concise":
            net = nn.Linear(self.d, 1).to(self.device)
            with torch.no_grad():
                net.weight.copy_(torch.from_numpy(w0.reshape(1, -1)))
                net.bias.copy_(torch.from_numpy(b0.reshape(1)))
            opt = torch.optim.SGD(net.parameters(), lr=lr)
            loss_fn = self._concise_loss(net)
            for _ in range(epochs):
                idx = torch.from_numpy(rng.permutation(n)).to(self.device)
                Xe, ye = X.index_select(0, idx), y.index_select(0, idx)
                step_losses = []
                for s in range(0, n, bs):
                    loss = loss_fn(Xe[s:s + bs], ye[s:s + bs])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    step_losses.append(loss.detach())
                losses.append(float(torch.stack(step_losses).mean()))
            w = net.weight.detach().cpu().numpy().reshape(-1, 1)
            b = net.bias.detach().cpu().numpy().reshape(1)
        else:
            w = torch.from_numpy(w0.astype(np.float32).copy()).to(self.device).requires_grad_(True)
            b = torch.from_numpy(b0.astype(np.float32).copy()).to(self.device).requires_grad_(True)
            for _ in range(epochs):
                idx = torch.from_numpy(rng.permutation(n)).to(self.device)
                Xe, ye = X.index_select(0, idx), y.index_select(0, idx)
                step_losses = []
                for s in range(0, n, bs):
                    loss = ((torch.matmul(Xe[s:s + bs], w) + b - ye[s:s + bs]) ** 2 / 2).mean()
                    loss.backward()
                    with torch.no_grad():
                        w -= lr * w.grad
                        b -= lr * b.grad
                    w.grad = None
                    b.grad = None
                    step_losses.append(loss.detach())
                losses.append(float(torch.stack(step_losses).mean()))
            w, b = w.detach().cpu().numpy(), b.detach().cpu().numpy()
        return {"w": np.asarray(w, np.float32), "b": np.asarray(b, np.float32), "losses": losses}
