"""The benchmark application (``python -m benchmarks``) on the active backend, with tiny workloads.

No timing is asserted (timings are the benchmark's business, not the
tests'): these tests check that every method runs and trains, that d2lx and
the hand-written loop run the same experiment, that the JSON document has its
schema, that ratios and targets are computed from the medians, that the CLI
refuses bad options in one line, and that ``d2lx`` never imports
``benchmarks``. They skip when the backend's framework is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lx import registry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmark application is run from the repository root

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import combine, runner, targets, workloads  # noqa: E402
from benchmarks.keras_worker import KERAS_BACKENDS, run_keras  # noqa: E402
from benchmarks.workloads import Workload  # noqa: E402

TINY = [Workload("seed/concise", "seed", "concise", 96, 2, 16, 2, 32),
        Workload("seed/scratch", "seed", "scratch", 96, 2, 16, 2, 32),
        Workload("large/concise", "large", "concise", 200, 3, 64, 1, 64),
        Workload("mlp", "mlp", "mlp", 128, 4, 32, 2, 32, hidden=8),
        Workload("loader/concise", "loader", "concise", 96, 3, 16, 2, 32, loader="framework"),
        Workload("sweep/tiny", "sweep", "concise", 200, 3, 64, 1, 64)]
BY_NAME = {w.name: w for w in TINY}


@pytest.fixture(scope="module")
def framework_backend() -> str:
    name = registry.current_backend_name()
    if not registry.is_installed(name):
        pytest.skip(f"{name} is not installed in this environment")
    return name


@pytest.fixture(scope="module")
def doc(framework_backend: str) -> dict:
    return runner.run_backend(framework_backend, TINY, repeats=2, spe_values=(1, 4, 100), keras=False,
                              smoke=True)


@pytest.fixture(scope="module")
def fuses(framework_backend: str) -> bool:
    try:
        return "cpu" in registry.load(framework_backend).Trainer.fused_devices  # TINY runs on the CPU
    except ImportError:
        pytest.skip(f"no d2lx {framework_backend} adapter in this checkout")


def _results(doc: dict) -> list[tuple[Workload, dict]]:
    return [(BY_NAME[r["workload"]["name"]], r) for r in doc["results"]]


def _check_stats(m: dict, w: Workload) -> None:
    assert m["status"] == "ok", m
    samples = m["samples_s"]
    assert len(samples) == 2 and all(s > 0 for s in samples)
    assert m["min_s"] <= m["q1_s"] <= m["median_s"] <= m["q3_s"] <= m["max_s"]
    assert m["median_s"] == pytest.approx(float(np.median(samples)))
    assert m["us_per_step"] == pytest.approx(m["median_s"] / w.steps * 1e6)
    assert m["epoch_s"] == pytest.approx(m["median_s"] / w.epochs)
    assert m["examples_per_s"] == pytest.approx(w.epochs * w.num_train / m["median_s"])


def _check_trained(m: dict, r: dict, w: Workload) -> None:
    """From the shared start, the run got clearly better on the validation set."""
    assert math.isfinite(m["final_loss"]) and math.isfinite(m["final_val_loss"])
    assert m["final_val_loss"] < 0.9 * r["initial_val_loss"], (w.name, m, r["initial_val_loss"])
    if w.model != "mlp":
        assert m["w_max_error"] < 0.9 * 4.2  # the bias starts 4.2 away from its true value
    else:
        assert "w_max_error" not in m


def test_document_schema(doc: dict, framework_backend: str) -> None:
    assert doc["schema"] == runner.SCHEMA == "d2lx-bench/2"
    assert doc["backend"] == framework_backend
    assert doc["smoke"] is True
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
    assert doc["versions"][framework_backend]
    assert doc["settings"]["repeats"] == 2 and doc["settings"]["warmup"] == 1
    assert [r["workload"]["name"] for r in doc["results"]] == [w.name for w in TINY]
    for w, r in _results(doc):
        assert r["workload"] == w.as_dict()
        assert set(r["methods"]) == {"d2lx_step", "d2lx_fused", "loop", "keras"}
        assert set(r["ratios"]) == set(targets.RATIO_KEYS)
    json.loads(json.dumps(doc))  # plain JSON all the way down


def test_hand_written_loop_trains(doc: dict) -> None:
    for w, r in _results(doc):
        loop = r["methods"]["loop"]
        _check_stats(loop, w)
        assert loop["best_variant"] in loop["by_variant"]
        ok = [v["median_s"] for v in loop["by_variant"].values() if v["status"] == "ok"]
        assert loop["median_s"] == min(ok)
        _check_trained(loop, r, w)


def test_d2lx_methods_train_like_the_loop(doc: dict, fuses: bool) -> None:
    assert doc["settings"]["fuses_steps"] is fuses
    for w, r in _results(doc):
        ms = r["methods"]
        _check_stats(ms["d2lx_step"], w)
        _check_trained(ms["d2lx_step"], r, w)
        # The same experiment: same start, same data, and (d2lx's loader) the same shuffled orders.
        gap = abs(ms["d2lx_step"]["final_val_loss"] - ms["loop"]["final_val_loss"])
        assert gap <= 0.05 * r["initial_val_loss"] + 1e-3, (w.name, ms["d2lx_step"], ms["loop"])
        fused = ms["d2lx_fused"]
        if fuses and w.loader == "d2lx":
            _check_stats(fused, w)
            _check_trained(fused, r, w)
            # spe 1 is the step-by-step run, and 100 is capped at one epoch's steps.
            assert set(fused["by_spe"]) == {str(s) for s in {4, min(100, w.steps_per_epoch)} if s > 1}
            assert fused["median_s"] == min(v["median_s"] for v in fused["by_spe"].values())
        else:  # never steps_per_execution > 1 where it changes nothing (that warns)
            assert fused["status"] == "skipped" and fused["same_as"] == "d2lx_step", fused
        assert ms["keras"]["status"] == "skipped"


def test_ratios_are_the_medians(doc: dict, fuses: bool) -> None:
    for w, r in _results(doc):
        ms, ra = r["methods"], r["ratios"]
        step, loop = ms["d2lx_step"]["median_s"], ms["loop"]["median_s"]
        fused = ms["d2lx_fused"]["median_s"] if ms["d2lx_fused"]["status"] == "ok" else step
        assert ra["step_over_loop"] == pytest.approx(step / loop)
        assert ra["fused_over_loop"] == pytest.approx(fused / loop)
        assert ra["loop_over_fused"] == pytest.approx(loop / fused)
        assert ra["keras_over_fused"] is None and ra["keras_over_loop"] is None  # keras=False
        copy = r["numpy_copy"]
        if w.group == "large":
            assert copy["median_s"] > 0 and copy["bytes"] == w.num_train * (w.num_inputs + 1) * 4
            assert copy["gbps"] == pytest.approx(copy["bytes"] / copy["median_s"] / 1e9)
            # the best epoch by the trainer's own clock (History.seconds), not the whole fit
            timed = [ms["d2lx_step"]] + ([ms["d2lx_fused"]] if ms["d2lx_fused"]["status"] == "ok" else [])
            best = min(m["epoch_median_s"] for m in timed)
            assert 0 < best <= min(m["median_s"] for m in timed) / w.epochs
            assert r["best_epoch_s"] == pytest.approx(best)
            assert ra["fused_over_copy"] == pytest.approx(best / copy["median_s"])
            assert ra["bandwidth_fraction"] == pytest.approx(w.bytes_per_epoch / best / 1e9 / copy["gbps"])
        else:  # tiny and not in the "large" group: no NumPy copy, no bandwidth ratios
            assert copy is None and ra["fused_over_copy"] is None and ra["bandwidth_fraction"] is None
        against = r["epoch_against_copy"]  # the fused mode's epochs and the copy, timed A, B, A, B, ...
        if w.group in targets.COPY_GROUPS:
            fused = ms["d2lx_fused"]  # where the trainer fuses; else step by step, all it runs
            assert against["status"] == "ok" and against["repeats"] == 2, against
            assert against["spe"] == (int(fused["best_spe"]) if fused["status"] == "ok" else 1)
            assert against["epoch_s"] > 0 and against["copy_s"] > 0
            assert ra["fused_over_copy_alternating"] == pytest.approx(against["epoch_s"] / against["copy_s"])
        else:
            assert against is None and ra["fused_over_copy_alternating"] is None
        board = r["board"]
        if w.group == "seed":  # the fit with d2l's board against the same fit with a silent one
            assert board["status"] == "ok" and board["repeats"] == 2 * runner.BOARD_REPEATS, board
            assert board["with_board_s"] > 0 and board["without_board_s"] > 0
            share = (board["with_board_s"] - board["without_board_s"]) / board["with_board_s"]
            assert ra["board_share"] == pytest.approx(share) == pytest.approx(board["share"])
        else:
            assert board is None and ra["board_share"] is None
        alternating = r["alternating"]  # d2lx_step and the fastest loop variant, timed A, B, A, B, ...
        if w.group not in targets.STEP_GROUPS:  # the sweep is reported, not judged per step
            assert alternating is None and ra["step_over_loop_alternating"] is None
            continue
        assert alternating["status"] == "ok" and alternating["repeats"] == 2, alternating
        assert alternating["variant"] == ms["loop"]["best_variant"]
        assert alternating["d2lx_s"] > 0 and alternating["loop_s"] > 0
        expected = alternating["d2lx_s"] / alternating["loop_s"]
        assert ra["step_over_loop_alternating"] == pytest.approx(expected)


def test_a_silent_board_keeps_no_points() -> None:
    from benchmarks.methods import silent_board
    from d2lx.board import ProgressBoard

    board = silent_board()
    board.draw(0.5, 1.0, "train_loss")
    board.draw_many([1.0, 2.0], [0.5, 0.25], "val_loss")
    assert isinstance(board, ProgressBoard) and board.lines() == {}


def test_a_staged_runs_setup_is_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from benchmarks import timing

    now = [0.0]  # a fake clock: a setup takes 1 s of it, a run 1 ms
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    made: list[int] = []

    def setup() -> int:
        now[0] += 1.0
        made.append(len(made))
        return made[-1]

    def run(n: int) -> tuple[str, int]:
        now[0] += 0.001
        return "ran", n

    def plain() -> None:
        now[0] += 1.0

    staged = timing.Staged(setup, run)
    samples, out, warmup_s = timing.time_repeats(staged, 3)
    assert samples == pytest.approx([0.001] * 3) and warmup_s == pytest.approx(1.001)  # warm-up: with setup
    assert out == ("ran", 3) and made == [0, 1, 2, 3]  # a fresh setup per run, handed to that run
    staged_s, plain_s = timing.time_interleaved(staged, plain, 2)
    assert staged_s == pytest.approx([0.001] * 2) and plain_s == pytest.approx([1.0] * 2)


def test_short_fits_get_more_alternating_pairs_in_a_full_run() -> None:
    # at least ALTERNATING_SECONDS (1 s) a side, between the workload's repeats and MAX_PAIRS (60)
    assert runner.alternating_pairs(5, 0.150, smoke=False) == 7
    assert runner.alternating_pairs(5, 0.004, smoke=False) == 60
    assert runner.alternating_pairs(11, 0.5, smoke=False) == 11
    assert runner.alternating_pairs(5, 0.004, smoke=True) == 5  # a smoke run keeps its repeats
    assert runner.alternating_pairs(5, None, smoke=False) == 5  # d2lx did not run


def test_targets_follow_the_ratios(doc: dict, framework_backend: str, fuses: bool) -> None:
    rows = doc["targets"]
    for t in rows:
        r = next(r for r in doc["results"] if r["workload"]["name"] == t["workload"])
        assert t["value"] == r["ratios"][t["ratio"]]
        if t["value"] is None:
            assert t["met"] is None
        else:
            expected = t["value"] <= t["threshold"] if t["op"] == "<=" else t["value"] >= t["threshold"]
            assert t["met"] is expected
    by_ratio: dict[str, set[str]] = {}
    for t in rows:
        by_ratio.setdefault(t["ratio"], set()).add(t["workload"])
    assert by_ratio["step_over_loop_alternating"] == {"seed/concise", "seed/scratch", "large/concise", "mlp",
                                                      "loader/concise"}
    assert "step_over_loop" not in by_ratio  # the blocks' ratio is shown, the alternating one judged
    assert by_ratio["board_share"] == {"seed/concise", "seed/scratch"}
    copy_target = fuses and framework_backend in ("jax", "tensorflow", "torch")
    assert by_ratio.get("fused_over_copy_alternating", set()) == ({"large/concise"} if copy_target else set())
    assert "fused_over_copy" not in by_ratio  # the blocks' ratio is shown, the alternating one judged
    keras_rows = by_ratio.get("keras_over_fused", set())
    assert keras_rows == ({"seed/concise", "large/concise", "mlp"} if framework_backend in KERAS_BACKENDS
                          else set())
    assert "bandwidth_fraction" not in by_ratio  # the tiny sweep case is not large


def test_ratios_and_targets_by_hand() -> None:
    w = Workload("sweep/big", "sweep", "concise", 10**6, 15, 8192, 2, 1000)
    assert w.large and w.bytes_per_epoch == 10**6 * 16 * 4
    methods = {"d2lx_step": {"status": "ok", "median_s": 2.0},
               "d2lx_fused": {"status": "ok", "median_s": 1.0},
               "loop": {"status": "ok", "median_s": 4.0}, "keras": {"status": "ok", "median_s": 3.0}}
    r = targets.ratios(methods, {"gbps": 0.256, "median_s": 0.25}, w)
    # without epoch clocks (older files): best d2lx (1 s for 2 epochs) reads 2 x 64 MB: 0.128 GB/s,
    # half of the copy's 0.256 GB/s
    assert r["bandwidth_fraction"] == pytest.approx(0.5) and r["fused_over_copy"] == pytest.approx(2.0)
    # with them, the fastest epoch by the trainer's clock, whichever method ran it
    epochs = {**methods, "d2lx_step": {**methods["d2lx_step"], "epoch_median_s": 0.125},
              "d2lx_fused": {**methods["d2lx_fused"], "epoch_median_s": 0.4}}
    r = targets.ratios(epochs, {"gbps": 0.256, "median_s": 0.25}, w)
    assert r["fused_over_copy"] == pytest.approx(0.5) and r["bandwidth_fraction"] == pytest.approx(2.0)
    assert r["step_over_loop"] == pytest.approx(0.5) and r["loop_over_fused"] == pytest.approx(4.0)
    assert r["keras_over_fused"] == pytest.approx(3.0) and r["keras_over_loop"] == pytest.approx(0.75)
    # a trainer without a fused path: the "fused" ratios are its step-by-step time
    methods["d2lx_fused"] = {"status": "skipped", "same_as": "d2lx_step"}
    r = targets.ratios(methods, None, w)
    assert r["keras_over_fused"] == pytest.approx(1.5) and r["fused_over_copy"] is None
    methods["d2lx_fused"] = {"status": "error", "reason": "boom"}  # a failure is not replaced
    assert targets.ratios(methods, None, w)["keras_over_fused"] is None
    large = {"workload": {**Workload("large/concise", "large", "concise", 10, 2, 5, 1, 5).as_dict()},
             "ratios": {"step_over_loop_alternating": 1.2, "fused_over_copy": 3.5,
                        "fused_over_copy_alternating": 2.5, "keras_over_fused": 0.9}}
    rows = targets.check_targets("jax", [large], fuses=True)
    assert {(t["ratio"], t["met"]) for t in rows} == {("step_over_loop_alternating", False),
                                                      ("fused_over_copy_alternating", True),
                                                      ("keras_over_fused", False)}
    assert {t["ratio"] for t in targets.check_targets("torch", [large], fuses=False)} == {
        "step_over_loop_alternating", "keras_over_fused"}
    assert {t["ratio"] for t in targets.check_targets("mxnet", [large], fuses=True)} == {
        "step_over_loop_alternating"}
    # the alternating run's ratio, when there is one
    assert targets.ratios(methods, None, w, None, {"status": "ok", "ratio": 1.3}
                          )["step_over_loop_alternating"] == pytest.approx(1.3)
    assert targets.ratios(methods, None, w, None, {"status": "error"})["step_over_loop_alternating"] is None
    against = {"status": "ok", "ratio": 2.2}  # the epoch and the copy, timed alternately
    assert targets.ratios(methods, None, w, None, None, against)["fused_over_copy_alternating"] == 2.2
    assert targets.ratios(methods, None, w)["fused_over_copy_alternating"] is None


def test_workload_definitions() -> None:
    full = {w.name: w for w in workloads.select(workloads.GROUPS, quick=False)}
    assert (full["seed/concise"].num_train, full["seed/concise"].num_inputs, full["seed/concise"].batch_size,
            full["seed/concise"].epochs, full["seed/concise"].num_val) == (1000, 2, 32, 3, 1000)
    big = full["large/concise"]
    assert (big.num_train, big.num_inputs, big.batch_size, big.epochs, big.num_val) == (
        100_000, 256, 4096, 1, 100_000)
    mlp = full["mlp"]
    assert (mlp.num_train, mlp.num_inputs, mlp.hidden, mlp.batch_size, mlp.num_val) == (
        100_000, 64, 256, 1024, 10_000)
    loader = full["loader/concise"]
    assert (loader.num_train, loader.num_inputs, loader.batch_size, loader.num_val, loader.loader) == (
        20_000, 64, 256, 5_000, "framework")
    assert [w.keras for w in (full["seed/concise"], full["seed/scratch"], big, mlp, loader)] == [
        True, False, True, True, False]
    gpu = full["gpu/large"]
    assert (gpu.num_train, gpu.num_inputs, gpu.batch_size, gpu.num_val, gpu.device) == (
        1_000_000, 256, 4096, 1_000_000, "gpu")
    assert gpu.large and not gpu.keras and "gpu" not in workloads.DEFAULT_GROUPS
    quick = workloads.select(["sweep"], quick=True)
    assert any(w.large for w in quick), "the smoke sweep must exercise the NumPy-copy comparison"
    init = workloads.initial_params(mlp)
    assert init["W1"].shape == (64, 256) and init["W2"].shape == (256, 1) and init["W1"].dtype == np.float32
    from d2lx.seeding import generator, initial_linear_params

    w0, _ = initial_linear_params(generator("params", workloads.SEED), 2, 0.01)
    np.testing.assert_array_equal(workloads.initial_params(full["seed/scratch"])["w"], w0)


def test_cli_writes_json_and_combine_renders_it(framework_backend: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(workloads.WORKLOADS, "seed", lambda quick: TINY[:1])
    out = tmp_path / f"{framework_backend}.json"
    code = cli.main(["--backend", framework_backend, "--only", "seed", "--repeats", "1", "--spe", "4",
                     "--no-keras", "--quick", "--out", str(out)])
    assert code == 0
    assert "targets (reported, not enforced)" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["schema"] == runner.SCHEMA and doc["smoke"] is True and doc["settings"]["repeats"] == 1
    assert [r["workload"]["name"] for r in doc["results"]] == ["seed/concise"]
    assert combine.main([str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    assert "SMOKE RUN" in table
    assert f"| {framework_backend} | seed/concise |" in table
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--repeats", "two"], ["--only", "seed,nope"],
                                  ["--spe", "8,0"], ["--backend", "nonesuch"]])
def test_bad_options_are_one_line_errors(argv: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([*argv, "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x.json").exists()


def test_gpu_group_is_refused_where_it_cannot_run(framework_backend: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if framework_backend in workloads.GPU_BACKENDS:
        if runner.load_loop(framework_backend).gpu_name() is not None:
            pytest.skip(f"{framework_backend} sees a GPU here: the gpu group would run")
        expected = f"error: the gpu group needs a GPU, and {framework_backend} sees none"
    else:
        expected = f"error: the gpu group times jax and torch, not {framework_backend}"
    code = cli.main(["--backend", framework_backend, "--only", "gpu", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "x.json").exists()


def test_gpu_bandwidth_and_its_table_by_hand(tmp_path: Path) -> None:
    w = Workload("gpu/large", "gpu", "concise", 1000, 255, 100, 1, 1000, device="gpu")
    copy = {"median_s": 0.001, "gbps": 1.024, "bytes": 1_024_000, "kind": "device"}
    b = targets.gpu_bandwidth(w, 0.004, copy, 5.12)
    # an epoch reads 2000 rows of 256 float32 (X and y) at least: 2.048 MB in 4 ms
    assert b["epoch_bytes"] == 2_048_000 and b["epoch_gbps"] == pytest.approx(0.512)
    assert b["copy_traffic_gbps"] == pytest.approx(2.048)  # the copy reads and writes
    assert b["epoch_of_peak"] == pytest.approx(0.1) and b["copy_of_peak"] == pytest.approx(0.4)
    assert targets.gpu_bandwidth(w, None, None, None)["epoch_of_peak"] is None
    ok = {"status": "ok", "median_s": 0.01, "q1_s": 0.009, "q3_s": 0.011}
    doc = {"schema": runner.SCHEMA, "backend": "torch", "date": "2026-11-25", "versions": {"torch": "2.x"},
           "machine": {"cpu": "x86", "cores": 16, "gpu": {"name": "Some GPU", "peak_gbps": 5.12}},
           "settings": {"repeats": 7}, "targets": [],
           "results": [{"workload": w.as_dict(), "numpy_copy": copy, "best_epoch_s": 0.004,
                        "gpu_bandwidth": b, "ratios": {"fused_over_copy": 4.0},
                        "methods": {"d2lx_step": ok, "d2lx_unchecked": ok, "loop": ok,
                                    "d2lx_fused": {"status": "skipped", "same_as": "d2lx_step"}}}]}
    table = combine.markdown([doc])
    assert "| x86 + Some GPU | 16 |" in table and "## GPU workload" in table
    assert "| device copy | best d2lx epoch (trainer's clock) |" in table
    assert "| 1 ms, 1.02 GB/s | 4 ms |" in table
    assert "| torch | Some GPU | 5.12 | 2.048 | 0.4 | 0.512 | 0.1 |" in table


def test_missing_framework_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = [b for b in ("mxnet", "torch", "jax", "tensorflow") if not registry.is_installed(b)]
    if not missing:
        pytest.skip("every framework is installed here")
    code = cli.main(["--backend", missing[0], "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: the {missing[0]} loops need their framework"), err


def test_d2lx_never_imports_benchmarks() -> None:
    """The benchmark application sits outside the package: no import cycle, nothing in the wheel."""
    offenders = []
    for path in (ROOT / "d2lx").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert offenders == []
    assert not (ROOT / "d2lx" / "bench.py").exists()


@pytest.mark.slow
def test_keras_fit_is_timed_in_a_child(framework_backend: str) -> None:
    if framework_backend not in KERAS_BACKENDS:
        pytest.skip(f"Keras 3 has no {framework_backend} backend")
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    chosen = [BY_NAME["seed/concise"], BY_NAME["mlp"]]
    info = run_keras(framework_backend, chosen, repeats={"seed": 1, "mlp": 1}, spe_values=(4,))
    assert info["status"] == "ok", info
    assert info["keras_backend"] == framework_backend
    for w in chosen:
        m = info["workloads"][w.name]
        assert m["status"] == "ok", m
        assert m["median_s"] > 0 and m["us_per_step"] == pytest.approx(m["median_s"] / w.steps * 1e6)
        assert set(m["by_spe"]) == {"1", "4"}
        assert math.isfinite(m["final_val_loss"])
