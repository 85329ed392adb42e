"""Conformance on a GPU: a run on the GPU ends where the same run on the CPU ends.

Every test here needs a GPU the backend can see (the ``gpu_device``
fixture) and is skipped, with the reason, where there is none. Each one
trains the same experiment on ``"cpu"`` and on the GPU and compares the
two, so no number of a past run is written down here. Float32 runs on two
devices differ in how they round and order their sums; the tolerances below
allow that and nothing more: an untrained model, another seed's data or
another batch order is far outside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import gpu_count

from conformance import recipes
from d2lx import checkpoint
from d2lx.checkpoint import ModelCheckpoint
from d2lx.data import DataModule, SyntheticRegressionData
from d2lx.experiment import build_model, run_fit

# Parameters: float32 on two devices, as in test_devices_and_errors.test_gpu_run_matches_cpu_run.
RTOL, ATOL = 1e-4, 1e-5
# Losses are compared relatively, with no absolute slack: the seed runs end near the noise floor
# (val loss ~5e-5), where any absolute tolerance of float32 size would accept another run's losses.
LOSS_RTOL = 1e-3
# An MLP trained with Adam: ReLU kinks and Adam's division by sqrt(v) amplify the two devices' rounding
# differences (on the CPU, a 1e-5 relative change of the starting weights moves the end state by ~5e-5
# relative, a 3e-3 change by > 1e-2): 2e-3 allows 40x the first, and a run from another seed fails it.
MLP_RTOL, MLP_ATOL = 2e-3, 2e-4


@pytest.fixture
def gpu_device(d2l: Any, backend_name: str) -> str:
    """The first GPU in d2lx's spelling; skips the test where the backend sees none."""
    if gpu_count(d2l) == 0:
        pytest.skip(f"{backend_name} sees no GPU on this machine")
    return "gpu:0"


def _kind(device: str) -> str:
    """``"gpu:0"`` -> ``"gpu"``: the kind of device every array of the run must be on."""
    return device.partition(":")[0]


def _device_kind(backend: str, device: Any) -> str:
    """``"gpu"`` or ``"cpu"``: what kind of device a framework's device object is, in its own words."""
    if backend == "torch":  # torch.device
        return "gpu" if device.type == "cuda" else device.type
    if backend == "jax":  # jax.Device (platform "gpu", or "cuda" in some jaxlib builds)
        return "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
    if backend == "tensorflow":  # a device name ("/GPU:0", ".../device:GPU:0") or d2l's device scope
        import tensorflow as tf

        return tf.DeviceSpec.from_string(getattr(device, "name", device)).device_type.lower()
    return device.device_type  # mxnet.Context


def _array_kinds(backend: str, array: Any) -> set[str]:
    """The kinds of device ``array`` lives on, as its framework reports them."""
    if backend == "torch":
        return {_device_kind(backend, array.device)}
    if backend == "jax":
        return {_device_kind(backend, d) for d in array.devices()}
    if backend == "tensorflow":  # a tf.Tensor, or a Keras 3 Variable (its tf.Variable is .value)
        return {_device_kind(backend, array.device if hasattr(array, "device") else array.value.device)}
    return {_device_kind(backend, array.ctx)}


def _parameters(backend: str, trainer: Any) -> list[Any]:
    """The trained model's parameter arrays, where its framework keeps them."""
    if backend == "torch":
        return list(trainer.model.parameters())
    if backend == "jax":
        import jax

        return jax.tree_util.tree_leaves(trainer.state.params)  # JAX models keep them in the train state
    if backend == "tensorflow":
        return list(trainer.model.trainable_variables)
    return [p.data() for p in trainer.model.collect_params().values()]


def _assert_same_fit(got: Any, want: Any, what: str) -> None:
    """Two FitResults (``run_fit``) end at the same parameters and losses."""
    np.testing.assert_allclose(got.w, want.w, rtol=RTOL, atol=ATOL, err_msg=f"{what}: w")
    np.testing.assert_allclose(got.b, want.b, rtol=RTOL, atol=ATOL, err_msg=f"{what}: b")
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(got.history[key], want.history[key], rtol=LOSS_RTOL,
                                   err_msg=f"{what}: {key}")


def _assert_same_history(got: Any, want: Any, rtol: float = LOSS_RTOL) -> None:
    assert got.epoch == want.epoch
    np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=rtol, err_msg="train_loss")
    np.testing.assert_allclose(got.val_loss, want.val_loss, rtol=rtol, err_msg="val_loss")


