"""Backend selection: precedence, lazy import, errors, entry-point plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import d2lx
from d2lx import registry

FRAMEWORKS = ("torch", "jax", "tensorflow", "mxnet", "flax", "optax", "keras")


def test_import_d2lx_imports_no_framework() -> None:
    code = (
        "import sys, d2lx, d2lx.cli, d2lx.experiment\n"
        f"loaded = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_precedence_use_backend_over_env_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D2LX_BACKEND", raising=False)
    registry._active = None
    assert registry.current_backend_name() == "torch"
    monkeypatch.setenv("D2LX_BACKEND", "TF")
    assert registry.current_backend_name() == "tensorflow"
    registry._active = "jax"
    assert registry.current_backend_name() == "jax"


def test_unknown_backend_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(d2lx.UnknownBackendError) as info:
        d2lx.use_backend("nonexistent")
    for name in ("jax", "mxnet", "tensorflow", "torch"):
        assert name in str(info.value)
    monkeypatch.setenv("D2LX_BACKEND", "nonexistent")
    registry._active = None
    with pytest.raises(d2lx.UnknownBackendError, match="known backends"):
        registry.current_backend_name()


_BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    sys.path.insert(0, sys.argv[1])
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] == 'torch':
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    import d2lx
    try:
        from d2lx import torch as d2l
    except d2lx.BackendNotInstalledError as e:
        print(e)
    """
)


def test_missing_framework_names_the_checkout_install_command() -> None:
    # d2lx is not on the package index: from a checkout, the working command uses its pin file.
    root = Path(d2lx.__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, str(root)], capture_output=True, text=True,
                         check=False, cwd=root)
    words = 'install it with: pip install -r backends/torch.txt -e ".[torch]"'
    assert words in out.stdout, out.stdout + out.stderr


def test_missing_framework_names_the_extra_for_an_installed_d2lx(tmp_path: Path) -> None:
    # An installed d2lx (a wheel) has no pin files beside it: the extra is the command.
    shutil.copytree(Path(d2lx.__file__).resolve().parent, tmp_path / "d2lx")
    out = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, str(tmp_path)], capture_output=True, text=True,
                         check=False, cwd=tmp_path)
    assert 'install it with: pip install "d2lx[torch]"' in out.stdout, out.stdout + out.stderr


def test_entry_point_plugin_is_registered_and_loaded(tmp_path: Path) -> None:
    dist = tmp_path / "d2lx_toy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: d2lx-toy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[d2lx.backends]\ntoy = d2lx_toy_backend\n")
    (tmp_path / "d2lx_toy_backend.py").write_text(
        "BACKEND = 'toy'\n"
        "def framework_version():\n    return '1.0'\n"
        "def list_devices():\n    return ['cpu']\n"
    )
    code = textwrap.dedent(
        """
        import d2lx
        from d2lx import registry
        assert 'toy' in registry.registered_backends()
        with d2lx.use_backend('toy') as ns:
            print(ns.BACKEND, registry.current_backend_name())
        print(registry.current_backend_name())
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("D2LX_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["toy", "toy", "torch"]


def test_cli_unknown_backend_is_one_line_and_nonzero() -> None:
    env = {**os.environ, "D2LX_BACKEND": "nonexistent"}
    out = subprocess.run([sys.executable, "-m", "d2lx", "fit"], capture_output=True, text=True,
                         env=env, check=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert lines[0].startswith("d2lx: error: unknown backend 'nonexistent'")
    for name in ("jax", "mxnet", "tensorflow", "torch"):
        assert name in lines[0]


def test_cli_info_lists_every_backend() -> None:
    out = subprocess.run([sys.executable, "-m", "d2lx", "info", "--json"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    import json

    rows = {r["backend"]: r for r in json.loads(out.stdout)}
    assert {"torch", "jax", "tensorflow", "mxnet"} <= set(rows)
    for row in rows.values():
        assert row["installed"] == bool(row["version"])
        assert row["installed"] or row["install"].startswith("pip install")
