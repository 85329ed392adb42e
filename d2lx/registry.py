"""The backend registry: which backends exist, which is active, lazy loading.

``import d2lx`` imports no deep-learning framework. A backend's namespace
module (``d2lx.torch``...) is imported the first time something asks
for it, and only then is its framework imported.

Precedence for the active backend: ``use_backend(name)`` (or an explicit
``backend=`` argument where an API takes one) > ``$D2LX_BACKEND`` > ``torch``.

Third-party backends register through the ``d2lx.backends`` entry-point group:
the entry point's name is the backend name and its value the import path of a
namespace module that provides the same names as ``d2lx.torch``
(see ``docs/adding-a-backend.md``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType, TracebackType

from d2lx.errors import BackendNotInstalledError, UnknownBackendError

BACKEND_ENV_VAR = "D2LX_BACKEND"
DEFAULT_BACKEND = "torch"
ENTRY_POINT_GROUP = "d2lx.backends"


@dataclass(frozen=True)
class BackendSpec:
    """What d2lx knows about a backend before importing it."""

    name: str
    module: str  # import path of the backend's namespace module
    frameworks: tuple[str, ...]  # top-level packages the backend needs
    install_extra: str = ""  # a built-in backend's pip extra ("" for plugins)
    install_note: str = ""
    plugin_install: str = ""  # a plugin's install command

    @property
    def install(self) -> str:
        """The command that installs what is missing.

        A built-in backend, run from a checkout of d2lx (which is not on the
        package index), installs from the checkout's pin file; an installed
        d2lx names its extra.
        """
        if not self.install_extra:
            return self.plugin_install
        root = Path(__file__).resolve().parent.parent
        pins = root / "backends" / f"{self.install_extra}.txt"
        if pins.is_file():
            where = Path(os.path.relpath(root)) if root in (Path.cwd(), *Path.cwd().parents) or \
                Path.cwd() in root.parents else root
            command = f'pip install -r {where / pins.relative_to(root)} -e "{where}[{self.install_extra}]"'
        else:
            command = f'pip install "d2lx[{self.install_extra}]"'
        return command + (f" ({self.install_note})" if self.install_note else "")


BUILTIN_BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("torch", "d2lx.torch", ("torch",), "torch"),
        BackendSpec("jax", "d2lx.jax", ("jax", "flax", "optax"), "jax"),
        BackendSpec("tensorflow", "d2lx.tensorflow", ("tensorflow",), "tensorflow"),
        BackendSpec("mxnet", "d2lx.mxnet", ("mxnet",), "mxnet",
                    "in an environment of its own: MXNet needs numpy<1.24"),
    )
}

# Names people type for the same thing.
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "mx": "mxnet",
           "gluon": "mxnet", "flax": "jax"}

_active: str | None = None
_loaded: dict[str, ModuleType] = {}


def _entry_point_specs() -> dict[str, BackendSpec]:
    specs: dict[str, BackendSpec] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_BACKENDS:
            continue  # built-ins cannot be replaced by a plugin
        module = ep.value.split(":")[0]
        dist = ep.dist.name if ep.dist is not None else module.split(".")[0]
        specs[ep.name] = BackendSpec(ep.name, module, (module.split(".")[0],),
                                     plugin_install=f"pip install {dist}")
    return specs


def registered_backends() -> dict[str, BackendSpec]:
    """Every known backend: the four built-ins plus entry-point plugins."""
    return {**BUILTIN_BACKENDS, **_entry_point_specs()}


def canonical_name(name: str) -> str:
    """Map an alias (``"tf"``) to its backend name; raise for unknown names."""
    if not isinstance(name, str):
        raise UnknownBackendError(f"backend name must be a string, got {name!r}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    known = registered_backends()
    if key not in known:
        raise UnknownBackendError(
            f"unknown backend {name!r}; known backends: {', '.join(sorted(known))} "
            f"(set {BACKEND_ENV_VAR} or use_backend() to one of them)"
        )
    return key


def current_backend_name() -> str:
    """The active backend's name, by the precedence in this module's docstring."""
    if _active is not None:
        return _active
    env = os.environ.get(BACKEND_ENV_VAR, "").strip()
    return canonical_name(env) if env else DEFAULT_BACKEND


def is_installed(name: str) -> bool:
    """True if every framework package the backend needs can be found (no import)."""
    import importlib.util

    spec = registered_backends()[canonical_name(name)]
    return all(importlib.util.find_spec(pkg) is not None for pkg in spec.frameworks)


def load(name: str | None = None) -> ModuleType:
    """Import and return a backend's namespace module (the active one by default)."""
    key = current_backend_name() if name is None else canonical_name(name)
    if key in _loaded:
        return _loaded[key]
    spec = registered_backends()[key]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        missing = exc.name or ""
        if missing.split(".")[0] in spec.frameworks or not is_installed(key):
            raise BackendNotInstalledError(
                f"backend {key!r} needs {', '.join(spec.frameworks)}, which could not be "
                f"imported ({exc}); install it with: {spec.install}"
            ) from exc
        raise BackendNotInstalledError(
            f"backend {key!r} is installed but failed to import ({type(exc).__name__}: {exc}); its "
            f"installation is broken or of an unsupported version: reinstall it with: {spec.install}"
        ) from exc
    _loaded[key] = module
    return module


class use_backend:
    """Select the active backend; also a context manager that restores the old one.

    ``d2lx.use_backend("jax")`` switches for the rest of the program;
    ``with d2lx.use_backend("jax") as d2l: ...`` switches inside the block and
    binds ``d2l`` to the backend's namespace. The backend is imported at once,
    so a missing framework fails here, not later in the middle of a run.
    """

    def __init__(self, name: str) -> None:
        global _active
        self._previous = _active
        self.name = canonical_name(name)
        self.namespace = load(self.name)
        _active = self.name

    def __enter__(self) -> ModuleType:
        return self.namespace

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _active
        _active = self._previous

    def __repr__(self) -> str:
        return f"use_backend({self.name!r})"
