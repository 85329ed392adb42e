"""Combine per-backend benchmark JSON files into a Markdown table and a PNG plot.

    python benchmarks/combine.py benchmarks/results            # every *.json there
    python benchmarks/combine.py a.json b.json --out-dir DIR

Writes ``results.md`` and ``results.png`` next to the inputs (or in
``--out-dir``): one table per workload group, then the targets. Needs only
NumPy and matplotlib, so it runs in any backend's environment (and as a
plain script: it imports nothing of ``benchmarks``). Files from a smoke run
(``python -m benchmarks --quick``) are labelled as such in every output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: This version's documents, and the previous one (seed and sweep tables only).
SCHEMAS = ("d2lx-bench/2", "d2lx-bench/1")
METHODS = (("d2lx_step", "d2lx step"), ("d2lx_fused", "d2lx fused"), ("loop", "hand-written loop"),
           ("keras", "Keras 3 fit"), ("d2lx_unchecked", "d2lx step, check_finite=False"))

#: The per-step ratios every group shows: the blocks' medians, and the alternating run's (the target's).
STEP_RATIOS = (("step_over_loop", "step / loop"), ("step_over_loop_alternating", "step / loop, alternating"))

#: group -> (title, unit key, unit label, methods shown, ratio columns (key, header)).
GROUPS: dict[str, tuple[str, str, str, tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "seed": ("Seed workload (d2l 3.4/3.5, both models)",
             "us_per_step", "microseconds per optimizer step (the run / its steps; validation included)",
             ("d2lx_step", "d2lx_fused", "loop", "keras"),
             (*STEP_RATIOS, ("loop_over_fused", "loop / fused"), ("keras_over_fused", "Keras / fused"),
              ("board_share", "board share"))),
    "large": ("Large workload (bandwidth-bound, concise model)",
              "epoch_ms", "milliseconds per epoch, validation included",
              ("d2lx_step", "d2lx_fused", "loop", "keras"),
              (*STEP_RATIOS, ("fused_over_loop", "fused / loop"),
               ("fused_over_copy", "best epoch / NumPy copy"),
               ("fused_over_copy_alternating", "best epoch / NumPy copy, alternating"),
               ("bandwidth_fraction", "d2lx / copy GB/s"),
               ("keras_over_fused", "Keras / fused"))),
    "mlp": ("MLP workload (a reader's d2lx Module with framework layers, SGD)",
            "epoch_ms", "milliseconds per epoch, validation included",
            ("d2lx_step", "d2lx_fused", "loop", "keras"),
            (*STEP_RATIOS, ("fused_over_loop", "fused / loop"), ("keras_over_fused", "Keras / fused"))),
    "loader": ("Framework-loader workload (the framework's own loader, concise model)",
               "epoch_ms", "milliseconds per epoch, validation included",
               ("d2lx_step", "loop"), STEP_RATIOS),
    "gpu": ("GPU workload (the large workload scaled to 1,000,000 x 256, on GPU 0)",
            "epoch_ms", "milliseconds per epoch, validation included",
            ("d2lx_step", "d2lx_unchecked", "d2lx_fused", "loop"),
            (*STEP_RATIOS, ("fused_over_loop", "fused / loop"),
             ("fused_over_copy", "best epoch / device copy"),
             ("fused_over_copy_alternating", "best epoch / device copy, alternating"))),
}
#: The sweep table's method columns (its header names them).
SWEEP_METHODS = ("d2lx_step", "d2lx_fused", "loop", "keras")
#: Groups whose epochs are held against a copy of their data (NumPy's; the device's on a GPU).
COPY_GROUPS = ("large", "gpu")


def load(paths: list[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    docs = []
    for f in files:
        doc = json.loads(f.read_text())
        if doc.get("schema") in SCHEMAS:
            docs.append(doc)
    return sorted(docs, key=lambda d: d["backend"])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _value(m: dict[str, Any], key: str, epochs: int) -> tuple[float, float]:
    """The method's median in the unit of ``key`` and the factor from seconds to that unit."""
    if key == "epoch_ms":
        scale = 1e3 / epochs
    else:
        scale = m[key] / m["median_s"]
    return m["median_s"] * scale, scale


