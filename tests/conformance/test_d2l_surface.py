"""Conformance: the d2l 1.0.3 surface of each backend namespace (issue 13).

A reader changes only the import line, so each namespace has the names of
d2l's module for that framework, meaning the same: the alias table at the end
of d2l's module, the device helpers, the chapter 2-3 utilities, ``Module``
with its board, ``DataModule`` as d2l writes it, and ``SyntheticRegressionData``
holding the framework's tensors.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import d2lx
from d2lx import data as core_data
from d2lx.loader import ArrayLoader, to_numpy

# The alias tables of d2l 1.0.3 (d2l/<framework>.py, "Alias defined in config.ini"): names only.
COMMON = ("nn_Module", "ones_like", "ones", "zeros_like", "zeros", "tensor", "arange", "meshgrid", "sin",
          "sinh", "cos", "cosh", "tanh", "linspace", "exp", "log", "matmul", "int32", "int64", "float32",
          "concat", "stack", "abs", "eye", "sigmoid", "numpy", "reshape", "reduce_sum", "argmax", "astype",
          "transpose", "reduce_mean", "expand_dims", "repeat")
ALIAS_NAMES = {
    "torch": (*COMMON, "normal", "rand", "randn", "batch_matmul", "size", "to", "swapaxes"),
    "jax": (*COMMON, "to", "swapaxes"),
    "tensorflow": (*COMMON, "normal", "rand", "batch_matmul", "size"),
    "mxnet": (*COMMON, "normal", "rand", "randn", "batch_matmul", "size", "to", "swapaxes"),
}
HELPERS = ("cpu", "gpu", "num_gpus", "try_gpu", "try_all_gpus", "use_svg_display", "set_figsize", "set_axes",
           "plot", "Timer", "ProgressBoard", "HyperParameters", "add_to_class", "Module", "DataModule",
           "Trainer", "SyntheticRegressionData", "LinearRegressionScratch", "LinearRegression", "SGD")
FRAMEWORKS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "mxnet": "mxnet"}


def test_the_three_import_spellings_give_one_module(backend_name: str) -> None:
    module = importlib.import_module(f"d2lx.{backend_name}")
    exec_globals: dict[str, Any] = {}
    exec(f"import d2lx.{backend_name} as d2l", exec_globals)
    exec(f"from d2lx import {backend_name} as d2l2", exec_globals)
    assert exec_globals["d2l"] is exec_globals["d2l2"] is module is getattr(d2lx, backend_name)
    assert module.BACKEND == backend_name and "Trainer" in module.__all__


def test_importing_a_namespace_imports_only_its_framework(backend_name: str) -> None:
    others = [fw for name, fw in FRAMEWORKS.items() if name != backend_name]
    code = (f"import sys, d2lx.{backend_name} as d2l; "
            f"print(sorted(m for m in {others!r} if m in sys.modules)); "
            f"print({FRAMEWORKS[backend_name]!r} in sys.modules)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["[]", "True"], out.stdout + out.stderr


def test_every_name_of_d2ls_module_is_there(d2l: Any, backend_name: str) -> None:
    missing = [n for n in (*ALIAS_NAMES[backend_name], *HELPERS) if not hasattr(d2l, n)]
    assert not missing
    if backend_name == "jax":
        key = d2l.get_key()
        assert key.shape == (2,) and not np.array_equal(np.asarray(key), np.asarray(d2l.get_key()))


def test_aliases_mean_what_they_mean_in_d2l(d2l: Any) -> None:
    t = d2l.tensor([[1.0, 2.0], [3.0, 4.0]])
    n = lambda x: np.asarray(to_numpy(x), dtype=np.float64)  # noqa: E731
    assert isinstance(d2l.numpy(t), np.ndarray) and n(d2l.numpy(t)).tolist() == [[1, 2], [3, 4]]
    assert float(n(d2l.reduce_sum(t))) == 10.0 and float(n(d2l.reduce_mean(t))) == 2.5
    assert n(d2l.reshape(t, (4,))).tolist() == [1, 2, 3, 4]
    assert n(d2l.matmul(t, t)).tolist() == [[7, 10], [15, 22]]
    assert n(d2l.transpose(t)).tolist() == [[1, 3], [2, 4]]
    assert n(d2l.concat((t, t), 0)).shape == (4, 2) and n(d2l.stack((t, t), 0)).shape == (2, 2, 2)
    assert n(d2l.expand_dims(t, 0)).shape == (1, 2, 2)
    assert n(d2l.argmax(t, 1)).tolist() == [1, 1]
    assert n(d2l.astype(d2l.tensor([1.7, -2.2]), d2l.int32)).tolist() == [1, -2]
    assert n(d2l.ones((2, 3))).sum() == 6 and n(d2l.zeros((2, 3))).sum() == 0
    assert n(d2l.ones_like(t)).sum() == 4 and n(d2l.zeros_like(t)).sum() == 0
    assert n(d2l.arange(5)).tolist() == [0, 1, 2, 3, 4] and n(d2l.eye(3)).trace() == 3
    assert n(d2l.linspace(0, 1, 5)).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    zero = d2l.tensor([0.0])
    assert n(d2l.sigmoid(zero)) == pytest.approx(0.5) and n(d2l.exp(zero)) == pytest.approx(1.0)
    assert n(d2l.log(d2l.exp(zero))) == pytest.approx(0.0) and n(d2l.abs(d2l.tensor([-3.0]))) == 3.0
    for f, at_zero in ((d2l.sin, 0.0), (d2l.cos, 1.0), (d2l.tanh, 0.0), (d2l.sinh, 0.0), (d2l.cosh, 1.0)):
        assert n(f(zero)) == pytest.approx(at_zero)
    if hasattr(d2l, "size"):
        assert int(d2l.size(t)) == 4


def test_device_helpers(d2l: Any) -> None:
    gpus = d2l.num_gpus()
    assert gpus == sum(1 for name in d2l.list_devices() if name.startswith("gpu"))
    if gpus == 0:
        assert str(d2l.try_gpu()) == str(d2l.cpu()) and len(d2l.try_all_gpus()) == 1
    else:
        assert len(d2l.try_all_gpus()) == gpus


def test_timer_and_the_plot_utilities(d2l: Any, tmp_path: Path) -> None:
    timer = d2l.Timer()
    timer.stop()
    timer.start()
    timer.stop()
    assert len(timer.times) == 2 and timer.sum() >= timer.avg() >= 0 and len(timer.cumsum()) == 2
    x = d2l.arange(0, 3, 0.1)
    d2l.plot(x, [d2l.sin(x), d2l.cos(x)], "x", "f(x)", legend=["sin", "cos"], figsize=(3, 2))
    axes = d2l.plt.gca()
    assert len(axes.lines) == 2 and axes.get_xlabel() == "x" and axes.get_legend() is not None
    d2l.plt.close("all")


def test_synthetic_data_holds_the_frameworks_tensors_with_the_seeded_numbers(d2l: Any) -> None:
    data = d2l.SyntheticRegressionData(w=d2l.tensor([2, -3.4]), b=4.2, seed=3)
    plain = core_data.SyntheticRegressionData(w=[2, -3.4], b=4.2, seed=3)
    kind = type(d2l.tensor([1.0]))
    for name in ("X", "y", "w"):
        value = getattr(data, name)
        package = type(value).__module__.split(".")[0]
        assert isinstance(value, kind) or package == kind.__module__.split(".")[0]
        np.testing.assert_array_equal(to_numpy(value), getattr(plain, name))
    assert data.b == 4.2 and data.num_train == 1000 and tuple(data.X.shape) == (2000, 2)
    X, y = next(iter(data.train_dataloader()))
    assert tuple(X.shape) == (32, 2) and tuple(y.shape) == (32, 1) and len(data.train_dataloader()) == 32


def test_a_data_module_without_super_init_works_as_in_d2l(d2l: Any) -> None:
    class Data(d2l.DataModule):  # d2l 3.7's Data: save_hyperparameters, never super().__init__()
        def __init__(self, num_train: int, num_val: int, num_inputs: int, batch_size: int) -> None:
            self.save_hyperparameters()
            rng = np.random.default_rng(0)
            self.X = rng.standard_normal((num_train + num_val, num_inputs)).astype(np.float32)
            self.y = (self.X @ np.full((num_inputs, 1), 0.01) + 0.05).astype(np.float32)

        def get_dataloader(self, train: bool) -> Any:
            i = slice(0, self.num_train) if train else slice(self.num_train, None)
            return self.get_tensorloader([self.X, self.y], train, i)

    data = Data(num_train=20, num_val=100, num_inputs=200, batch_size=5)
    loader = data.train_dataloader()
    assert isinstance(loader, ArrayLoader) and len(loader) == 4 and len(data.val_dataloader()) == 20
    trainer = d2l.Trainer(max_epochs=2, progress=False)
    history = trainer.fit(d2l.LinearRegressionScratch(200, lr=0.01), data)
    assert len(history) == 2 and trainer.train_batch_idx == 8 and np.isfinite(history.val_loss).all()


def test_progress_board_keeps_d2ls_drawing_rule(d2l: Any, tmp_path: Path) -> None:
    board = d2l.ProgressBoard("x", yscale="log", display=False)
    for i in range(10):
        board.draw(i, float(i + 1), "f", every_n=4)  # groups of 4 averaged; the last 2 points pending
    xs, ys = board.lines()["f"]
    assert xs.tolist() == [1.5, 5.5] and ys.tolist() == [2.5, 6.5]
    board.ylabel = "y"
    path = board.save(tmp_path / "board.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert board.figure().axes[0].get_yscale() == "log"


def test_a_fit_draws_d2ls_curves_on_the_models_board(d2l: Any, tmp_path: Path) -> None:
    data = d2l.SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=320, num_val=64, batch_size=32)
    model = d2l.LinearRegressionScratch(2, lr=0.03)
    model.board.yscale = "log"  # as d2l 3.7 does
    trainer = d2l.Trainer(max_epochs=3, progress=False, plot=tmp_path / "loss.png")
    trainer.fit(model, data)
    lines = model.board.lines()
    train_x, _ = lines["train_loss"]
    val_x, val_y = lines["val_loss"]
    assert model.board.xlim == [0, 3] and model.board.xlabel == "epoch"
    assert len(train_x) == 6 and val_x.tolist() == [1, 2, 3]  # 2 train points per epoch (d2l's default)
    assert train_x[0] == pytest.approx(np.mean(np.arange(5) / 10))  # mean position of the first 5 steps
    np.testing.assert_allclose(val_y, trainer.history.val_loss, rtol=1e-6)  # equal batches: same mean
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert model.board.figure().axes[0].get_yscale() == "log"


def test_a_step_that_plots_other_values_draws_them_too(d2l: Any, backend_name: str) -> None:
    if backend_name in ("jax", "tensorflow"):
        pytest.skip(f"{backend_name} traces its steps: only the loss leaves the compiled step")

    class Logged(d2l.LinearRegressionScratch):
        def validation_step(self, batch: Any) -> Any:
            loss = super().validation_step(batch)
            self.plot("twice", loss * 2, train=False)
            return loss

    model = Logged(2, lr=0.03)
    data = d2l.SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=32, batch_size=32)
    d2l.Trainer(max_epochs=2, progress=False).fit(model, data)
    lines = model.board.lines()
    assert "val_twice" in lines
    np.testing.assert_allclose(lines["val_twice"][1], 2 * lines["val_loss"][1], rtol=1e-6)
