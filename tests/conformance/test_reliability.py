"""Conformance: bad inputs and faults get one clear d2lx error, or a correct result (issue 15).

Each case of the reliability probe, on the active backend: data d2lx cannot
train on is refused before any framework sees it, an update that overflows
float32 never lands, a checkpoint of another experiment is not resumed, and
files that cannot be written fail before training (or after it, without
losing the result).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import d2lx
from d2lx import outputs
from d2lx.checkpoint import ModelCheckpoint
from d2lx.data import ArrayData, DataModule, SyntheticRegressionData
from d2lx.module import ModuleBase


def _cli(backend: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "D2LX_BACKEND": backend, "CI": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "d2lx", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False, cwd=cwd)


def _one_error_line(out: subprocess.CompletedProcess[str], words: str) -> None:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("d2lx: error: ") and words in lines[0], out.stderr


# -- data ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda: ArrayData(np.zeros((64, 0)), np.zeros((64, 1))), d2lx.ShapeMismatchError, "no features"),
    (lambda: ArrayData(np.ones((8, 2)) * (1 + 2j), np.ones(8)), d2lx.ArgumentTypeError, "complex numbers"),
    (lambda: ArrayData(np.array([[1, "a"], [2, "b"]], dtype=object), np.ones(2)), d2lx.ArgumentTypeError,
     "must hold numbers"),
    (lambda: ArrayData(np.ones((8, 2)), np.ones(8), np.ones((4, 3)), np.ones(4)), d2lx.ShapeMismatchError,
     "validation X has 3 features but training X has 2"),
    (lambda: SyntheticRegressionData(w=np.ones((2, 2)), b=1.0), d2lx.ShapeMismatchError,
     "w must be a vector"),
    (lambda: SyntheticRegressionData(w="abc", b=1.0), d2lx.ArgumentTypeError, "w must hold numbers"),
    (lambda: SyntheticRegressionData(w=None, b=1.0), d2lx.ArgumentTypeError, "w is None"),
    (lambda: SyntheticRegressionData(w=[1e39], b=1.0), d2lx.InvalidArgumentError, "w has 1 value"),
    (lambda: SyntheticRegressionData(w=[1.0], b=1.0, num_train=10**12), d2lx.InvalidArgumentError,
     "GiB to generate"),
])
def test_data_d2lx_cannot_train_on_is_refused_up_front(make: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        make()


def test_a_zero_width_array_from_a_data_module_is_refused_before_the_framework(d2l: Any) -> None:
    class NoFeatures(DataModule):
        batch_size = 8

        def get_dataloader(self, train: bool) -> Any:
            return self.get_tensorloader((np.zeros((64, 0)), np.zeros((64, 1))), train)

    with pytest.raises(d2lx.ShapeMismatchError, match="no features to learn from"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegression(lr=0.1), NoFeatures())


def test_a_validation_set_of_another_width_is_refused_before_training(d2l: Any) -> None:
    class Mismatched(DataModule):
        batch_size = 8

        def get_dataloader(self, train: bool) -> Any:
            X = np.ones((16, 2 if train else 3), np.float32)
            return self.get_tensorloader((X, np.ones((16, 1), np.float32)), train)

    with pytest.raises(d2lx.ShapeMismatchError, match=r"validation array 0 has rows of shape \(3,\)"):
        d2l.Trainer(max_epochs=1, progress=False).fit(d2l.LinearRegression(lr=0.1), Mismatched())


# -- models and trainers ------------------------------------------------------------------------
def test_weights_and_gradients_before_fit_are_a_not_fitted_error(d2l: Any) -> None:
    with pytest.raises(d2lx.NotFittedError, match=r"call trainer\.fit"):
        d2l.LinearRegression(lr=0.1).get_w_b()
    with pytest.raises(d2lx.NotFittedError, match="no training step has been applied"):
        d2l.LinearRegressionScratch(2, lr=0.1).get_grads()


def test_fitting_something_that_is_not_a_d2lx_module_says_what_to_subclass(d2l: Any, backend_name: str
                                                                           ) -> None:
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=16, batch_size=8)
    fix = (rf"the {backend_name} Trainer trains d2lx \w+ modules, got object; subclass d2l\.Module \(an? "
           rf"[\w.]+.*\) of `from d2lx import {backend_name} as d2l` for your model")
    with pytest.raises(d2lx.ArgumentTypeError, match=fix):
        d2l.Trainer(max_epochs=1, progress=False).fit(object(), data)

    class FrameworkFree(ModuleBase):  # d2lx's core Module, not this backend's
        pass

    with pytest.raises(d2lx.ArgumentTypeError, match=fix.replace("got object", "got FrameworkFree")):
        d2l.Trainer(max_epochs=1, progress=False).fit(FrameworkFree(), data)


def test_a_huber_sigma_without_the_huber_loss_is_refused(d2l: Any) -> None:
    with pytest.raises(d2lx.InvalidArgumentError, match="pass loss='huber' too, or drop huber_sigma"):
        d2l.LinearRegression(lr=0.1, huber_sigma=2.0)
    with pytest.raises(d2lx.InvalidArgumentError, match="pass loss='huber' too, or drop huber_sigma"):
        d2l.LinearRegressionScratch(2, lr=0.1, huber_sigma=2.0)
    assert d2l.LinearRegression(lr=0.1, loss="huber").hparams["huber_sigma"] == 1.0  # the default


def test_learning_rates_beyond_float32_are_refused(d2l: Any) -> None:
    with pytest.raises(d2lx.InvalidArgumentError, match="beyond float32's range"):
        d2l.LinearRegressionScratch(2, lr=1e39)
    with pytest.raises(d2lx.InvalidArgumentError, match="beyond float32's range"):
        d2l.LinearRegression(lr=1e39)


@pytest.mark.parametrize("model", ["scratch", "concise"])
@pytest.mark.parametrize("num_train", [32, 320])  # the overflowing update is the epoch's last, or not
def test_an_update_that_overflows_float32_never_lands(d2l: Any, model: str, num_train: int) -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=num_train, num_val=0, batch_size=32)
    net = d2l.LinearRegressionScratch(2, lr=1e38) if model == "scratch" else d2l.LinearRegression(lr=1e38)
    with pytest.raises(d2lx.DivergenceError, match="NaN or inf") as info:
        d2l.Trainer(max_epochs=2, progress=False).fit(net, data)
    w, b = net.get_w_b()
    assert np.isfinite(w).all() and np.isfinite(b).all()
    assert info.value.epoch == 0 and "Lower the learning rate" in str(info.value)


def test_an_overflowing_update_on_the_command_line_is_an_error_not_a_result(backend_name: str) -> None:
    out = _cli(backend_name, "fit", "--lr", "1e38", "--num-train", "32", "--batch-size", "32",
               "--epochs", "1", "--json")
    _one_error_line(out, "training diverged")
    assert out.stdout == ""  # no JSON with inf weights


def test_a_validation_loss_that_overflows_is_an_error(d2l: Any) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 2)), rng.standard_normal((32, 1))
    data = ArrayData(X, y, X_val=np.full((8, 2), 1e30), y_val=np.zeros((8, 1)), batch_size=16)
    with pytest.raises(d2lx.DivergenceError, match="the validation loss after epoch 0"):
        d2l.Trainer(max_epochs=2, progress=False).fit(d2l.LinearRegression(lr=0.01), data)


# -- resuming -----------------------------------------------------------------------------------
def _checkpointed(d2l: Any, path: Path, **data_args: Any) -> None:
    args = {"w": [2, -3.4], "b": 4.2, "num_train": 64, "num_val": 16, "batch_size": 16, "seed": 1,
            **data_args}
    d2l.Trainer(max_epochs=2, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        d2l.LinearRegression(lr=0.03), SyntheticRegressionData(**args))


@pytest.mark.parametrize(("change", "words"), [
    ({"seed": 2}, "data seed: 1 in the checkpoint, 2 now"),
    ({"batch_size": 32}, "data batch_size: 16 in the checkpoint, 32 now"),
    ({"num_train": 48}, "data num_train: 64 in the checkpoint, 48 now"),
    ({"lr": 0.1}, "model lr: 0.03 in the checkpoint, 0.1 now"),
    ({"max_epochs": 1}, "has finished 2 epochs but this trainer stops at max_epochs=1"),
])
def test_resuming_another_experiment_is_refused_naming_the_difference(d2l: Any, tmp_path: Path,
                                                                      change: dict, words: str) -> None:
    path = tmp_path / "run.safetensors"
    _checkpointed(d2l, path)
    lr = change.pop("lr", 0.03)
    epochs = change.pop("max_epochs", 4)
    args = {"w": [2, -3.4], "b": 4.2, "num_train": 64, "num_val": 16, "batch_size": 16, "seed": 1, **change}
    with pytest.raises(d2lx.CheckpointError, match=words):
        d2l.Trainer(max_epochs=epochs, progress=False).fit(d2l.LinearRegression(lr=lr),
                                                          SyntheticRegressionData(**args), ckpt_path=path)


def test_continuing_to_more_epochs_is_allowed_and_reported(d2l: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    _checkpointed(d2l, path)
    trainer = d2l.Trainer(max_epochs=5, progress=False)
    history = trainer.fit(d2l.LinearRegression(lr=0.03), SyntheticRegressionData(
        w=[2, -3.4], b=4.2, num_train=64, num_val=16, batch_size=16, seed=1), ckpt_path=path)
    assert trainer.resumed == {"path": str(path), "epoch": 2, "planned_epochs": 2, "max_epochs": 5}
    assert history.epoch == [0, 1, 2, 3, 4]


def test_two_writers_to_one_checkpoint_path_are_refused(d2l: Any, tmp_path: Path) -> None:
    path = tmp_path / "shared.safetensors"
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=16, num_val=0, batch_size=8)
    refused: list[str] = []

    def second_run(trainer: Any) -> None:  # starts while the first run (which owns the path) is on
        try:
            d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
                d2l.LinearRegression(lr=0.1), data)
        except d2lx.CheckpointError as exc:
            refused.append(str(exc))

    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path), second_run]).fit(
        d2l.LinearRegression(lr=0.1), data)
    assert refused and "another run is already writing checkpoints" in refused[0]
    # Once the first fit is over, the path is free: a later run (a re-run notebook cell) may use it.
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        d2l.LinearRegression(lr=0.1), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.safetensors"]  # no lock or temp left


def test_a_writer_cleans_up_what_a_killed_writer_left(d2l: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    (tmp_path / ".run.safetensors.abc123.tmp").write_bytes(b"half a checkpoint")  # a SIGKILLed save
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=16, num_val=0, batch_size=8)
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        d2l.LinearRegression(lr=0.1), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]


# -- files the run writes -------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "words"), [
    ("DIR", "is a directory; give a file name inside it"),
    ("loss", "has no image format; end it with one of .png"),
    ("afile/loss.png", "is not a directory"),
])
def test_a_plot_path_that_cannot_be_written_is_refused_before_training(
        backend_name: str, tmp_path: Path, target: str, words: str) -> None:
    (tmp_path / "DIR").mkdir()
    (tmp_path / "afile").write_text("x")
    out = _cli(backend_name, "fit", "--epochs", "1", "--plot", str(tmp_path / target), cwd=tmp_path)
    _one_error_line(out, words)
    assert out.stdout == ""  # refused before training, not after it
    assert not (tmp_path / "DIR.png").exists() and not (tmp_path / "loss.png").exists()


def test_a_plot_that_fails_after_training_keeps_the_result(d2l: Any, backend_name: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=16, batch_size=16)
    trainer = d2l.Trainer(max_epochs=2, progress=False, plot=tmp_path / "loss.png")

    def disk_full(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(d2lx.ProgressBoard, "save", disk_full)
    with pytest.raises(d2lx.OutputError, match=r"could not write the plot .* No space left on device"):
        trainer.fit(d2l.LinearRegression(lr=0.03), data)
    assert len(trainer.history) == 2 and np.isfinite(trainer.model.get_w_b()[0]).all()
    assert list(tmp_path.iterdir()) == []  # no 0-byte image, no temporary file


def test_the_command_line_prints_the_result_before_a_late_write_error(backend_name: str,
                                                                      tmp_path: Path) -> None:
    out = _cli(backend_name, "fit", "--epochs", "1", "--json", "--plot", "/proc/d2lx-plot.png")
    assert out.returncode == 2
    result = json.loads(out.stdout)  # the finished run is printed...
    assert result["epochs"] == 1 and result["output_error"]
    _one_error_line(out, "could not write the plot")  # ...then one line says what failed


def test_output_files_get_ordinary_permissions(d2l: Any, tmp_path: Path) -> None:
    data = SyntheticRegressionData(w=[1.0], b=0.0, num_train=16, num_val=0, batch_size=8)
    trainer = d2l.Trainer(max_epochs=1, progress=False, plot=tmp_path / "p.png")
    trainer.fit(d2l.LinearRegression(lr=0.1), data)
    saved = trainer.save_checkpoint(tmp_path / "c.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    for path in (saved, tmp_path / "p.png"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["fit", "--huber-sigma", "2"], "--huber-sigma sets the Huber loss's sigma; add --loss huber"),
    (["fit", "--num-train", "1e10"], "GiB to generate"),
    (["fit", "--num-train", "1e20"], "GiB to generate"),
    (["fit", "--num-train", "1.5"], "expected a whole number"),
    (["sweep", "lr", "--values", "-1,0.1"], "grid values must be positive, got '-1'"),
    (["fit", "--epochs", "0"], "must be >= 1"),
    (["fit", "--nope"], "unrecognized arguments: --nope"),
])
def test_command_line_mistakes_are_one_line(backend_name: str, tmp_path: Path, args: list[str],
                                            words: str) -> None:
    _one_error_line(_cli(backend_name, *args, cwd=tmp_path), words)


def test_fit_help_shows_the_defaults(backend_name: str) -> None:
    out = _cli(backend_name, "fit", "--help")
    assert out.returncode == 0 and "(default: 0.03)" in out.stdout and "(default: 32)" in out.stdout


def test_too_many_devices_name_the_right_fix(backend_name: str) -> None:
    out = _cli(backend_name, "fit", "--devices", "3", "--epochs", "1")
    if backend_name == "jax":
        _one_error_line(out, "--xla_force_host_platform_device_count=3")
    elif backend_name == "torch":
        cores = os.cpu_count() or 1
        if cores < 3:
            _one_error_line(out, f"has {cores} cores")
    else:
        assert out.returncode == 0, out.stderr  # logical CPUs / contexts: three are fine


def test_a_failing_torch_data_parallel_run_is_one_line(backend_name: str) -> None:
    if backend_name != "torch":
        pytest.skip("torch data parallelism runs one process per device (torchrun)")
    out = _cli("torch", "fit", "--devices", "2", "--batch-size", "1", "--num-train", "5", "--epochs", "1")
    _one_error_line(out, "cannot be split across 2 devices")
    assert "Traceback" not in out.stderr


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    def half(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(d2lx.OutputError, match="No space left on device"):
        outputs.atomic_write(tmp_path / "x.bin", half, "thing")
    assert list(tmp_path.iterdir()) == []