def _cell(m: dict[str, Any], key: str, epochs: int) -> str:
    """``median [q1-q3]`` in the unit of ``key``, or why there is no number."""
    if m.get("status") != "ok":
        return "= step" if m.get("same_as") == "d2lx_step" else f"_{m.get('status', '-')}_"
    med, scale = _value(m, key, epochs)
    text = f"{med:.3g} [{m['q1_s'] * scale:.3g}-{m['q3_s'] * scale:.3g}]"
    for k in ("best_spe", "best_variant"):
        if k in m:
            text += f" ({k.split('_', 1)[1]} {m[k]})"
    return text


def _rate(m: dict[str, Any], key: str) -> str:
    return _fmt(m.get(key)) if m.get("status") == "ok" else "-"


def _data(w: dict[str, Any]) -> str:
    """``n x d (-> h), batch b, e epoch(s), v val``: the workload's size, as the run used it."""
    hidden = f" -> {w['hidden']}" if w.get("hidden") else ""
    return (f"{w['num_train']} x {w['num_inputs']}{hidden}, batch {w['batch_size']}, {w['epochs']} ep, "
            f"{w.get('num_val', 0)} val")


def _rows(docs: list[dict[str, Any]], group: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, r) for d in docs for r in d["results"] if r["workload"]["group"] == group]


def _group_table(docs: list[dict[str, Any]], group: str) -> list[str]:
    title, key, unit, methods, ratio_cols = GROUPS[group]
    rows = _rows(docs, group)
    if not rows:
        return []
    labels = dict(METHODS)
    lines = ["", f"## {title}", "", f"{unit[0].upper()}{unit[1:]}: median [interquartile range] over the "
             "repeats; \"= step\": the trainer runs step by step here whatever `steps_per_execution` "
             "says.", "",
             "| backend | workload | data | " + " | ".join(labels[k] for k in methods)
             + (f" | {'device' if group == 'gpu' else 'NumPy'} copy | best d2lx epoch (trainer's clock)"
                if group in COPY_GROUPS else "") + " | "
             + " | ".join(h for _, h in ratio_cols) + " |",
             "| --- " * (3 + len(methods) + 2 * (group in COPY_GROUPS) + len(ratio_cols)) + "|"]
    for d, r in rows:
        w, ms, ra = r["workload"], r["methods"], r.get("ratios", {})
        copy = r.get("numpy_copy")
        cells = [_cell(ms.get(k, {}), key, w["epochs"]) for k in methods]
        if group in COPY_GROUPS:
            cells.append("-" if not copy else f"{copy['median_s'] * 1e3:.3g} ms, {copy['gbps']:.3g} GB/s")
            epoch = r.get("best_epoch_s")
            cells.append("-" if epoch is None else f"{epoch * 1e3:.3g} ms")
        cells += [_fmt(ra.get(k)) for k, _ in ratio_cols]
        lines.append(f"| {d['backend']} | {w['name']} | {_data(w)} | " + " | ".join(cells) + " |")
    return lines


def _gpu_bandwidth_table(docs: list[dict[str, Any]]) -> list[str]:
    rows = [(d, r) for d, r in _rows(docs, "gpu") if r.get("gpu_bandwidth")]
    if not rows:
        return []
    lines = ["", "GPU memory traffic. Epoch: the training and validation X and y read once each, over the "
             "best epoch (the least an epoch must move; the shuffle's gather moves the training data "
             "twice more). Device copy: bytes read and written. Peak: the card's memory clock x bus width "
             "(NVML).", "",
             "| backend | GPU | peak GB/s | device copy GB/s | copy / peak | best epoch GB/s "
             "| epoch / peak |",
             "| --- " * 7 + "|"]
    for d, r in rows:
        b = r["gpu_bandwidth"]
        lines.append(f"| {d['backend']} | {d['machine']['gpu']['name']} | {_fmt(b['peak_gbps'], 4)} | "
                     f"{_fmt(b['copy_traffic_gbps'], 4)} | {_fmt(b['copy_of_peak'], 2)} | "
                     f"{_fmt(b['epoch_gbps'], 3)} | {_fmt(b['epoch_of_peak'], 2)} |")
    return lines


