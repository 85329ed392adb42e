"""Run the d2l book's chapter 3 cells on d2lx, as a reader would (developer tool).

The book is the spec for the reader's side: its code cells must run on d2lx
with only the import line changed. This tool checks that against a local
checkout of the book's sources (https://github.com/d2l-ai/d2l-en), which is
not part of this repository (the book's code is not ours to copy):

    python tools/book.py extract D2L_EN_CHECKOUT OUT      # needs d2lbook
    python tools/book.py run OUT --backend torch          # needs nbclient + ipykernel

``extract`` uses the book's own build tool, ``d2lbook``, to cut each section's
markdown into one notebook per framework tab (what d2l.ai shows as the
PyTorch, JAX, TensorFlow and MXNet versions), replaces
``from d2l import <fw> as d2l`` by ``from d2lx import <fw> as d2l`` and
nothing else, and writes ``OUT/<backend>/<section>.ipynb``. ``run`` executes
each notebook of one backend in a fresh Jupyter kernel of the current
environment (nbclient) and prints one line per section: ``ok`` with the
last printed lines, or the error. ``nox -s book -- D2L_EN_CHECKOUT`` runs both
phases for every backend.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

SECTIONS = ("oo-design", "synthetic-regression-data", "linear-regression-scratch",
            "linear-regression-concise", "weight-decay")
TABS = {"pytorch": "torch", "jax": "jax", "tensorflow": "tensorflow", "mxnet": "mxnet"}
CHAPTER = "chapter_linear-regression"


def _import_line(tab: str) -> tuple[re.Pattern[str], str]:
    """The one line a reader changes: d2l's import of its framework module."""
    backend = TABS[tab]
    return (re.compile(rf"^from d2l import {backend} as d2l\s*$", re.M),
            f"from d2lx import {backend} as d2l")


def extract(book: Path, out: Path) -> int:
    import nbformat
    from d2lbook import notebook

    for section in SECTIONS:
        source = (book / CHAPTER / f"{section}.md").read_text()
        nb = notebook.split_markdown_cell(notebook.read_markdown(source))
        for tab, backend in TABS.items():
            tab_nb = notebook.get_tab_notebook(nb, tab, default_tab="mxnet")
            if tab_nb is None:
                continue
            pattern, replacement = _import_line(tab)
            cells, changed = [], 0
            for cell in tab_nb.cells:
                if cell.cell_type != "code":
                    continue
                code, n = pattern.subn(replacement, cell.source)
                changed += n
                cells.append(nbformat.v4.new_code_cell(code))
            if changed != 1:
                print(f"{backend}/{section}: expected one d2l import line, found {changed}")
                return 1
            folder = out / backend
            folder.mkdir(parents=True, exist_ok=True)
            new = nbformat.v4.new_notebook(cells=cells)
            new.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                          "language": "python"}
            nbformat.write(new, folder / f"{section}.ipynb")
    print(f"wrote {len(SECTIONS)} sections x {len(TABS)} frameworks to {out}")
    return 0


def _text_outputs(nb: object) -> list[str]:
    lines: list[str] = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                lines.extend(output["text"].splitlines())
            elif output.get("output_type") == "execute_result":
                lines.extend(output.get("data", {}).get("text/plain", "").splitlines())
    return lines


def _images(nb: object) -> int:
    return sum(1 for cell in nb.cells for o in cell.get("outputs", [])  # type: ignore[attr-defined]
               if any(k.startswith("image/") for k in o.get("data", {})))


def run(folder: Path, backend: str, report: Path | None) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    results = []
    for section in SECTIONS:
        path = folder / backend / f"{section}.ipynb"
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=900, kernel_name="python3").execute()
            ok, detail = True, ""
        except CellExecutionError as exc:
            ok = False
            detail = str(exc).strip().splitlines()[-1][:300]
        seconds = time.perf_counter() - start
        printed = _text_outputs(nb)
        results.append({"backend": backend, "section": section, "ok": ok, "error": detail,
                        "seconds": round(seconds, 1), "images": _images(nb), "printed": printed[-6:]})
        mark = "ok  " if ok else "FAIL"
        print(f"{mark} {backend:<10} {section:<28} {seconds:6.1f}s images={_images(nb)} {detail}")
        for line in printed[-4:]:
            print(f"       | {line}")
    if report is not None:
        report.write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract")
    p.add_argument("book", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("run")
    p.add_argument("folder", type=Path)
    p.add_argument("--backend", required=True, choices=sorted(set(TABS.values())))
    p.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "extract":
        return extract(args.book, args.out)
    return run(args.folder, args.backend, args.report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
