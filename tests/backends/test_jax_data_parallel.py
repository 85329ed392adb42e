"""JAX data parallelism: how it runs (a Mesh, XLA's collectives), beyond the shared end result.

The conformance suite (``tests/conformance/test_data_parallel.py``) checks
that 2 devices end where 1 device ends. These tests check that the 2-device
run really is partitioned by XLA (an all-reduce in the compiled step, the
batch split over the ``data`` axis), that gradients and checkpoints work
under it, and the errors for devices jax cannot see. JAX fixes its device
list at start-up, so the 2-device parts run in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import d2lx
from d2lx import jax as d2l

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    import numpy as np
    from d2lx import jax as d2l
    from d2lx.data import SyntheticRegressionData

    out = {}
    for model in ("scratch", "concise"):
        runs = {}
        for devices in (1, 2):
            # 101 examples in batches of 13: 7 full batches + a tail of 10; 13 splits 7 + 6.
            data = SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=101, num_val=9,
                                           batch_size=13, seed=7)
            net = (d2l.LinearRegressionScratch(3, lr=0.05, seed=3, loss="huber", huber_sigma=0.5)
                   if model == "scratch" else d2l.LinearRegression(lr=0.05, seed=3))
            trainer = d2l.Trainer(max_epochs=2, devices=devices, gradient_clip_val=5.0, progress=False)
            trainer.fit(net, data)
            w, b = net.get_w_b()
            gw, gb = net.get_grads()
            leaf = jax.tree_util.tree_leaves(trainer.state.params)[0]
            loader = trainer.train_dataloader
            hlo = trainer.programs().chunk.lower(trainer.initial_carry(), trainer.state.dropout_rng,
                                                 tuple(loader.tensors), None, 1,
                                                 loader.batch_size).compile().as_text()
            path = sys.argv[1] + f"/{model}-{devices}.npz"
            trainer.save_checkpoint(path)
            resumed = d2l.Trainer(max_epochs=3, devices=devices, gradient_clip_val=5.0, progress=False)
            twin = (d2l.LinearRegressionScratch(3, lr=0.05, seed=3, loss="huber", huber_sigma=0.5)
                    if model == "scratch" else d2l.LinearRegression(lr=0.05, seed=3))
            resumed.fit(twin, SyntheticRegressionData(w=[2, -3.4, 0.5], b=4.2, num_train=101,
                                                      num_val=9, batch_size=13, seed=7),
                        ckpt_path=path)
            runs[devices] = {
                "w": w.ravel().tolist(), "b": b.tolist(), "gw": gw.ravel().tolist(),
                "gb": gb.tolist(), "train_loss": trainer.history.train_loss,
                "val_loss": trainer.history.val_loss,
                "param_devices": len(leaf.sharding.device_set),
                "data_devices": len(loader.tensors[0].sharding.device_set),
                "all_reduce": "all-reduce" in hlo,
                "predict": twin.predict(np.ones((5, 3), np.float32)).ravel().tolist(),
                "resumed_w": twin.get_w_b()[0].ravel().tolist(),
                "resumed_epochs": resumed.history.epoch,
            }
        out[model] = runs
    with open(sys.argv[1] + "/out.json", "w") as f:
        json.dump(out, f)
''')


@pytest.fixture(scope="module")
def two_device_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("jaxdp")
    script = folder / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "D2LX_BACKEND": "jax", "CI": "1"}
    run = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True,
                         env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads((folder / "out.json").read_text())


@pytest.mark.parametrize("model", ["scratch", "concise"])
def test_two_devices_are_a_partitioned_program_with_the_one_device_result(
    two_device_runs: dict, model: str
) -> None:
    one, two = two_device_runs[model]["1"], two_device_runs[model]["2"]
    assert (one["param_devices"], one["data_devices"]) == (1, 1)
    assert (two["param_devices"], two["data_devices"]) == (2, 2)  # replicated over the mesh
    assert two["all_reduce"] and not one["all_reduce"]  # XLA inserted the gradient reduction
    for key in ("w", "b", "gw", "gb", "train_loss", "val_loss", "predict", "resumed_w"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert one["w"] != one["resumed_w"]  # the resumed third epoch trained
    assert two["resumed_epochs"] == [0, 1, 2]


def test_devices_jax_cannot_see_are_refused_with_the_fix() -> None:
    import jax

    n = len(jax.devices("cpu"))
    with pytest.raises(d2lx.DeviceUnavailableError, match="xla_force_host_platform_device_count"):
        d2l.Trainer(max_epochs=1, devices=n + 1)
    gpus = sum(1 for d in d2l.list_devices() if d.startswith("gpu"))
    with pytest.raises(d2lx.DeviceUnavailableError, match="jax sees"):
        d2l.Trainer(max_epochs=1, device="gpu", devices=gpus + 1)


def test_one_device_has_no_mesh_and_reports_as_global_zero() -> None:
    trainer = d2l.Trainer(max_epochs=1)
    assert trainer.mesh is None and trainer.strategy is None and trainer.is_global_zero
