"""Files a run writes (plots, checkpoints): checked before training, written atomically.

Why before training: a path that cannot be written (a directory, a missing
or read-only folder, an image name without a format) would otherwise fail
after the whole run, and the run's result would be lost to the error. Why
atomically: a full disk or a killed process must leave either the old file
or none, never a truncated one. The few failures that can only happen at
write time (the disk fills up) are :class:`~d2lx.errors.OutputError`\\ s that
say the training itself finished.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d2lx.errors import ArgumentTypeError, InvalidArgumentError, OutputError

#: Image formats a plot can be written in (matplotlib's, by file suffix).
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def check_output_path(name: str, path: Any, *, image: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` a file can be written to, or one clear error naming the fix."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ArgumentTypeError(f"{name} must be a file path (str or Path), got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(
            f"{name} path {str(path)!r} is a directory; give a file name inside it, e.g. "
            f"{str(path / ('loss.png' if image else 'run.safetensors'))!r}")
    if image and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidArgumentError(
            f"{name} path {str(path)!r} has no image format; end it with one of "
            f"{', '.join(IMAGE_SUFFIXES)} (e.g. {str(path.with_suffix('.png'))!r})")
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InvalidArgumentError(f"{name} path {str(path)!r}: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        blocked = path if path.exists() else existing
        raise InvalidArgumentError(
            f"{name} path {str(path)!r} cannot be written: no write permission on {str(blocked)!r}; "
            "choose a writable location")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], what: str) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then move it onto ``path``.

    The temporary file gets the permissions a plain ``open()`` would give
    (the umask), not ``mkstemp``'s 0600, and is removed if anything fails.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"could not write the {what} to {str(path)!r}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain open() gives, not mkstemp's 0600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"could not write the {what} to {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_figure(save: Callable[[Path, str], Any], path: str | Path) -> Path:
    """Write a figure with ``save(file, format)``; the format comes from ``path``'s suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    return atomic_write(path, lambda tmp: save(tmp, fmt), "plot")
