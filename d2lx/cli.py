"""The ``d2lx`` command line: ``d2lx fit``, ``d2lx info``, ``d2lx sweep``.

Every refusal is one line on stderr, ``d2lx: error: <cause and fix>``, with
exit status 2 and no traceback: d2lx's own errors (:class:`d2lx.errors.D2lxError`)
and argparse's usage errors alike. Anything else is a bug and keeps its
traceback. A result that is complete is printed before an error that came
after it (a plot or checkpoint that could not be written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from d2lx import registry
from d2lx.errors import D2lxError, InvalidArgumentError

Handler = Callable[[argparse.Namespace], int]


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after each option's help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, argparse.SUPPRESS, False):
            return help_text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line and every option's default in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Defaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"d2lx: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    """A whole number >= 1; scientific notation is accepted when it is whole (``1e6``)."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value != int(value) or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return int(value)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train the d2l 3.4/3.5 linear regression example",
                       description="Train y = X [2, -3.4] + 4.2 + noise and print the errors "
                                   "in estimating w and b, as d2l 3.4/3.5 do.")
    p.add_argument("--backend", default=None,
                   help=f"torch, jax, tensorflow or mxnet (default: ${registry.BACKEND_ENV_VAR} or torch)")
    p.add_argument("--model", choices=("scratch", "concise"), default="scratch",
                   help="3.4 from-scratch model or 3.5 concise model")
    p.add_argument("--loss", choices=("squared", "huber"), default="squared",
                   help="the model's d2l loss, or Huber's robust loss (d2l 3.5.6 ex. 2)")
    p.add_argument("--huber-sigma", type=_number, default=None,
                   help="sigma of the Huber loss, with --loss huber (default: 1.0)")
    p.add_argument("--epochs", type=_positive_int, default=3, help="training epochs")
    p.add_argument("--lr", type=_number, default=0.03, help="learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="minibatch size")
    p.add_argument("--num-train", type=_positive_int, default=1000, help="training examples")
    p.add_argument("--seed", type=int, default=0, help="seed of data, shuffling and initial weights")
    p.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: $D2LX_DEVICE or cpu)")
    p.add_argument("--devices", type=_positive_int, default=1,
                   help="data-parallel over N devices (torch: N processes via torchrun)")
    p.add_argument("--steps-per-execution", type=_positive_int, default=1,
                   help="optimizer steps per compiled call, where the backend can fuse them")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write d2l's loss curves to this image (.png, .svg, .pdf)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run to PATH (safetensors, atomic) after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint PATH (written by any backend)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_cmd_fit)


def _relaunch_with_torchrun(args: argparse.Namespace) -> int:
    """torch data parallelism is one process per device: check the request, start them with torchrun.

    The processes' output is passed through; if they fail, the one d2lx
    error line a process printed is the command's error, not torchrun's
    traceback of the failed children.
    """
    import subprocess

    if (args.device or os.environ.get("D2LX_DEVICE", "cpu")).startswith("cpu"):
        cores = os.cpu_count() or 1
        if args.devices > cores:
            raise InvalidArgumentError(
                f"--devices {args.devices} on the CPU starts {args.devices} torch processes but this machine "
                f"has {cores} cores; use --devices {min(cores, 2)} or fewer")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.devices}",
           "-m", "d2lx", *args.argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(run.stdout)
    if run.returncode == 0:
        return 0
    ours = [line for line in run.stderr.splitlines() if line.startswith("d2lx: error: ")]
    if ours:
        print(ours[0], file=sys.stderr)
        return 2
    last = next((line for line in reversed(run.stderr.splitlines()) if line.strip()), "no output")
    print(f"d2lx: error: the {args.devices}-process torch run failed (exit {run.returncode}): {last.strip()}",
          file=sys.stderr)
    return 2


def _cmd_fit(args: argparse.Namespace) -> int:
    from d2lx.experiment import run_fit

    backend = registry.canonical_name(args.backend) if args.backend else registry.current_backend_name()
    if args.huber_sigma is not None and args.loss != "huber":
        raise InvalidArgumentError("--huber-sigma sets the Huber loss's sigma; add --loss huber (or drop it)")
    if args.devices > 1 and backend == "torch" and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args)
    quiet = "RANK" in os.environ and os.environ["RANK"] != "0"  # only rank 0 reports
    result = run_fit(
        args.backend, args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        num_train=args.num_train, seed=args.seed, device=args.device,
        steps_per_execution=args.steps_per_execution,
        progress=False if (args.no_progress or args.json) else None, plot=args.plot,
        checkpoint=args.checkpoint, resume=args.resume, devices=args.devices,
        loss=args.loss, huber_sigma=args.huber_sigma,
    )
    if quiet:
        return 0
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        np.set_printoptions(precision=6, suppress=True)
        print(f"backend {result.backend} ({result.framework_version}), model {result.model}, "
              f"device {result.device}, {result.epochs} epochs, {result.steps} steps")
        if result.resumed:
            print(f"resumed from {args.checkpoint} after epoch {result.resumed['epoch']}")
        print(f"error in estimating w: {np.array(result.w_error, dtype=np.float32)}")
        print(f"error in estimating b: {np.array([result.b_error], dtype=np.float32)}")
        print(f"train loss {result.train_loss:.6g}, val loss {result.val_loss:.6g}")
        print(f"fit time: {result.fit_seconds:.3f} s")
        if args.plot and not result.output_error:
            print(f"loss curves written to {result.plot}")
    if result.output_error:
        raise D2lxError(result.output_error)
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list backends: installed?, version, devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_info)


