"""PyTorch: the hand-written loops (d2l 3.4/3.5 and an MLP without d2lx) and the reader's d2lx code.

PyTorch runs eagerly; the step is the textbook one: forward, loss,
``zero_grad``/``backward``/``step`` (``torch.optim.SGD``; ``p -= lr * p.grad``
for the scratch model). Losses stay tensors and are read once per epoch;
validation runs under ``torch.no_grad``.

Variant ``compiled`` wraps forward+loss in ``torch.compile``; it is only
timed when asked for (``D2LX_BENCH_TORCH_COMPILE=1``): on a CPU Inductor
gains nothing for these small layers and compiling every shape costs minutes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.loops import result

FRAMEWORK = "torch"


def framework_version() -> str:
    return str(torch.__version__)


def variants(kind: str) -> tuple[str, ...]:
    if os.environ.get("D2LX_BENCH_TORCH_COMPILE") and kind in ("concise", "mlp"):
        return ("eager", "compiled")
    return ("eager",)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def torch_device(device: str) -> torch.device:
    """The benchmark's ``"cpu"``/``"gpu"`` as a ``torch.device`` (GPU 0 is ``cuda:0``)."""
    return torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")


def gpu_name() -> str | None:
    """GPU 0's name, or ``None`` where torch sees no GPU."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def copier(X: np.ndarray, y: np.ndarray, device: str) -> Callable[[], None]:
    """One device-to-device copy of ``X`` and ``y`` (placed on ``device`` once), waited for.

    The GPU's counterpart of the NumPy copy: the fastest a pass over the
    data can go on that device (``copy_`` into buffers allocated once).
    """
    dev = torch_device(device)
    src = [_tensor(a).to(dev) for a in (X, y)]
    dst = [torch.empty_like(t) for t in src]

    def run() -> None:
        for d, s in zip(dst, src):
            d.copy_(s)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return run


def _linear(layer: nn.Linear, w: np.ndarray, b: np.ndarray) -> nn.Linear:
    """Set a ``nn.Linear`` from d2lx's layout (``w`` inputs x outputs; torch keeps it transposed)."""
    with torch.no_grad():
        layer.weight.copy_(_tensor(w.T))
        layer.bias.copy_(_tensor(b.reshape(-1)))
    return layer


def build_net(kind: str, init: Any) -> nn.Module:
    """The concise model's ``nn.Linear`` or the MLP's ``nn.Sequential``, from ``init``."""
    if kind == "mlp":
        d, h = init["W1"].shape
        return nn.Sequential(_linear(nn.Linear(d, h), init["W1"], init["b1"]), nn.ReLU(),
                             _linear(nn.Linear(h, 1), init["W2"], init["b2"]))
    return _linear(nn.Linear(init["w"].shape[0], 1), init["w"], init["b"])


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _params_of(kind: str, net: nn.Module | None, scratch: list[torch.Tensor]) -> dict[str, Any]:
    if kind == "scratch":
        return {"w": _host(scratch[0]), "b": _host(scratch[1])}
    if kind == "mlp":
        assert isinstance(net, nn.Sequential)
        return {"W1": _host(net[0].weight).T, "b1": _host(net[0].bias),
                "W2": _host(net[2].weight).T, "b2": _host(net[2].bias)}
    assert isinstance(net, nn.Linear)
    return {"w": _host(net.weight).T, "b": _host(net.bias)}


class _Model:
    """A fresh model of ``kind`` from ``init``: its training step and its validation loss."""

    def __init__(self, kind: str, init: Any, lr: float, variant: str, device: torch.device | None = None
                 ) -> None:
        device = device or torch.device("cpu")
        self.kind, self.lr, self.device = kind, lr, device
        self.scratch: list[torch.Tensor] = []
        self.net: nn.Module | None = None
        if kind == "scratch":
            self.scratch = [_tensor(init["w"]).to(device, copy=True).requires_grad_(True),
                            _tensor(init["b"]).to(device, copy=True).requires_grad_(True)]
            w, b = self.scratch
            self.loss: Callable[..., torch.Tensor] = lambda X, y: ((X @ w + b - y) ** 2 / 2).mean()
        else:
            net = self.net = build_net(kind, init).to(device)
            self.opt = torch.optim.SGD(net.parameters(), lr=lr)
            mse = nn.MSELoss()

            def loss(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return mse(net(X), y)

            self.loss = torch.compile(loss, dynamic=False) if variant == "compiled" else loss

    def step(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(X, y)
        if self.kind == "scratch":
            loss.backward()
            with torch.no_grad():
                for p in self.scratch:
                    p -= self.lr * p.grad
                    p.grad = None
        else:
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return loss.detach()

    def validate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        total, count = torch.zeros((), device=self.device), 0
        with torch.no_grad():
            for X, y in batches:
                total += self.loss(X, y) * len(y)
                count += len(y)
        return float(total) / count

    def params(self) -> dict[str, Any]:
        return _params_of(self.kind, self.net, self.scratch)


class ArrayLoop:
    """Arrays on the device once; per epoch one gather, slices as batches (see ``loops/__init__``)."""

    def __init__(self, kind: str, arrays: tuple[np.ndarray, ...], lr: float, batch_size: int, init: Any,
                 variant: str = "eager", device: str = "cpu") -> None:
        self.device = torch_device(device)
        self.X, self.y, self.X_val, self.y_val = (_tensor(a).to(self.device) for a in arrays)
        self.kind, self.lr, self.bs, self.init, self.variant = kind, lr, batch_size, init, variant

    def _val_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self.X_val), self.bs):
            yield self.X_val[s:s + self.bs], self.y_val[s:s + self.bs]

    def run(self, epochs: int, rng: np.random.Generator) -> dict[str, Any]:
        model = _Model(self.kind, self.init, self.lr, self.variant, self.device)
        n, bs = len(self.X), self.bs
        losses, val_losses = [], []
        for _ in range(epochs):
            idx = torch.from_numpy(rng.permutation(n)).to(self.device)
            Xe, ye = self.X.index_select(0, idx), self.y.index_select(0, idx)
            step_losses = [model.step(Xe[s:s + bs], ye[s:s + bs]) for s in range(0, n, bs)]
            losses.append(float(torch.stack(step_losses).mean()))
            val_losses.append(model.validate(self._val_batches()))
        return result(model.params(), losses, val_losses)


def make_loader(X: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """``DataLoader(TensorDataset(X, y))``, shuffled from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(_tensor(X), _tensor(y)), batch_size, shuffle=shuffle, generator=generator)


class LoaderLoop:
    """The concise model over the framework's own loaders (the user-loader path)."""

    def __init__(self, train: DataLoader, val: DataLoader, lr: float, init: Any,
                 variant: str = "eager") -> None:
        self.train, self.val, self.lr, self.init, self.variant = train, val, lr, init, variant

    def run(self, epochs: int) -> dict[str, Any]:
        model = _Model("concise", self.init, self.lr, self.variant)
        losses, val_losses = [], []
        for _ in range(epochs):
            step_losses = [model.step(X, y) for X, y in self.train]
            losses.append(float(torch.stack(step_losses).mean()))
            val_losses.append(model.validate(self.val))
        return result(model.params(), losses, val_losses)


# -- the d2lx side: what a reader writes --------------------------------------------------------
def d2lx_mlp(d2l: Any, init: Any, lr: float) -> Any:
    """A reader's MLP on ``d2lx.torch``: ``nn.Sequential`` of the framework's layers, MSE, SGD."""

    class MLP(d2l.Module):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = build_net("mlp", init)

        def loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.mse_loss(y_hat, y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return MLP(lr)
