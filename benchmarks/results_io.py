"""Where benchmark results go: one JSON file per (benchmark, preset, dtype, batch, device kind) under --out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(result: dict[str, Any], out: str | Path, stem: str) -> Path:
    """Write `result` as <out>/<stem>_<cpu|cuda>.json (the device kind read from result["device"])."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "cpu" if str(result["device"]).startswith("CPU") else "cuda"
    path = out / f"{stem}_{kind}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