class ReaderData(DataModule):
    """A reader's data module over host NumPy arrays (``recipes.regression_task``, 16 batches of 32).

    ``own=True``: ``get_dataloader`` returns the framework's own loader (a torch ``DataLoader``,
    ``tf.data``, a Gluon ``DataLoader``, a list of NumPy batches for JAX); ``own=False``: d2lx's
    device-resident loader, as d2l's ``get_tensorloader``.
    """

    def __init__(self, backend: str, own: bool, shuffle: bool = True) -> None:
        super().__init__(seed=0)
        self.backend, self.own, self.shuffle, self.batch_size = backend, own, shuffle, 32
        self.X, self.y, self.X_val, self.y_val = recipes.regression_task()

    def get_dataloader(self, train: bool) -> Any:
        X, y = (self.X, self.y) if train else (self.X_val, self.y_val)
        if self.own:
            return recipes.own_loader(self.backend, X, y, self.batch_size, shuffle=train and self.shuffle)
        return self.get_tensorloader((X, y), train)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_fused_steps_on_the_gpu_end_where_cpu_steps_end(d2l: Any, backend_name: str, gpu_device: str,
                                                        model: str) -> None:
    if "gpu" not in d2l.Trainer.fused_devices:
        pytest.skip(f"{backend_name} has no fused path on a GPU: steps_per_execution runs ordinary steps")
    cpu = run_fit(backend_name, model, device="cpu", progress=False)
    fused = run_fit(backend_name, model, device=gpu_device, steps_per_execution=8, progress=False)
    assert fused.device == gpu_device and cpu.device == "cpu"
    assert fused.steps == cpu.steps == 3 * 32  # 31 full batches of 32 and one of 8, per epoch
    _assert_same_fit(fused, cpu, f"{gpu_device}, 8 steps per call, against cpu step by step")


@pytest.mark.gpu
def test_a_readers_mlp_trains_on_the_gpu_as_on_the_cpu(d2l: Any, backend_name: str, gpu_device: str) -> None:
    # From scratch, on the same seed: the reader's layers start from the same weights on both devices
    # (torch's lazy layers are built on the CPU, from its generator, before the model moves).
    def fit(device: str) -> tuple[Any, Any, ReaderData]:
        recipes.seed_framework(backend_name, 0)
        trainer = d2l.Trainer(max_epochs=4, device=device, progress=False)
        data = ReaderData(backend_name, own=False)
        history = trainer.fit(recipes.mlp(d2l, lr=0.01), data)
        return trainer, history, data

    cpu, cpu_history, _ = fit("cpu")
    gpu, gpu_history, data = fit(gpu_device)
    assert gpu.train_batch_idx == cpu.train_batch_idx == 4 * 16
    assert gpu_history.val_loss[-1] < 0.2 * float(np.var(data.y_val)), gpu_history  # it learned
    _assert_same_history(gpu_history, cpu_history, rtol=MLP_RTOL)
    want, got = cpu.model_state(), gpu.model_state()
    assert sorted(got) == sorted(want) and want
    for name in want:
        assert isinstance(got[name], np.ndarray), name
        np.testing.assert_allclose(got[name], want[name], rtol=MLP_RTOL, atol=MLP_ATOL, err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("own", [False, True], ids=["d2lx-loader", "frameworks-loader"])
def test_the_training_step_gets_its_batches_on_the_gpu(d2l: Any, backend_name: str, gpu_device: str,
                                                       own: bool) -> None:
    seen: list[set[str]] = []  # the kinds of device of every batch array training_step received

    def record(array: Any) -> None:
        if backend_name == "jax":  # inside the compiled step: ask XLA where the traced array is placed
            import jax

            jax.debug.inspect_array_sharding(
                array, callback=lambda s: seen.append({_device_kind("jax", d) for d in s.device_set}))
        elif backend_name == "tensorflow":
            import tensorflow as tf

            if tf.executing_eagerly():  # inside tf.function a tensor is symbolic: it has no device yet
                seen.append(_array_kinds(backend_name, array))
        else:
            seen.append(_array_kinds(backend_name, array))

    class Recording(d2l.LinearRegression):  # type: ignore[name-defined,misc]
        """d2l's concise model, with a training_step that notes where its batch is."""

        def training_step(self, *args: Any) -> Any:
            batch = args[1] if backend_name == "jax" else args[0]  # JAX: (params, batch, state)
            for array in batch:
                record(array)
            return super().training_step(*args)

    recipes.seed_framework(backend_name, 0)
    model = Recording(lr=0.03)
    data = ReaderData(backend_name, own=own)
    trainer = d2l.Trainer(max_epochs=2, device=gpu_device, progress=False)
    history = trainer.fit(model, data)
    where = {_kind(gpu_device)}
    assert _device_kind(backend_name, trainer.device) == _kind(gpu_device)
    if backend_name != "tensorflow":  # TensorFlow traces training_step (no device to read there)
        assert seen, "training_step was never called with a batch"
    for i, kinds in enumerate(seen):
        assert kinds == where, f"training_step's array {i} is on {kinds}, not on {gpu_device}"
    params = _parameters(backend_name, trainer)
    assert params
    for i, p in enumerate(params):
        assert _array_kinds(backend_name, p) == where, f"parameter {i} is on {_array_kinds(backend_name, p)}"
    if not own:  # d2lx's loader copied the data set to the device once
        for i, t in enumerate(trainer.train_dataloader.tensors):
            assert _array_kinds(backend_name, t) == where, f"training array {i}"
    assert history.train_loss[-1] < history.train_loss[0]
    # Results come back to the host as NumPy, whatever the device.
    w, b = model.get_w_b()
    assert type(w) is np.ndarray and type(b) is np.ndarray and w.shape == (4, 1) and b.shape == (1,)
    y_hat = model.predict(data.X_val[:7])
    assert type(y_hat) is np.ndarray and y_hat.shape == (7, 1)
    np.testing.assert_allclose(y_hat, data.X_val[:7] @ w + b, rtol=1e-5, atol=1e-5)


def _checkpoint_data() -> SyntheticRegressionData:
    return SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=200, num_val=50, batch_size=16, seed=3)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["scratch", "concise"])
