"""Argument checks and errors raised before any framework is touched."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import d2lx
from d2lx.data import SyntheticRegressionData
from d2lx.devices import DeviceSpec, parse_device, resolve_device, resolve_devices
from d2lx.validation import check_float, check_int


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_train": 0}, d2lx.InvalidArgumentError, "num_train must be >= 1"),
        ({"batch_size": 0}, d2lx.InvalidArgumentError, "batch_size must be >= 1"),
        ({"batch_size": 11, "num_train": 10}, d2lx.InvalidArgumentError, "larger than the training set"),
        ({"batch_size": "32"}, d2lx.ArgumentTypeError, "batch_size must be an integer"),
        ({"noise": -1.0}, d2lx.InvalidArgumentError, "noise must be >= 0"),
        ({"w": [1.0, float("nan")]}, d2lx.NonFiniteDataError, "non-finite"),
        ({"w": []}, d2lx.InvalidArgumentError, "w is empty"),
        ({"b": "4.2"}, d2lx.ArgumentTypeError, "b must be a real number"),
    ],
)
def test_synthetic_data_rejects_bad_arguments(kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    args = {"w": [2.0, -3.4], "b": 4.2, **kwargs}
    with pytest.raises(error, match=words):
        SyntheticRegressionData(**args)


def test_errors_are_d2lx_errors_and_builtin_kinds() -> None:
    with pytest.raises(d2lx.D2lxError):
        check_int("max_epochs", 0, minimum=1)
    with pytest.raises(TypeError):
        check_float("lr", "0.1")
    with pytest.raises(ValueError, match="lr must be > 0"):
        check_float("lr", -0.1, positive=True)
    with pytest.raises(ValueError, match="finite"):
        check_float("lr", float("inf"), positive=True)
    with pytest.raises(TypeError):
        check_int("max_epochs", True)
    assert check_float("lr", np.float32(0.5)) == 0.5


@given(st.integers(min_value=1, max_value=10_000))
def test_check_int_accepts_positive_ints(n: int) -> None:
    assert check_int("n", n, minimum=1) == n


@given(st.text(max_size=8))
def test_check_float_refuses_every_string(text: str) -> None:
    with pytest.raises(d2lx.ArgumentTypeError, match="must be a real number"):
        check_float("lr", text)


def test_device_parsing_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_device("gpu:1") == DeviceSpec("gpu", 1)
    assert parse_device("cuda") == DeviceSpec("gpu", 0)
    assert parse_device(" CPU ") == DeviceSpec("cpu", 0)
    for bad in ("tpu", "gpu:x", "cpu:3"):
        with pytest.raises(d2lx.InvalidArgumentError):
            parse_device(bad)
    monkeypatch.setenv("D2LX_DEVICE", "gpu:2")
    assert resolve_device() == DeviceSpec("gpu", 2)
    assert resolve_device("cpu") == DeviceSpec("cpu", 0)  # argument beats the env var
    assert resolve_device(num_gpus=1) == DeviceSpec("gpu", 0)  # num_gpus beats the env var
    monkeypatch.delenv("D2LX_DEVICE")
    assert resolve_device() == DeviceSpec("cpu", 0)
    with pytest.raises(d2lx.InvalidArgumentError, match="contradicts"):
        resolve_device("cpu", num_gpus=1)
    specs, strategy = resolve_devices(num_gpus=2)
    assert specs == [DeviceSpec("gpu", 0), DeviceSpec("gpu", 1)] and strategy == "data_parallel"
    specs, strategy = resolve_devices("cpu", devices=2)
    assert specs == [DeviceSpec("cpu", 0), DeviceSpec("cpu", 1)] and strategy == "data_parallel"
    assert resolve_devices("gpu:1") == ([DeviceSpec("gpu", 1)], None)
    with pytest.raises(d2lx.InvalidArgumentError, match="unknown strategy"):
        resolve_devices(strategy="model_parallel")
    with pytest.raises(d2lx.InvalidArgumentError, match="contradicts"):
        resolve_devices(num_gpus=2, devices=3)


def test_shard_slices_cover_a_batch_exactly() -> None:
    from d2lx.sharding import shard_slices

    for length in range(0, 12):
        for parts in range(1, 5):
            slices = shard_slices(length, parts)
            sizes = [s.stop - s.start for s in slices]
            assert sum(sizes) == length and max(sizes) - min(sizes) <= 1
            assert [i for s in slices for i in range(s.start, s.stop)] == list(range(length))