def _sweep_table(docs: list[dict[str, Any]]) -> list[str]:
    rows = _rows(docs, "sweep")
    if not rows:
        return []
    lines = ["", "## Scaling sweep (concise model, validation on a tenth of the training size)", "",
             "Examples per second (median). Bandwidth: bytes of the training X and y per epoch / time, for "
             "the best d2lx mode's whole run (d2lx GB/s) and for its best epoch by the trainer's clock "
             "(d2lx / copy); NumPy copy: `np.copyto` of the same arrays in the same run (only for "
             "cases whose X and y exceed 32 MiB).", "",
             "| backend | examples | inputs | batch | epochs | d2lx step | d2lx fused | loop | Keras | "
             "d2lx us/step | loop us/step | d2lx GB/s | NumPy copy GB/s | d2lx / copy | step / loop |",
             "| --- " * 15 + "|"]
    for d, r in rows:
        w, ms, ra = r["workload"], r["methods"], r.get("ratios", {})
        best, copy = _best_d2lx(ms), r.get("numpy_copy")
        lines.append(
            f"| {d['backend']} | {w['num_train']} | {w['num_inputs']} | {w['batch_size']} | {w['epochs']} | "
            + " | ".join(_rate(ms.get(k, {}), "examples_per_s") for k in SWEEP_METHODS)
            + f" | {_rate(best, 'us_per_step')} | {_rate(ms.get('loop', {}), 'us_per_step')} | "
              f"{_rate(best, 'gbps')} | {_fmt(copy['gbps']) if copy else '-'} | "
              f"{_fmt(ra.get('bandwidth_fraction'), 2)} | {_fmt(ra.get('step_over_loop'))} |")
    return lines


def markdown(docs: list[dict[str, Any]]) -> str:
    lines = ["# d2lx benchmark results", ""]
    if any(d.get("smoke") for d in docs):
        lines += ["> **SMOKE RUN** (`python -m benchmarks --quick`, tiny sizes, usually on a busy machine): "
                  "noisy numbers that only show the suite works. Not for citation; the measured run is "
                  "`nox -s bench`.", ""]
    lines += ["Generated by `benchmarks/combine.py` from the per-backend JSON files; see "
              "`benchmarks/README.md` for what each column means.", "",
              "| backend | framework | Keras | date (UTC) | CPU | cores | load at start | repeats | "
              "trainer fuses steps | duration |",
              "| --- " * 10 + "|"]
    for d in docs:
        m, v, s = d["machine"], d["versions"], d["settings"]
        lines.append(f"| {d['backend']}{' (smoke)' if d.get('smoke') else ''} | {v.get(d['backend'])} | "
                     f"{v.get('keras') or '-'} | {d['date']} | {m['cpu']}"
                     + (f" + {m['gpu']['name']}" if m.get("gpu") else "") + f" | {m['cores']} | "
                     f"{m.get('load_average_at_start', '-')} | {_repeats(s['repeats'])} | "
                     f"{s.get('fuses_steps', '-')} | {d.get('duration_s', '-')} s |")
    for group in GROUPS:
        lines += _group_table(docs, group)
        if group == "gpu":
            lines += _gpu_bandwidth_table(docs)
    lines += _sweep_table(docs)
    lines += ["", "## Targets (reported, never enforced by tests)", "",
              "| backend | target | workload | value | threshold | met |", "| --- " * 6 + "|"]
    for d in docs:
        for t in d.get("targets", []):
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {d['backend']} | {t['target']} | {t['workload']} | {_fmt(t['value'])} | "
                         f"{t['op']} {t['threshold']} | {met} |")
    return "\n".join(lines) + "\n"


