"""Checkpoint files: every damaged or altered file is a CheckpointError, never a traceback.

Framework-free: the files are made with :func:`d2lx.checkpoint.save` from a
run description of the shape a trainer writes. A property test varies every
field of the description; a corruption test flips random bytes of a real
file (1,200 of them); neither may see anything but a ``CheckpointError`` or
a load that returns exactly what was saved.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import d2lx
from d2lx import checkpoint


def _meta(epochs: int = 2) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "backend": "torch", "model": "LinearRegression", "linear": True,
        "model_hparams": {"lr": 0.03, "sigma": 0.01, "huber_sigma": 1.0, "loss": "squared"},
        "data_hparams": {"noise": 0.01, "num_train": 100, "num_val": 10, "batch_size": 10},
        "trainer_hparams": {"max_epochs": epochs, "gradient_clip_val": 0.0},
        "epoch": epochs, "step": 10 * epochs, "val_step": epochs, "seed": 0,
        "shuffle_rng": rng.bit_generator.state,
        "history": {"epoch": list(range(epochs)), "train_loss": [1.0] * epochs,
                    "val_loss": [2.0] * epochs, "seconds": [0.1] * epochs},
    }


def _good(tmp_path: Path) -> Path:
    ckpt = checkpoint.Checkpoint(model={"w": np.arange(4, dtype=np.float32).reshape(4, 1),
                                        "b": np.ones(1, np.float32)},
                                 optimizer={"state.0.momentum": np.full((4, 1), 0.5, np.float32)},
                                 meta=_meta())
    return checkpoint.save(tmp_path / "good.safetensors", ckpt)


def test_a_checkpoint_round_trips_and_opens_with_plain_safetensors(tmp_path: Path) -> None:
    path = _good(tmp_path)
    loaded = checkpoint.load(path)
    assert loaded.epoch == 2 and loaded.step == 20 and loaded.meta["model"] == "LinearRegression"
    np.testing.assert_array_equal(loaded.model["w"], np.arange(4).reshape(4, 1))
    from safetensors.numpy import load_file

    plain = load_file(str(path))
    assert sorted(plain) == ["model/b", "model/w", "optimizer/state.0.momentum"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's permissions, not mkstemp's 0600


def test_random_byte_corruptions_are_refused_or_harmless(tmp_path: Path) -> None:
    path = _good(tmp_path)
    raw = path.read_bytes()
    reference = checkpoint.load(path)
    rng = np.random.default_rng(1)
    refused = loaded = 0
    for trial in range(1200):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):  # one to three damaged bytes
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if trial % 10 == 0:
            data = data[: int(rng.integers(len(data)))]  # and some truncations
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(bytes(data))
        try:
            got = checkpoint.load(bad)
        except d2lx.CheckpointError:
            refused += 1
            continue
        # Accepted: only if the damage hit bytes that carry nothing (the header's padding).
        loaded += 1
        assert got.meta == reference.meta
        for group in ("model", "optimizer", "rng"):
            a, b = getattr(got, group), getattr(reference, group)
            assert sorted(a) == sorted(b)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
    assert refused > 1000, (refused, loaded)


FIELDS = ["epoch", "step", "val_step", "backend", "model", "model_hparams", "data_hparams",
          "trainer_hparams", "history", "shuffle_rng"]
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                       st.text(max_size=8), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=4), st.integers(), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=ODD_VALUES, drop=st.booleans())
def test_any_altered_field_is_refused_or_loads_as_written(tmp_path: Path, field: str, value: Any,
                                                          drop: bool) -> None:
    meta = _meta()
    if drop:
        del meta[field]
    else:
        meta[field] = value
    path = checkpoint.save(tmp_path / "altered.safetensors",
                           checkpoint.Checkpoint(model={"w": np.zeros((2, 1), np.float32),
                                                        "b": np.zeros(1, np.float32)}, meta=meta))
    try:
        got = checkpoint.load(path)
    except d2lx.CheckpointError as exc:
        assert "d2lx checkpoint" in str(exc)
        return
    assert json.loads(json.dumps(got.meta)) == json.loads(json.dumps(checkpoint.jsonable(meta)))
    assert isinstance(got.epoch, int) and got.epoch >= 0 and got.step >= 0


def test_a_nan_parameter_is_reported_as_a_damaged_file_not_as_divergence(tmp_path: Path) -> None:
    model = {"w": np.array([[np.nan], [1.0]], np.float32), "b": np.zeros(1, np.float32)}
    ckpt = checkpoint.Checkpoint(model=model, meta=_meta())
    path = checkpoint.save(tmp_path / "nan.safetensors", ckpt)
    with pytest.raises(d2lx.CheckpointError, match=r"holds NaN or inf, which training never saves"):
        checkpoint.load(path)


def _v1(tmp_path: Path, **changes: Any) -> Path:
    """A checkpoint as d2lx 0.1 wrote it (an .npz with a JSON header)."""
    meta = _meta()
    meta.pop("val_step")
    meta.update(changes)
    arrays = {"__format__": np.array("d2lx-checkpoint"), "__version__": np.array(1),
              "__meta__": np.array(json.dumps(meta)), "param/w": np.ones((4, 1), np.float32),
              "param/b": np.zeros(1, np.float32)}
    path = tmp_path / "old.npz"
    np.savez(path, **arrays)
    return path


def test_an_old_npz_checkpoint_still_loads(tmp_path: Path) -> None:
    got = checkpoint.load(_v1(tmp_path))
    assert got.epoch == 2 and sorted(got.model) == ["b", "w"] and got.meta["val_step"] == 0


@pytest.mark.parametrize(("damage", "words"), [
    ("meta", "truncated or not a d2lx checkpoint"),
    ("version", "truncated or not a d2lx checkpoint"),
    ("epoch", "'epoch' is -5, not a count"),
    ("compression", "truncated or not a d2lx checkpoint"),
])
def test_a_damaged_old_checkpoint_is_refused(tmp_path: Path, damage: str, words: str) -> None:
    path = _v1(tmp_path, **({"epoch": -5} if damage == "epoch" else {}))
    if damage in ("meta", "version"):
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist()}
        if damage == "meta":
            del members["__meta__.npy"]
        else:
            buffer = io.BytesIO()
            np.save(buffer, np.array("one"))
            members["__version__.npy"] = buffer.getvalue()
        with zipfile.ZipFile(path, "w") as z:
            for name, content in members.items():
                z.writestr(name, content)
    if damage == "compression":
        raw = bytearray(path.read_bytes())
        central = raw.index(b"PK\x01\x02")  # the first member's central directory entry
        raw[central + 10] = 99  # its compression method: one zipfile does not know
        path.write_bytes(bytes(raw))
    with pytest.raises(d2lx.CheckpointError, match=words):
        checkpoint.load(path)
