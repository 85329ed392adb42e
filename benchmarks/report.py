"""What a run prints, and the machine it ran on (recorded so a noisy run can be recognised)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("d2lx_step", "d2lx_unchecked", "d2lx_fused", "loop", "keras")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, versions, and the load average when the run began (above ~0.5: noisy)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "numpy": np.__version__}
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def gpu_info(name: str) -> dict[str, Any]:
    """GPU 0: its name and, where NVML answers, its memory's peak bandwidth (the datasheet's HBM figure).

    Peak = 2 transfers per clock x the maximum memory clock x the bus width;
    on an H100 SXM (2619 MHz, 5120 bits) that is 3.35 TB/s. ``nvidia-ml-py``
    ships with the CUDA frameworks' images; without it the peak is ``None``
    and the device copy alone is the yardstick.
    """
    info: dict[str, Any] = {"name": name, "peak_gbps": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no NVML: reported, not fatal
        info["peak_reason"] = f"{type(exc).__name__}: {exc}"
        return info
    info.update(memory_clock_mhz=clock_mhz, memory_bus_bits=bus_bits,
                peak_gbps=2 * clock_mhz * 1e6 * bus_bits / 8 / 1e9)
    return info


def _method_line(key: str, m: dict[str, Any]) -> str:
    if m.get("status") != "ok":
        return f"    {key:<11} {m.get('status', '-')}: {m.get('reason', '')}"[:200]
    extra = "".join(f" {k.split('_', 1)[1]}={m[k]}" for k in ("best_spe", "best_variant") if k in m)
    return (f"    {key:<11} {m['median_s'] * 1e3:10.2f} ms  {m['us_per_step']:9.1f} us/step  "
            f"IQR [{m['q1_s'] * 1e3:.2f}, {m['q3_s'] * 1e3:.2f}] ms  {m['gbps']:.3g} GB/s  "
            f"val {m.get('final_val_loss', float('nan')):.3g}{extra}")


def format_report(doc: dict[str, Any]) -> str:
    """The run as text: one line per workload and method, the ratios, then the targets."""
    lines = [f"d2lx benchmark: {doc['backend']} {doc['versions'].get(doc['backend'])} on "
             f"{doc['machine']['cpu']} ({doc['machine']['cores']} cores)"
             + ("  [SMOKE RUN: noisy, not for citation]" if doc.get("smoke") else "")]
    for r in doc["results"]:
        w = r["workload"]
        lines.append(f"  {w['name']} ({w['num_train']} x {w['num_inputs']}"
                     + (f" -> {w['hidden']}" if w.get("hidden") else "")
                     + f", batch {w['batch_size']}, {w['epochs']} epoch(s), {w['steps']} steps, "
                       f"{w['num_val']} validation, {w.get('loader', 'd2lx')} loader)")
        for key in (k for k in METHODS if k in r["methods"]):
            lines.append(_method_line(key, r["methods"].get(key, {})))
        if r.get("numpy_copy"):
            c = r["numpy_copy"]
            label = "device_copy" if c.get("kind") == "device" else "numpy_copy"
            lines.append(f"    {label:<11} {c['median_s'] * 1e3:10.2f} ms  {c['gbps']:.3g} GB/s")
        shown = {k: f"{v:.3g}" for k, v in r["ratios"].items() if v is not None}
        lines.append(f"    ratios: {shown}")
    lines.append("  targets (reported, not enforced):")
    for t in doc["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"    {t['target']} [{t['workload']}]: {value} {t['op']} {t['threshold']}: {verdict}")
    return "\n".join(lines)