def backend_report() -> list[dict[str, object]]:
    """One row per registered backend; imports each installed framework."""
    rows: list[dict[str, object]] = []
    active = registry.current_backend_name()
    for name, spec in sorted(registry.registered_backends().items()):
        row: dict[str, object] = {"backend": name, "active": name == active, "installed": False,
                                  "version": None, "devices": [], "install": spec.install}
        if registry.is_installed(name):
            try:
                ns = registry.load(name)
                row.update(installed=True, version=ns.framework_version(), devices=ns.list_devices())
            except D2lxError as exc:
                row["error"] = str(exc)
        rows.append(row)
    return rows


def _cmd_info(args: argparse.Namespace) -> int:
    rows = backend_report()
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'backend':<11} {'installed':<9} {'version':<14} devices")
    for r in rows:
        mark = "*" if r["active"] else " "
        if r["installed"]:
            devices = ", ".join(r["devices"])  # type: ignore[arg-type]
            print(f"{mark}{r['backend']:<10} {'yes':<9} {r['version']!s:<14} {devices}")
        else:
            print(f"{mark}{r['backend']:<10} {'no':<9} {'-':<14} install: {r['install']}")
    print(f"* active backend (${registry.BACKEND_ENV_VAR}, default {registry.DEFAULT_BACKEND})")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from d2lx import sweep

    p = sub.add_parser(
        "sweep", help="estimation error against lr, epochs or data size (d2l 3.5 exercises 4-5)",
        description="Train the seed example once per grid point (and backend) and write "
                    "OUT/sweep_<kind>.csv and OUT/sweep_<kind>.png with the errors "
                    "||w_hat - w|| and |b_hat - b| against the swept value.")
    p.add_argument("kind", choices=sweep.SWEEP_KINDS,
                   help="lr: learning rates; epochs: 1..N epochs; data: training set sizes")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--backend", default=None,
                       help=f"one backend (default: ${registry.BACKEND_ENV_VAR} or torch)")
    which.add_argument("--backends", default=None, metavar="B1,B2,...",
                       help="several backends, overlaid on one plot, e.g. torch,jax")
    p.add_argument("--model", choices=("scratch", "concise"), default="concise",
                   help="3.4 from-scratch model or 3.5 concise model")
    p.add_argument("--values", default=None, metavar="V1,V2,...",
                   help="the grid (default: lr 0.001..1, epochs 1..--max-epochs, data 5,10,20,50,...,10000)")
    p.add_argument("--max-epochs", type=_positive_int, default=sweep.MAX_EPOCHS,
                   help="epochs sweep: the grid 1..N when --values is not given")
    p.add_argument("--lr", type=_number, default=0.03, help="learning rate (epochs and data sweeps)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive_int, default=None,
                        help="epochs per run (lr sweep: default 3; data sweep: same epochs at every size)")
    budget.add_argument("--steps", type=_positive_int, default=None,
                        help=f"data sweep: at least this many SGD steps a size (default {sweep.DATA_STEPS})")
    p.add_argument("--num-train", type=_positive_int, default=1000,
                   help="training examples (lr and epochs sweeps)")
    p.add_argument("--batch-size", type=_positive_int, default=32,
                   help="minibatch size, capped at the data size")
    p.add_argument("--noise", type=_number, default=0.01, help="standard deviation of the label noise")
    p.add_argument("--seed", type=int, default=0, help="seed of data, shuffling and initial weights")
    p.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: $D2LX_DEVICE or cpu)")
    p.add_argument("--out", default="sweeps", metavar="DIR", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from d2lx.sweep import run_sweep

    result, csv_path, png_path = run_sweep(
        args.kind, args.out, values=None if args.values is None else args.values.split(","),
        backends=args.backends if args.backends is not None else args.backend,
        model=args.model, seed=args.seed, lr=args.lr, epochs=args.epochs, steps=args.steps,
        num_train=args.num_train, batch_size=args.batch_size, noise=args.noise,
        max_epochs=args.max_epochs, device=args.device, progress=False if args.no_progress else None)
    print(f"{'backend':<11} {'lr':>8} {'n':>6} {'epochs':>6} {'steps':>6} {'|w err|':>10} {'|b err|':>10}")
    for p in result.points:
        flag = "" if p.status == "ok" else f"  {p.status}"
        print(f"{p.backend:<11} {p.lr:>8g} {p.num_train:>6} {p.epochs:>6} {p.steps:>6} "
              f"{p.w_error_norm:>10.3g} {p.b_error_abs:>10.3g}{flag}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


#: Subcommand registrars.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_fit, _add_info, _add_sweep]


def build_parser() -> argparse.ArgumentParser:
    from d2lx import __version__

    parser = Parser(prog="d2lx", description="d2l.ai chapter 3 on any framework")
    parser.add_argument("--version", action="version", version=f"d2lx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _joined_values(argv: list[str]) -> list[str]:
    """``--values -1,0.1`` as ``--values=-1,0.1``: argparse would take ``-1,0.1`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--values" and i + 1 < len(argv):
            out.append(f"--values={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _joined_values(list(sys.argv[1:] if argv is None else argv))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = argv
        handler: Handler = args.handler
        return handler(args)
    except D2lxError as exc:
        message = " ".join(str(exc).split())  # one line, always
        print(f"d2lx: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("d2lx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
