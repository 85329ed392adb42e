"""Conformance: checkpoints resume exactly, are atomic, and refuse bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import d2lx
from d2lx import checkpoint
from d2lx.checkpoint import ModelCheckpoint
from d2lx.data import SyntheticRegressionData
from d2lx.experiment import build_model


def _data(seed: int = 3) -> SyntheticRegressionData:
    return SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=200, num_val=50, batch_size=16, seed=seed)


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_resuming_after_epoch_one_equals_an_uninterrupted_run(d2l: Any, model: str, tmp_path: Path) -> None:
    straight = build_model(d2l, model, 2, 0.03, 3)
    d2l.Trainer(max_epochs=3, progress=False).fit(straight, _data())

    path = tmp_path / "run.npz"
    first = build_model(d2l, model, 2, 0.03, 3)
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(first, _data())
    ckpt = checkpoint.load(path)
    assert ckpt.epoch == 1 and ckpt.step == 13  # ceil(200 / 16) steps
    assert ckpt.meta["backend"] == d2l.BACKEND and ckpt.meta["model_hparams"]["lr"] == 0.03

    # A new process would build everything anew: fresh data object, fresh model.
    resumed = build_model(d2l, model, 2, 0.03, 3)
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    history = trainer.fit(resumed, _data(), ckpt_path=path)
    assert history.epoch == [0, 1, 2] and trainer.train_batch_idx == 3 * 13
    for got, want in zip(resumed.get_w_b(), straight.get_w_b()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_checkpoint_predictions_survive_a_reload(d2l: Any, tmp_path: Path) -> None:
    net = d2l.LinearRegression(lr=0.03)
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(net, _data())
    path = trainer.save_checkpoint(tmp_path / "c.npz")
    fresh = d2l.LinearRegression(lr=0.03, seed=99)
    ckpt = checkpoint.load(path)
    fresh.set_w_b(ckpt.params["w"], ckpt.params["b"])
    X = np.random.default_rng(0).standard_normal((7, 2)).astype(np.float32)
    np.testing.assert_allclose(fresh.predict(X), net.predict(X), rtol=1e-6, atol=1e-6)
    w, b = ckpt.params["w"], ckpt.params["b"]
    np.testing.assert_allclose(fresh.predict(X), X @ w + b, rtol=1e-5, atol=1e-5)


def test_a_save_killed_midway_leaves_the_old_checkpoint_intact(
    d2l: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    path = trainer.save_checkpoint(tmp_path / "c.npz")
    before = path.read_bytes()

    def dies_halfway(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
        Path(filename).write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00 half a file")
        raise KeyboardInterrupt  # the process is killed mid-write

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temp file left behind
    checkpoint.load(path)


def test_truncated_foreign_and_missing_files_are_refused(d2l: Any, tmp_path: Path) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    good = trainer.save_checkpoint(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(d2lx.CheckpointError, match="truncated or not a d2lx checkpoint"):
        checkpoint.load(truncated)
    with pytest.raises(d2lx.CheckpointError, match="not a d2lx checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(d2lx.CheckpointError, match="truncated or not a d2lx checkpoint"):
        checkpoint.load(garbage)
    with pytest.raises(d2lx.CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.npz")
    # The format is safetensors (issue #14): plain safetensors reads it, and d2lx reads it back.
    import safetensors.numpy

    plain = safetensors.numpy.load_file(good)
    assert plain["model/w"].shape == (2, 1) and checkpoint.load(good).step == 13


def test_resuming_into_another_kind_of_model_is_refused(d2l: Any, tmp_path: Path) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegressionScratch(2, lr=0.03), _data())
    path = trainer.save_checkpoint(tmp_path / "c.npz")
    with pytest.raises(d2lx.CheckpointError, match="holds a LinearRegressionScratch"):
        d2l.Trainer(max_epochs=2, progress=False).fit(d2l.LinearRegression(lr=0.03), _data(), ckpt_path=path)


def test_save_before_fit_is_a_clear_error(d2l: Any, tmp_path: Path) -> None:
    with pytest.raises(d2lx.InvalidArgumentError, match="call fit"):
        d2l.Trainer(max_epochs=1).save_checkpoint(tmp_path / "x.npz")


def test_foreign_optimizer_state_is_skipped_with_a_warning(d2l: Any, tmp_path: Path) -> None:
    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegression(lr=0.03), _data())
    path = trainer.save_checkpoint(tmp_path / "c.npz")
    ckpt = checkpoint.load(path)
    ckpt.meta["backend"] = "elsewhere"  # as if another framework wrote it
    ckpt.optimizer = {"0:momentum": np.ones((2, 1), np.float32)}
    checkpoint.save(path, ckpt)
    resumed = d2l.LinearRegression(lr=0.03)
    with pytest.warns(UserWarning, match="written by the elsewhere backend; its optimizer state"):
        d2l.Trainer(max_epochs=2, progress=False).fit(resumed, _data(), ckpt_path=path)
    assert np.isfinite(resumed.get_w_b()[0]).all()
