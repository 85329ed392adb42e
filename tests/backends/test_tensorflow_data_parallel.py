"""TensorFlow backend: MirroredStrategy data parallelism, checkpoints across backends, Huber, grads.

Runs that need several logical CPU devices go to a fresh process: TensorFlow
fixes its device list when its runtime starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import d2lx  # noqa: E402
import d2lx.tensorflow as d2l  # noqa: E402  (the reader's namespace)
from d2lx import checkpoint  # noqa: E402
from d2lx.backends.tensorflow.distributed import shard_bounds  # noqa: E402
from d2lx.checkpoint import ModelCheckpoint  # noqa: E402
from d2lx.data import ArrayData, SyntheticRegressionData  # noqa: E402
from d2lx.sharding import shard_slices  # noqa: E402


def _in_fresh_process(code: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``code`` (which writes ``OUT`` as JSON) in a new Python with the TF backend."""
    out = tmp_path / "out.json"
    env = {**os.environ, "D2LX_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "CI": "1"}
    prelude = f"import json\nOUT = {str(out)!r}\n"
    run = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_in_graph_shards_are_the_cores_shard_slices(world: int) -> None:
    for n in range(world, 40):
        got = [tuple(int(v) for v in shard_bounds(tf.constant(n, tf.int64), world, r)) for r in range(world)]
        want = [(s.start, s.stop - s.start) for s in shard_slices(n, world)]
        assert got == want, n


def test_data_parallel_fused_clipped_run_equals_one_device_and_refuses_small_batches(tmp_path: Path) -> None:
    """Fused steps, clipping (which sees the summed gradient) and get_grads under devices=2 and 3."""
    res = _in_fresh_process("""
        import warnings
        import tensorflow as tf
        import d2lx, d2lx.tensorflow as d2l
        from d2lx.data import SyntheticRegressionData
        # The documented fix for "runtime already started": split the CPU first.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
        out = {}
        def run(kind, devices, spe):
            # 50 % 9 = 5: a short last batch that splits unevenly over 2 and 3 devices
            data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=50, num_val=10,
                                           batch_size=9, seed=1)
            net = (d2l.LinearRegressionScratch(2, lr=0.1, seed=1) if kind == "scratch"
                   else d2l.LinearRegression(lr=0.1, seed=1))
            tr = d2l.Trainer(max_epochs=2, devices=devices, steps_per_execution=spe,
                             gradient_clip_val=0.5, progress=False)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                h = tr.fit(net, data)
            w, b = net.get_w_b()
            gw, gb = net.get_grads()
            return {"w": w.ravel().tolist(), "b": b.tolist(), "gw": gw.ravel().tolist(),
                    "gb": gb.tolist(), "train": h.train_loss, "val": h.val_loss,
                    "steps": tr.train_batch_idx, "replicas": 0 if tr.distribute_strategy is None
                    else tr.distribute_strategy.num_replicas_in_sync, "xla": tr._step.jit,
                    "warnings": [str(w.message) for w in caught]}
        for kind in ("scratch", "concise"):
            for devices, spe in ((1, 1), (2, 4), (3, 1)):
                out[f"{kind}-{devices}-{spe}"] = run(kind, devices, spe)
        try:
            data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=19, num_val=0,
                                           batch_size=9, seed=1)  # last batch: 1 example
            d2l.Trainer(max_epochs=1, devices=2, progress=False).fit(
                d2l.LinearRegressionScratch(2, lr=0.1), data)
            out["refused"] = None
        except d2lx.InvalidArgumentError as err:
            out["refused"] = str(err)
        try:  # XLA compiles for one device: the data-parallel step runs without it
            d2l.Trainer(max_epochs=1, devices=2, jit_compile=True)
            out["jit"] = None
        except d2lx.InvalidArgumentError as err:
            out["jit"] = str(err)
        data = SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=50, num_val=0, batch_size=10, seed=1)
        built = d2l.LinearRegression(lr=0.1)
        built.set_w_b([[1.0], [2.0]], [0.5])  # Keras variables made outside the strategy's scope
        try:
            d2l.Trainer(max_epochs=1, devices=2, progress=False).fit(built, data)
            out["outside"] = None
        except d2lx.InvalidArgumentError as err:
            out["outside"] = str(err)
        scratch = d2l.LinearRegressionScratch(2, lr=1e-9)
        scratch.set_w_b([[1.0], [2.0]], [0.5])
        scratch.w  # made here, outside the scope: re-created mirrored, with these values
        d2l.Trainer(max_epochs=1, devices=2, progress=False).fit(scratch, data)
        out["scratch_mirrored"] = type(scratch.w).__name__
        out["scratch_w"] = scratch.get_w_b()[0].ravel().tolist()
        json.dump(out, open(OUT, "w"))
    """, tmp_path)
    for kind in ("scratch", "concise"):
        one = res[f"{kind}-1-1"]
        assert one["replicas"] == 0 and one["xla"] and not one["warnings"]
        many = res[f"{kind}-2-4"]
        assert not many["xla"] and not many["warnings"]  # jit_compile="auto": no XLA here, silently
        for key in (f"{kind}-2-4", f"{kind}-3-1"):
            many = res[key]
            assert many["replicas"] == int(key.split("-")[1]) and many["steps"] == one["steps"] == 2 * 6
            for field in ("w", "b", "gw", "gb", "train", "val"):
                np.testing.assert_allclose(many[field], one[field], rtol=1e-5, atol=1e-6, err_msg=key + field)
    assert "a batch of 1 example(s) cannot be split across 2 devices" in res["refused"]
    assert "jit_compile=True does not work with devices=N" in res["jit"]
    assert "jit_compile='auto'" in res["jit"]
    assert "were created before the data-parallel run" in res["outside"] and "ckpt_path" in res["outside"]
    assert res["scratch_mirrored"] == "MirroredVariable"
    np.testing.assert_allclose(res["scratch_w"], [1.0, 2.0], atol=1e-6)


def test_data_parallel_over_a_tf_data_loader_equals_one_device(tmp_path: Path) -> None:
    """Any other loader (tf.data) goes through the same sharded, guarded, clipped step per batch."""
    res = _in_fresh_process("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import d2lx, d2lx.tensorflow as d2l
        rng = np.random.default_rng(0)
        X = rng.standard_normal((90, 2)).astype(np.float32)
        y = X @ np.array([[2.0], [-3.4]], np.float32) + 4.2

        class TFData(d2lx.DataModule):
            batch_size = 16  # 70 = 4 * 16 + 6: a short last batch, split 3 + 3

            def get_dataloader(self, train):
                Xs, ys = (X[:70], y[:70]) if train else (X[70:], y[70:])
                return tf.data.Dataset.from_tensor_slices((Xs, ys)).batch(16)

        out = {}
        for kind in ("scratch", "concise"):
            for devices in (1, 2):
                net = (d2l.LinearRegressionScratch(2, lr=0.1, seed=1) if kind == "scratch"
                       else d2l.LinearRegression(lr=0.1, seed=1))
                tr = d2l.Trainer(max_epochs=3, devices=devices, gradient_clip_val=2.0, progress=False)
                h = tr.fit(net, TFData())
                out[f"{kind}-{devices}"] = {"w": net.get_w_b()[0].ravel().tolist(), "train": h.train_loss,
                                            "val": h.val_loss, "gw": net.get_grads()[0].ravel().tolist()}
        json.dump(out, open(OUT, "w"))
    """, tmp_path)
    for kind in ("scratch", "concise"):
        for field in ("w", "train", "val", "gw"):
            np.testing.assert_allclose(res[f"{kind}-2"][field], res[f"{kind}-1"][field], rtol=1e-5, atol=1e-6,
                                       err_msg=kind + field)


def test_models_do_not_start_the_runtime_and_a_started_one_is_a_clear_error(tmp_path: Path) -> None:
    res = _in_fresh_process("""
        import tensorflow as tf
        import d2lx, d2lx.tensorflow as d2l
        out = {}
        m = d2l.LinearRegressionScratch(2, lr=0.1)  # d2l's order: the model before the trainer
        d2l.LinearRegression(lr=0.1)
        m.set_w_b([[1.0], [2.0]], [0.5])  # a lazy model stays lazy (its w and b are NumPy until placed)
        out["w"] = m.get_w_b()[0].ravel().tolist()
        d2l.Trainer(max_epochs=1, devices=2)
        out["cpus"] = len(tf.config.list_logical_devices("CPU"))
        try:
            d2l.Trainer(max_epochs=1, devices=3)  # the runtime now runs with 2 CPU devices
            out["error"] = None
        except d2lx.InvalidArgumentError as err:
            out["error"] = str(err)
        json.dump(out, open(OUT, "w"))
    """, tmp_path)
    assert res["cpus"] == 2 and res["w"] == [1.0, 2.0]
    assert "devices=3 on the CPU needs 3 logical CPU devices" in res["error"]
    assert "set_logical_device_configuration" in res["error"]


def test_every_trainerbase_keyword_is_forwarded() -> None:
    trainer = d2l.Trainer(max_epochs=1, devices=1, strategy=None, steps_per_execution=2, allow_tf32=True)
    assert trainer.strategy is None and trainer.steps_per_execution == 2 and trainer.allow_tf32
    assert trainer.distribute_strategy is None
    with pytest.raises(TypeError):
        d2l.Trainer(max_epochs=1, no_such_option=1)


def _data() -> SyntheticRegressionData:
    return SyntheticRegressionData(w=[2, -3.4], b=4.2, num_train=64, num_val=16, batch_size=16, seed=2)


def test_resuming_a_checkpoint_without_optimizer_state_like_other_backends_write(tmp_path: Path) -> None:
    """torch/optax SGD save no optimizer state: Keras' SGD resumes with its step counter set."""
    straight = d2l.LinearRegression(lr=0.05, seed=1)
    d2l.Trainer(max_epochs=3, progress=False).fit(straight, _data())
    path = tmp_path / "c.npz"
    d2l.Trainer(max_epochs=1, progress=False, callbacks=[ModelCheckpoint(path)]).fit(
        d2l.LinearRegression(lr=0.05, seed=1), _data())
    saved = checkpoint.load(path)
    assert saved.optimizer == {}  # only slots are saved; Keras' SGD has none (as torch/optax SGD)
    resumed = d2l.LinearRegression(lr=0.05, seed=1)
    trainer = d2l.Trainer(max_epochs=3, progress=False)
    trainer.fit(resumed, _data(), ckpt_path=path)
    assert int(trainer.optim.iterations.numpy()) == 3 * 4
    for got, want in zip(resumed.get_w_b(), straight.get_w_b()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_an_optimizer_with_slots_refuses_a_checkpoint_without_them(tmp_path: Path) -> None:
    class Momentum(d2l.LinearRegression):
        def configure_optimizers(self) -> Any:
            return tf.keras.optimizers.SGD(self.lr, momentum=0.9)

    trainer = d2l.Trainer(max_epochs=1, progress=False)
    trainer.fit(d2l.LinearRegression(lr=0.05), _data())
    saved = checkpoint.load(trainer.save_checkpoint(tmp_path / "c.npz"))
    meta = {**saved.meta, "model": "Momentum"}
    foreign = checkpoint.save(tmp_path / "f.npz",
                              checkpoint.Checkpoint(model=saved.model, rng=saved.rng, meta=meta))
    with pytest.raises(d2lx.CheckpointError, match="optimizer state does not match"):
        d2l.Trainer(max_epochs=2, progress=False).fit(Momentum(lr=0.05), _data(), ckpt_path=foreign)


def test_huber_is_keras_huber_divided_by_sigma() -> None:
    r = np.array([[-3.0], [-0.4], [0.0], [0.3], [2.5]], np.float32)
    sigma = 0.7
    net = d2l.LinearRegression(lr=0.1, loss="huber", huber_sigma=sigma)
    got = float(net.loss(tf.constant(r), tf.zeros_like(tf.constant(r))))
    keras = float(tf.keras.losses.Huber(delta=sigma)(np.zeros_like(r), r))
    assert got == pytest.approx(keras / sigma, rel=1e-6)
    assert net.hparams["loss"] == "huber" and callable(net.loss)  # the method is not shadowed


def test_get_grads_before_training_is_a_clear_error_and_fresh_concise_predicts() -> None:
    net = d2l.LinearRegression(lr=0.1)
    with pytest.raises(d2lx.NotFittedError, match="no gradients yet"):
        net.get_grads()
    net.set_w_b(np.array([[1.0], [2.0], [3.0]]), np.array([0.5]))  # builds the lazy layer, width 3
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net.predict(X), X @ np.array([[1.0], [2.0], [3.0]]) + 0.5, rtol=1e-6)


def test_get_grads_are_the_applied_step_with_clipping() -> None:
    X = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
    y = (X @ np.array([[20.0], [-30.0]])).astype(np.float32)  # large gradient: clipping acts
    net = d2l.LinearRegressionScratch(2, lr=0.1, seed=3)
    w0, _ = net.get_w_b()
    d2l.Trainer(max_epochs=1, gradient_clip_val=1.0, progress=False).fit(net, ArrayData(X, y, batch_size=16))
    gw, gb = net.get_grads()
    assert np.sqrt((gw**2).sum() + (gb**2).sum()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(net.get_w_b()[0], w0 - 0.1 * gw, rtol=1e-5, atol=1e-7)
