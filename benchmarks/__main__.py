"""The command line: ``python -m benchmarks --backend torch [--only seed,mlp] [--quick] ...``.

One run times one backend and writes one JSON file (default
``benchmarks/results/<backend>.json``; smoke runs ``benchmarks/results/smoke/``);
``python benchmarks/combine.py DIR`` renders a folder of them. Bad options
are refused with one ``error: ...`` line and exit status 2, before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.workloads import DEFAULT_GROUPS, GROUPS, select

HERE = Path(__file__).resolve().parent
DEFAULT_SPE = (8, 32, 128, 1024)
#: Timed runs per method: many for the short seed runs, fewer where one run takes seconds.
REPEATS = {"seed": 11, "large": 5, "mlp": 5, "loader": 5, "sweep": 3, "gpu": 7}
QUICK_REPEATS = {"seed": 3, "large": 3, "mlp": 3, "loader": 3, "sweep": 2, "gpu": 3}


class UsageError(Exception):
    """A bad option: one line on stderr, exit status 2."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--backend", default=None,
                   help="the one backend to time (default: $D2LX_BACKEND or torch)")
    p.add_argument("--only", default=",".join(DEFAULT_GROUPS), metavar="GROUP,...",
                   help=f"workload groups to run, a comma list of {', '.join(GROUPS)} (default: all but "
                        "gpu, which needs a GPU and times torch or jax there)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes, 2-3 repeats, labelled smoke, written to results/smoke/")
    p.add_argument("--repeats", default=None, metavar="N",
                   help="timed runs per method, N >= 1 (default: seed 11, large/mlp/loader 5, sweep 3, "
                        "gpu 7)")
    p.add_argument("--spe", default=",".join(map(str, DEFAULT_SPE)), metavar="N,...",
                   help="steps_per_execution values for fused d2lx and Keras (default: %(default)s)")
    p.add_argument("--no-keras", action="store_true", help="skip Keras 3 fit")
    p.add_argument("--out", default=None, metavar="PATH", help="JSON file to write")
    return p


def _groups(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise UsageError(f"--only takes a comma list of {', '.join(GROUPS)}; got {text!r}")
    return groups


def _positive_ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option} takes integers >= 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        groups = _groups(args.only)
        spe = tuple(_positive_ints("--spe", args.spe))
        repeats: int | dict[str, int] = QUICK_REPEATS if args.quick else REPEATS
        if args.repeats is not None:
            values = _positive_ints("--repeats", args.repeats)
            if len(values) != 1:
                raise UsageError(f"--repeats takes one integer >= 1, got {args.repeats!r}")
            repeats = values[0]
        from d2lx import registry
        from d2lx.errors import D2lxError

        try:
            backend = (registry.canonical_name(args.backend) if args.backend
                       else registry.current_backend_name())
        except D2lxError as exc:
            raise UsageError(str(exc)) from None
        from benchmarks.report import format_report
        from benchmarks.runner import FrameworkMissing, GpuMissing, run_backend

        default = HERE / "results" / ("smoke" if args.quick else "") / f"{backend}.json"
        out = Path(args.out) if args.out else default
        try:
            doc = run_backend(backend, select(groups, args.quick), repeats=repeats, spe_values=spe,
                              keras=not args.no_keras, smoke=args.quick,
                              log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
        except (FrameworkMissing, GpuMissing) as exc:
            raise UsageError(str(exc)) from None
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(format_report(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
