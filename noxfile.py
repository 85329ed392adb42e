"""nox sessions: the test suite once per backend, each in its own environment.

    nox                           # tests on every backend, crosscheck, lint, typecheck, docs
    nox -s "tests(backend='jax')" # one backend
    nox -s lint typecheck         # static checks
    nox -s demo                   # `d2lx fit` on every backend, both models
    nox -s book_extract book -- PATH/TO/d2l-en  # the book's chapter 3 cells on every backend

Each backend's environment is installed from its pin file ``backends/<name>.txt``
(MXNet needs numpy<1.24, so no two frameworks share an environment). A backend
joins the matrix when its adapter package ``d2lx/backends/<name>/`` exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
BACKENDS = sorted(
    p.stem for p in (ROOT / "backends").glob("*.txt") if (ROOT / "d2lx" / "backends" / p.stem).is_dir()
)

# uv is faster when present, but it does not see the CPU torch wheel this
# machine keeps on disk (pip does) and would download a multi-GB CUDA build, so
# the framework environments (tests, demo) use virtualenv + pip and pip's
# download cache; the tool-only sessions use uv when it is there.
FAST_VENV = "uv|virtualenv" if shutil.which("uv") else "virtualenv"

nox.options.sessions = ["tests", "crosscheck", "lint", "typecheck", "docs"]
nox.options.error_on_missing_interpreters = True


def _install_backend(session: nox.Session, backend: str, *extra: str) -> None:
    # One resolver pass: the pins and the package together, so nothing drifts.
    session.install("-r", f"backends/{backend}.txt", "-e", ".[dev]", *extra)


@nox.session(python="3.11", venv_backend="virtualenv")
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The core tests and the conformance suite on one backend."""
    _install_backend(session, backend)
    session.run(
        "pytest", *(session.posargs or ["-q"]),
        env={"D2LX_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _backend_python(backend: str) -> Path:
    """The interpreter of the `tests` session's environment for ``backend``."""
    for venv in sorted((ROOT / ".nox").glob(f"tests*{backend}*")):
        python = venv / "bin" / "python"
        if python.exists():
            return python
    raise FileNotFoundError(backend)


@nox.session(python=False)
def crosscheck(session: nox.Session) -> None:
    """Checkpoints written on every backend load on every other (through files).

    Reuses the environments of the `tests` sessions (run them first; plain
    `nox` does), because the backends' pins cannot share one environment.
    """
    try:
        pythons = {b: _backend_python(b) for b in BACKENDS}
    except FileNotFoundError as missing:
        session.error(f"no tests environment for {missing}; run `nox -s tests` first")
    if len(pythons) < 2:
        session.skip("cross-backend checks need at least two backends")
    folder = ROOT / ".nox" / "_crosscheck"
    shutil.rmtree(folder, ignore_errors=True)
    for phase in ("write", "read"):
        for backend, python in pythons.items():
            session.run(str(python), "tests/crosscheck.py", phase, str(folder),
                        env={"D2LX_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CI": "1"},
                        external=True)


@nox.session(python="3.11", venv_backend=FAST_VENV)
def lint(session: nox.Session) -> None:
    """ruff: style and common bugs."""
    session.install("ruff==0.17.6")
    paths = [p for p in ("d2lx", "tests", "benchmarks", "noxfile.py") if (ROOT / p).exists()]
    session.run("ruff", "check", *paths)


@nox.session(python="3.11", venv_backend=FAST_VENV)
def typecheck(session: nox.Session) -> None:
    """mypy on d2lx (the backends included) and the benchmark application (frameworks not installed: Any)."""
    session.install("mypy==2.4.1", "-e", ".")
    session.run("mypy", "d2lx", "benchmarks")


@nox.session(python="3.11", venv_backend="virtualenv")
@nox.parametrize("backend", BACKENDS)
def demo(session: nox.Session, backend: str) -> None:
    """The main job on one backend: `d2lx fit` with both models."""
    _install_backend(session, backend)
    for model in ("scratch", "concise"):
        session.run("d2lx", "fit", "--backend", backend, "--model", model, "--no-progress")


@nox.session(python="3.11", venv_backend="virtualenv")
def docs(session: nox.Session) -> None:
    """The docs site: its code blocks run (torch), then `mkdocs build --strict`.

    Broken links, missing anchors and unresolvable API references fail the
    build. `nox -s docs -- serve` serves the site on http://127.0.0.1:8000.
    """
    _install_backend(session, "torch", "mkdocs==1.6.1", "mkdocs-material==9.8.1",
                     "mkdocstrings==1.0.8", "mkdocstrings-python==2.0.11")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
        return
    session.run("pytest", "-q", "tests/test_docs.py", env={"D2LX_BACKEND": "torch", "CI": "1"})
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


# -- benchmarks -----------------------------------------------------------------------------
# Every backend with a pin file is benchmarked, adapter or not: without a d2lx
# adapter the run still times the hand-written loop and Keras, and says why
# the d2lx columns are empty. Keras 3 runs on jax, tensorflow and torch; the
# TensorFlow pins already hold it, the others get the same version added.
BENCH_BACKENDS = sorted(p.stem for p in (ROOT / "backends").glob("*.txt"))
BENCH_KERAS = {"jax": ("keras==3.15.1",), "torch": ("keras==3.15.1",)}


@nox.session(python="3.11", venv_backend="virtualenv")
@nox.parametrize("backend", BENCH_BACKENDS)
def bench(session: nox.Session, backend: str) -> None:
    """`python -m benchmarks` on one backend (JSON), then the combined table + plot of all results.

    `nox -s bench` runs every backend in turn, each in its own environment;
    extra arguments go to `python -m benchmarks` (`nox -s bench -- --quick`).
    """
    session.install("-r", f"backends/{backend}.txt", "-e", ".", *BENCH_KERAS.get(backend, ()))
    quick = "--quick" in session.posargs
    results = ROOT / "benchmarks" / "results" / ("smoke" if quick else "")
    session.run("python", "-m", "benchmarks", "--backend", backend,
                "--out", str(results / f"{backend}.json"),
                *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "3", "CI": "1"})
    session.run("python", "benchmarks/combine.py", str(results))


# -- the book (issue #13): d2l's chapter 3 cells, only the import line changed ---------------------
BOOK_EXTRA = {"jax": ("tensorflow-cpu==2.21.0", "tensorflow-datasets==4.9.10")}  # the JAX cells import both


@nox.session(python="3.11", venv_backend="virtualenv")
def book_extract(session: nox.Session) -> None:
    """Cut the chapter's sections into one notebook per framework with the book's own tool, d2lbook."""
    if not session.posargs:
        session.error("pass a checkout of https://github.com/d2l-ai/d2l-en: nox -s book -- PATH")
    session.install("d2lbook==1.0.3")
    session.run("python", "tools/book.py", "extract", session.posargs[0], str(ROOT / ".nox" / "_book"))


@nox.session(python="3.11", venv_backend="virtualenv")
@nox.parametrize("backend", BACKENDS)
def book(session: nox.Session, backend: str) -> None:
    """Run the chapter 3 notebooks of one framework on d2lx in Jupyter kernels (nbclient).

    ``nox -s book_extract book -- PATH/TO/d2l-en`` extracts them first.
    """
    notebooks = ROOT / ".nox" / "_book"
    if not (notebooks / backend).is_dir():
        session.error("no extracted notebooks: run `nox -s book_extract book -- PATH/TO/d2l-en`")
    _install_backend(session, backend, "nbclient", "ipykernel", *BOOK_EXTRA.get(backend, ()))
    session.run("python", "tools/book.py", "run", str(notebooks), "--backend", backend,
                "--report", str(notebooks / f"{backend}.json"), env={"TF_CPP_MIN_LOG_LEVEL": "3"})
