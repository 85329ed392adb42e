"""The benchmark runner on the active backend, with a tiny workload.

No timing is asserted (timings are benchmarks' business, not tests'): these
tests check that every method runs and trains, that the JSON document has its
schema, and that the ratios and targets are computed from the medians. They
skip when the backend's framework is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lx import bench, cli, registry

ROOT = Path(__file__).resolve().parents[1]
TINY = [bench.Workload("seed/concise", "seed", "concise", 96, 2, 16, 2),
        bench.Workload("seed/scratch", "seed", "scratch", 96, 2, 16, 2),
        bench.Workload("sweep/tiny", "sweep", "concise", 200, 3, 64, 1)]


@pytest.fixture(scope="module")
def framework_backend() -> str:
    name = registry.current_backend_name()
    if not registry.is_installed(name):
        pytest.skip(f"{name} is not installed in this environment")
    return name


@pytest.fixture(scope="module")
def doc(framework_backend: str) -> dict:
    return bench.run_backend(framework_backend, TINY, repeats=2, spe_values=(1, 4, 100), keras=False,
                             loops_dir=ROOT / "benchmarks" / "loops", smoke=True)


def _check_stats(m: dict, w: bench.Workload) -> None:
    assert m["status"] == "ok", m
    samples = m["samples_s"]
    assert all(s > 0 for s in samples)
    assert m["min_s"] <= m["q1_s"] <= m["median_s"] <= m["q3_s"] <= m["max_s"]
    assert m["median_s"] == pytest.approx(float(np.median(samples)))
    assert m["us_per_step"] == pytest.approx(m["median_s"] / w.steps * 1e6)
    assert m["examples_per_s"] == pytest.approx(w.epochs * w.num_train / m["median_s"])


def test_document_schema(doc: dict, framework_backend: str) -> None:
    assert doc["schema"] == bench.SCHEMA
    assert doc["backend"] == framework_backend
    assert doc["smoke"] is True
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
    assert doc["versions"][framework_backend]
    assert [r["workload"]["name"] for r in doc["results"]] == [w.name for w in TINY]
    json.loads(json.dumps(doc))  # plain JSON all the way down


def test_hand_written_loop_trains(doc: dict) -> None:
    for w, r in zip(TINY, doc["results"]):
        loop = r["methods"]["loop"]
        _check_stats(loop, w)
        assert loop["best_variant"] in loop["by_variant"]
        # 96 examples, 2 epochs from w ~ 0: far from converged, but clearly on the way.
        start_error = 4.2  # |b - 0|, the largest initial error
        assert loop["w_max_error"] < start_error * 0.9, loop
        assert math.isfinite(loop["final_loss"])


def test_d2lx_methods_and_ratios(doc: dict, framework_backend: str) -> None:
    try:
        registry.load(framework_backend)
    except ImportError:
        pytest.skip(f"no d2lx {framework_backend} adapter in this checkout")
    for w, r in zip(TINY, doc["results"]):
        ms = r["methods"]
        _check_stats(ms["d2lx_step"], w)
        fused = ms["d2lx_fused"]
        _check_stats(fused, w)
        # spe 1 is the step-by-step run, and 100 is capped at one epoch's steps.
        assert set(fused["by_spe"]) == {str(s) for s in (4, w.steps_per_epoch) if s > 1}
        assert fused["median_s"] == min(v["median_s"] for v in fused["by_spe"].values())
        ratios = r["ratios"]
        assert ratios["step_over_loop"] == pytest.approx(ms["d2lx_step"]["median_s"] / ms["loop"]["median_s"])
        assert ratios["loop_over_fused"] == pytest.approx(ms["loop"]["median_s"] / fused["median_s"])
        assert ratios["keras_over_fused"] is None  # keras=False
        assert ms["keras"]["status"] in ("skipped",)
        # d2lx and the loop run the same experiment: both move the same way from the start.
        assert abs(ms["d2lx_step"]["w_max_error"] - ms["loop"]["w_max_error"]) < 0.5


def test_targets_follow_the_ratios(doc: dict, framework_backend: str) -> None:
    rows = doc["targets"]
    assert rows, "the seed workloads must produce target rows"
    for t in rows:
        r = next(r for r in doc["results"] if r["workload"]["name"] == t["workload"])
        assert t["value"] == r["ratios"][t["ratio"]]
        if t["value"] is None:
            assert t["met"] is None
        else:
            expected = t["value"] <= t["threshold"] if t["op"] == "<=" else t["value"] >= t["threshold"]
            assert t["met"] is expected
    names = {t["ratio"] for t in rows}
    assert "step_over_loop" in names
    assert ("loop_over_fused" in names) == (framework_backend in ("jax", "tensorflow"))
    # the tiny sweep case is not "large": no bandwidth target, no NumPy copy
    assert doc["results"][2]["numpy_copy"] is None
    assert doc["results"][2]["ratios"]["bandwidth_fraction"] is None


def test_bandwidth_fraction_uses_the_numpy_copy() -> None:
    w = bench.Workload("sweep/big", "sweep", "concise", 10**6, 15, 8192, 2)
    assert w.large and w.bytes_per_epoch == 10**6 * 16 * 4
    methods = {"d2lx_step": {"status": "ok", "median_s": 2.0},
               "d2lx_fused": {"status": "ok", "median_s": 1.0},
               "loop": {"status": "ok", "median_s": 4.0}, "keras": {"status": "skipped"}}
    r = bench.ratios(methods, {"gbps": 0.256, "median_s": 0.25}, w)
    # best d2lx mode (1 s) reads 2 x 64 MB: 0.128 GB/s, half of the copy's 0.256 GB/s
    assert r["bandwidth_fraction"] == pytest.approx(0.5)
    assert r["step_over_loop"] == pytest.approx(0.5) and r["loop_over_fused"] == pytest.approx(4.0)
    assert r["keras_over_fused"] is None


def test_cli_writes_json_and_combine_renders_it(framework_backend: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "seed_workloads", lambda: TINY[:1])
    out = tmp_path / f"{framework_backend}.json"
    code = cli.main(["bench", "--backend", framework_backend, "--only", "seed", "--repeats", "1",
                     "--spe", "4", "--no-keras", "--quick", "--out", str(out)])
    assert code == 0
    assert "targets (reported, not enforced)" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["schema"] == bench.SCHEMA and doc["smoke"] is True
    spec = importlib.util.spec_from_file_location("_combine", ROOT / "benchmarks" / "combine.py")
    assert spec is not None and spec.loader is not None
    combine = importlib.util.module_from_spec(spec)
    sys.modules["_combine"] = combine
    spec.loader.exec_module(combine)
    assert combine.main([str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "SMOKE RUN" in table
    assert f"| {framework_backend} | concise |" in table
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_loops_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["bench", "--loops", str(tmp_path), "--only", "seed", "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "no hand-written loop" in capsys.readouterr().err


@pytest.mark.slow
def test_keras_fit_is_timed_in_a_child(framework_backend: str) -> None:
    if framework_backend not in bench.KERAS_BACKENDS:
        pytest.skip(f"Keras 3 has no {framework_backend} backend")
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    w = TINY[0]
    info = bench.run_keras(framework_backend, [w], repeats=1, spe_values=(4,))
    assert info["status"] == "ok", info
    assert info["keras_backend"] == framework_backend
    m = info["workloads"][w.name]
    _check_stats(m, w)
    assert set(m["by_spe"]) == {"1", "4"}
