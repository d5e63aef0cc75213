"""What every benchmark shares: the device's description, the command line, a markdown table, the JSON file, and the
sampler names the sampling benchmarks take ("euler", "heun", "euler+churn", "heun+churn").

Each result is one JSON object with at least `benchmark`, `device`, `dtype`, `batch`, `torch` and `command`, written
to <out>/<stem>_<cpu|cuda>.json; the markdown table goes to the log (stderr).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dbae_core.samplers import METHODS

__all__ = ["SAMPLERS", "parse_sampler", "device_name", "pick_device", "command_line", "markdown_table", "write_result",
           "steady_rate", "time_ms", "fmt"]


SAMPLERS = tuple(METHODS) + tuple(f"{m}+churn" for m in METHODS)  # euler, heun, euler+churn, heun+churn


def parse_sampler(name: str, churn: float) -> tuple[str, float]:
    """("euler" | "heun", churn) for a SAMPLERS entry: `churn` only with the "+churn" suffix, else 0."""
    method, _, suffix = name.partition("+")
    return method, churn if suffix == "churn" else 0.0


def pick_device(name: str | None) -> torch.device:
    """`name`, or CUDA when it is available, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    return " ".join([Path(sys.executable).name] + sys.argv)


def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits (at least one decimal), None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_result(result: dict[str, Any], out: str | Path, stem: str) -> Path:
    """Write `result` as <out>/<stem>_<cpu|cuda>.json (the device kind read from result["device"])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "cpu" if str(result["device"]).startswith("CPU") else "cuda"
    path = out / f"{stem}_{kind}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def steady_rate(history: Sequence[tuple[int, float]]) -> float:
    """Mean rate over the log intervals after the first (start-up, compilation), weighted by interval length.

    `history` holds (step, rate over the interval ending at step) pairs, as fit() and MLflow record
    `train/images_per_s`.
    """
    points = sorted(history)
    if len(points) < 2:
        raise ValueError("need at least two log intervals: raise the steps or lower the log interval")
    spans = [b - a for (a, _), (b, _) in zip(points, points[1:])]
    seconds = sum(span / rate for span, (_, rate) in zip(spans, points[1:]))
    return sum(spans) / seconds


def time_ms(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int) -> float:
    """Mean wall-clock milliseconds of one call of `fn`, synchronised once at the end (no per-call host sync)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    out.sum().item()
    return 1000 * (time.perf_counter() - t0) / repeats