def _repeats(value: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _best_d2lx(ms: dict[str, Any]) -> dict[str, Any]:
    ok = [ms[k] for k in ("d2lx_step", "d2lx_fused") if ms.get(k, {}).get("status") == "ok"]
    return min(ok, key=lambda m: m["median_s"]) if ok else {"status": "missing"}


def _step_ratio(ratios: dict[str, Any]) -> float | None:
    """The per-step ratio the target is judged on: the alternating one, else the blocks' (older files)."""
    alternating = ratios.get("step_over_loop_alternating")
    return alternating if alternating is not None else ratios.get("step_over_loop")


def plot(docs: list[dict[str, Any]], path: Path) -> None:
    """Left: d2lx step / loop per workload and backend, timed alternately where measured (the 1.15
    target drawn); right: the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = sorted({r["workload"]["name"] for d in docs for r in d["results"]
                    if r["workload"]["group"] != "sweep"})
    x = np.arange(len(names))
    width = 0.8 / max(1, len(docs))
    for i, d in enumerate(docs):
        by_name = {r["workload"]["name"]: _step_ratio(r.get("ratios", {})) for r in d["results"]}
        values = [np.nan if by_name.get(n) is None else by_name[n] for n in names]
        ax1.bar(x + (i - (len(docs) - 1) / 2) * width, values, width, label=d["backend"])
    ax1.axhline(1.15, color="red", linestyle="--", linewidth=1, label="target 1.15")
    ax1.axhline(1.0, color="black", linewidth=0.5)
    ax1.set_xticks(x, names, rotation=20, fontsize=8)
    ax1.set_ylabel("d2lx step-by-step / hand-written loop (alternating)")
    ax1.set_title("per-step overhead (below 1: d2lx is faster)")
    ax1.legend(fontsize=8)
    for d in docs:
        sweep = [r for r in d["results"] if r["workload"]["group"] == "sweep"]
        if not sweep:
            continue
        labels = [f"n{r['workload']['num_train']:.0e} d{r['workload']['num_inputs']} "
                  f"b{r['workload']['batch_size']}" for r in sweep]
        best = [_best_d2lx(r["methods"]).get("examples_per_s", np.nan) for r in sweep]
        loop = [r["methods"]["loop"].get("examples_per_s", np.nan) for r in sweep]
        (line,) = ax2.plot(range(len(sweep)), best, "o-", label=f"{d['backend']} d2lx (best)")
        ax2.plot(range(len(sweep)), loop, "x--", color=line.get_color(), label=f"{d['backend']} loop")
        ax2.set_xticks(range(len(sweep)), labels, rotation=60, ha="right", fontsize=7)
    ax2.set_title("scaling sweep (concise model)")
    if ax2.lines:
        ax2.set_yscale("log")
        ax2.set_ylabel("examples per second (median)")
        ax2.legend(fontsize=7)
    else:  # e.g. a run without the sweep: say so instead of drawing empty axes
        ax2.axis("off")
        ax2.text(0.5, 0.5, "no sweep in these results\n(python -m benchmarks --only sweep)",
                 ha="center", va="center", transform=ax2.transAxes)
    if any(d.get("smoke") for d in docs):
        fig.suptitle("SMOKE RUN: noisy numbers, not for citation", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="JSON files or folders of them")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    docs = load(args.inputs)
    if not docs:
        print("combine: no d2lx benchmark JSON files found", file=sys.stderr)
        return 1
    first = args.inputs[0]
    out_dir = args.out_dir or (first if first.is_dir() else first.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown(docs))
    plot(docs, out_dir / "results.png")
    print(f"combine: {len(docs)} backend(s) -> {out_dir / 'results.md'}, {out_dir / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
