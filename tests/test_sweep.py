"""``d2lx sweep``: one CSV row per grid point and backend, a real PNG, errors that fall with n.

Runs on the active backend (``$D2LX_BACKEND``, else torch); skipped when no
backend is installed. Grids are small so the file runs in seconds.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from d2lx import cli, registry
from d2lx.sweep import DATA_SIZES, SweepPoint, parse_backends, sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL, LARGE = (5, 10, 20), (2000, 5000, 10000)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > height > 100  # two panels side by side


@pytest.fixture(scope="module")
def data_sweep(backend_name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``d2lx sweep data`` through the CLI, small and large sizes, 300 SGD steps each."""
    out = tmp_path_factory.mktemp("sweep")
    grid = ",".join(str(n) for n in SMALL + LARGE)
    status = cli.main(["sweep", "data", "--backend", backend_name, "--values", grid,
                       "--steps", "300", "--out", str(out), "--no-progress"])
    assert status == 0
    return out


def test_data_sweep_writes_one_row_per_grid_point_and_backend(data_sweep: Path, backend_name: str) -> None:
    rows = _rows(data_sweep / "sweep_data.csv")
    assert [int(r["num_train"]) for r in rows] == [*SMALL, *LARGE]
    assert {r["backend"] for r in rows} == {backend_name}
    assert set(rows[0]) == {f.name for f in SweepPoint.__dataclass_fields__.values()}
    for r in rows:
        n, bs = int(r["num_train"]), int(r["batch_size"])
        assert bs == min(32, n)  # the batch never exceeds the data
        assert int(r["steps"]) == int(r["epochs"]) * math.ceil(n / bs) >= 300
        assert r["status"] == "ok"
        assert math.isfinite(float(r["w_error_norm"])) and math.isfinite(float(r["b_error_abs"]))


def test_data_sweep_writes_a_png(data_sweep: Path) -> None:
    _assert_png(data_sweep / "sweep_data.png")


def test_data_sweep_errors_fall_as_the_data_grows(data_sweep: Path) -> None:
    rows = _rows(data_sweep / "sweep_data.csv")
    for column in ("w_error_norm", "b_error_abs"):
        error = {int(r["num_train"]): float(r[column]) for r in rows}
        small = np.mean([error[n] for n in SMALL])
        large = np.mean([error[n] for n in LARGE])
        assert small > 2 * large, f"{column}: mean {small:.3g} at n={SMALL} vs {large:.3g} at n={LARGE}"


def test_default_data_grid_is_the_books_log_grid() -> None:
    assert DATA_SIZES[0] == 5 and DATA_SIZES[-1] == 10_000
    ratios = np.diff(np.log10(DATA_SIZES))
    assert np.all(ratios > 0.3) and np.all(ratios < 0.5)  # 1-2-5 steps: evenly spread on a log axis


def test_lr_sweep_records_a_diverging_point_and_goes_on(backend_name: str, tmp_path: Path) -> None:
    status = cli.main(["sweep", "lr", "--backend", backend_name, "--values", "0.3,100",
                       "--epochs", "10", "--num-train", "64", "--out", str(tmp_path), "--no-progress"])
    assert status == 0
    rows = _rows(tmp_path / "sweep_lr.csv")
    assert [float(r["lr"]) for r in rows] == [0.3, 100.0]
    assert [r["status"] for r in rows] == ["ok", "diverged"]
    assert float(rows[0]["w_error_norm"]) < 0.1  # converged: 20 steps of lr 0.3
    assert math.isnan(float(rows[1]["w_error_norm"]))
    _assert_png(tmp_path / "sweep_lr.png")


def test_epochs_sweep_runs_1_to_n_and_improves(backend_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = sweep("epochs", backends=backend_name, max_epochs=3, progress=True)
    assert [p.epochs for p in result.points] == [1, 2, 3]
    assert [p.steps for p in result.points] == [32, 64, 96]  # 1000 examples, batches of 32
    errors = [p.w_error_norm for p in result.points]
    assert errors[2] < errors[0]
    assert "sweep epochs:" in capsys.readouterr().err  # the grid's progress bar (tqdm)


def test_backends_are_canonical_and_not_repeated(backend_name: str) -> None:
    assert parse_backends(f"{backend_name}, {backend_name.upper()}") == [backend_name]
    assert parse_backends([backend_name]) == [backend_name]


def _status_and_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().err


def test_a_backend_not_installed_is_one_line_naming_its_install_command(
    backend_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = [n for n in sorted(registry.BUILTIN_BACKENDS) if not registry.is_installed(n)]
    if not missing:
        pytest.skip("every built-in backend is installed here")
    name = missing[0]
    status, err = _status_and_error(
        ["sweep", "data", "--backends", f"{backend_name},{name}", "--out", str(tmp_path)], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("d2lx: error: ")
    assert registry.BUILTIN_BACKENDS[name].install in err
    assert not list(tmp_path.iterdir())  # refused before any run


@pytest.mark.parametrize(("argv", "needle"), [
    (["sweep", "data", "--values", "5,abc"], "'abc' is not a number"),
    (["sweep", "data", "--values", "5,7.5"], "whole numbers"),
    (["sweep", "lr", "--values", "0.1,-1"], "must be positive"),
    (["sweep", "lr", "--steps", "10"], "data sweep only"),
    (["sweep", "epochs", "--epochs", "3"], "sweeps the epochs"),
    (["sweep", "data", "--backend", "theano"], "unknown backend 'theano'"),
])
def test_bad_sweeps_are_one_line_errors(
    backend_name: str, argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--backend" not in argv:
        argv = [*argv, "--backend", backend_name]
    status, err = _status_and_error([*argv, "--out", str(tmp_path)], capsys)
    assert status == 2
    assert err.startswith("d2lx: error: ") and err.count("\n") == 1
    assert needle in err


def test_an_out_folder_that_cannot_be_made_is_refused_before_the_first_fit(
    backend_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import d2lx.sweep

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fit ran before the output paths were checked")

    monkeypatch.setattr(d2lx.sweep, "run_fit", no_fit)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    status, err = _status_and_error(["sweep", "lr", "--values", "0.1", "--epochs", "1", "--backend",
                                     backend_name, "--out", str(a_file), "--no-progress"], capsys)
    assert status == 2
    assert err.startswith("d2lx: error: ") and err.count("\n") == 1
    assert str(a_file) in err and "not a directory" in err
    assert a_file.read_text() == "not a folder"
    import d2lx

    with pytest.raises(d2lx.ArgumentTypeError, match=r"out must be a folder path \(str or Path\), got 3"):
        d2lx.sweep.run_sweep("lr", out=3, backends=backend_name)  # type: ignore[arg-type]


def test_sweep_results_are_written_whole_or_not_at_all(backend_name: str, tmp_path: Path) -> None:
    """A write that fails (here: a file where the folder should be) is one OutputError and leaves
    no partial file; a good write leaves no temporary file beside the result."""
    import d2lx
    from d2lx.sweep_results import plot_sweep, write_csv

    result = sweep("lr", [0.1], backends=backend_name, epochs=1, progress=False)
    blocker = tmp_path / "taken"
    blocker.write_text("")
    for write in (write_csv, plot_sweep):
        with pytest.raises(d2lx.OutputError, match="could not write"):
            write(result, blocker / "sweep.out")
    assert _rows(write_csv(result, tmp_path / "s.csv"))[0]["status"] == "ok"
    _assert_png(plot_sweep(result, tmp_path / "s.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.png", "taken"]
