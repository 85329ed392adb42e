"""Reading d2lx 0.1 checkpoints (``.npz``: NumPy arrays and one JSON document).

They held the two linear models only (``param/w``, ``param/b``), so they
convert to the current layout (those parameters as the model's state), and
:mod:`d2lx.checkpoint` checks every field like a current file's. Anything that
fails is a :class:`~d2lx.errors.CheckpointError`, never a traceback: the
archive is read from memory, with pickles refused, and every NumPy or zip
error becomes one message.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from d2lx.errors import CheckpointError

FORMAT_V1 = "d2lx-checkpoint"


def load_npz(path: Path, raw: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """``(model, optimizer, meta)`` of a format-1 file (the caller checks the fields)."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is truncated or not a d2lx checkpoint ({why}); delete it and train "
                               "again, or point to another checkpoint")

    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # zip, zlib, NumPy header and "pickle refused" errors alike
        raise refuse(f"{type(exc).__name__}: {exc}") from None
    if "__format__" not in files or files["__format__"].shape != () or str(files["__format__"]) != FORMAT_V1:
        raise CheckpointError(f"{path} is not a d2lx checkpoint (an .npz without the d2lx header); "
                              "point to a file written by Trainer.save_checkpoint")
    try:
        version = int(files["__version__"])
        meta = json.loads(str(files["__meta__"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise refuse(f"its header is damaged: {type(exc).__name__}: {exc}") from None
    if version != 1:
        raise refuse(f"an .npz checkpoint of format {version}; d2lx wrote .npz only as format 1")
    params = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("param/")}
    optimizer = {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith("optim/")}
    if sorted(params) != ["b", "w"]:
        raise refuse(f"it holds parameters {sorted(params)}, not the linear model's w and b")
    if not isinstance(meta, dict):
        raise refuse("its run description is not a JSON object")
    meta.setdefault("val_step", 0)
    meta["linear"] = True
    return params, optimizer, meta