@pytest.mark.parametrize(("first", "then"), [("gpu", "cpu"), ("cpu", "gpu")],
                         ids=["gpu-to-cpu", "cpu-to-gpu"])
def test_a_checkpoint_resumes_across_gpu_and_cpu(d2l: Any, gpu_device: str, model: str, first: str,
                                                 then: str, tmp_path: Path) -> None:
    first_device, then_device = (gpu_device if d == "gpu" else "cpu" for d in (first, then))
    straight = build_model(d2l, model, 2, 0.03, 3)
    straight_trainer = d2l.Trainer(max_epochs=3, device="cpu", progress=False)
    straight_history = straight_trainer.fit(straight, _checkpoint_data())

    path = tmp_path / "run.safetensors"
    d2l.Trainer(max_epochs=1, device=first_device, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        build_model(d2l, model, 2, 0.03, 3), _checkpoint_data())
    ckpt = checkpoint.load(path)
    assert ckpt.epoch == 1 and ckpt.step == 13  # ceil(200 / 16) steps
    assert all(type(v) is np.ndarray for v in ckpt.model.values())

    resumed = build_model(d2l, model, 2, 0.03, 3)
    trainer = d2l.Trainer(max_epochs=3, device=then_device, progress=False)
    history = trainer.fit(resumed, _checkpoint_data(), ckpt_path=path)
    assert trainer.resumed is not None and trainer.resumed["epoch"] == 1
    assert str(trainer.device_spec) == then_device and trainer.train_batch_idx == 3 * 13
    for name, got, want in zip("wb", resumed.get_w_b(), straight.get_w_b()):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
    _assert_same_history(history, straight_history)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_the_frameworks_own_loader_trains_on_the_gpu_as_on_the_cpu(d2l: Any, backend_name: str,
                                                                   gpu_device: str, model: str) -> None:
    def fit(device: str) -> tuple[Any, Any, Any]:
        recipes.seed_framework(backend_name, 0)  # the loaders' shuffles: torch's, tf.data's, NumPy's
        net = build_model(d2l, model, 4, 0.03, 0)
        trainer = d2l.Trainer(max_epochs=3, device=device, progress=False)
        history = trainer.fit(net, ReaderData(backend_name, own=True))
        return net, trainer, history

    cpu_net, cpu, cpu_history = fit("cpu")
    gpu_net, gpu, gpu_history = fit(gpu_device)
    assert str(gpu.device_spec) == gpu_device
    assert gpu.num_train_batches == 16 and gpu.train_batch_idx == cpu.train_batch_idx == 3 * 16
    assert gpu_history.train_loss[-1] < gpu_history.train_loss[0]
    for name, got, want in zip("wb", gpu_net.get_w_b(), cpu_net.get_w_b()):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
    _assert_same_history(gpu_history, cpu_history)


@pytest.mark.gpu
def test_d2ls_device_helpers_find_the_gpu(d2l: Any, backend_name: str, gpu_device: str) -> None:
    assert d2l.num_gpus() == gpu_count(d2l) >= 1
    assert _device_kind(backend_name, d2l.gpu(0)) == "gpu"
    assert d2l.try_gpu() == d2l.gpu(0) and _device_kind(backend_name, d2l.try_gpu()) == "gpu"
    assert d2l.try_all_gpus() == [d2l.gpu(i) for i in range(d2l.num_gpus())]
    trainer = d2l.Trainer(max_epochs=1, num_gpus=1, progress=False)
    assert str(trainer.device_spec) == gpu_device == "gpu:0"
    assert _device_kind(backend_name, trainer.device) == "gpu" and trainer.gpus == [trainer.device]
