"""The GPU check's report: the key numbers of each step (read from the JSON its script wrote), the markdown summary, and
the README's GPU table between the markers `<!-- gpu-check:begin -->` and `<!-- gpu-check:end -->`.

Pure Python over JSON files: no torch, so the README can be rewritten from a summary anywhere.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from results_io import fmt, markdown_table

__all__ = ["BEGIN", "END", "numbers", "brief", "markdown", "readme_block", "rewrite_readme", "junit_counts"]

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


def _script_json(directory: Path, prefix: str) -> dict[str, Any] | None:
    found = sorted(directory.glob(f"{prefix}_*.json"))
    return json.loads(found[-1].read_text()) if found else None


def junit_counts(path: Path) -> dict[str, int]:
    """tests / passed / failed / errors / skipped from pytest's --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(attr, 0)) for s in suites)
              for key, attr in (("tests", "tests"), ("failed", "failures"), ("errors", "errors"),
                                ("skipped", "skipped"))}
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def _environment(d: Path) -> dict[str, Any]:
    path = d / "environment.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _pytest(d: Path) -> dict[str, Any]:
    path = d / "junit.xml"
    return junit_counts(path) if path.exists() else {}


def _train_step(d: Path) -> dict[str, Any]:
    r = _script_json(d, "train_step")
    if r is None:
        return {}
    keys = ("images_per_s", "step_ms", "speedup", "peak_memory_mib", "tflops", "mfu", "precision", "optimizer_kernel")
    return {"preset": r["preset"], "batch": r["batch"], "gflops_per_image": r["gflops_per_image"],
            "peak_bf16_tflops": r["peak_bf16_tflops"], "device": r["device"],
            "modes": {row["mode"]: {k: row.get(k) for k in keys} for row in r["rows"]}}


def _encode(d: Path) -> dict[str, Any]:
    r = _script_json(d, "encode")
    if r is None:
        return {}
    dbae, diffae = r["rows"][0], r["rows"][-1]
    return {"preset": r["preset"], "batch": r["batch"], "dtype": r["dtype"], "dbae_ms_per_image": dbae["ms_per_image"],
            "t_inv": diffae["t_inv"], "diffae_ms_per_image": diffae["ms_per_image"],
            "diffae_over_dbae": diffae["ratio_vs_dbae"]}


def _sample(d: Path) -> dict[str, Any]:
    r = _script_json(d, "sample")
    if r is None:
        return {}
    return {"preset": r["preset"], "batch": r["batch"], "dtype": r["dtype"],
            "images_per_s": {f"{row['sampler']} {row['steps']}": row["images_per_s"] for row in r["rows"]}}


def _fit(d: Path) -> dict[str, Any]:
    r = _script_json(d, "short_fit")
    if r is None:
        return {}
    keys = ("preset", "batch", "steps", "dtype", "optimizer", "loss_first", "loss_last", "loss_ratio", "loss_fell",
            "images_per_s", "peak_memory_mib", "wall_s")
    return {**{k: r.get(k) for k in keys},
            "over_time": [[row["step"], row["loss"], row["images_per_s"]] for row in r["rows"]]}


def _ddp(d: Path) -> dict[str, Any]:
    r = _script_json(d, "ddp_step")
    if r is None:
        return {}
    keys = ("preset", "batch", "backend", "nccl", "sync_batchnorm_layers", "loss_diff", "grad_max_abs",
            "grad_max_abs_diff", "grad_rel_diff", "param_max_abs_diff", "tolerance")
    return {k: r.get(k) for k in keys}


NUMBERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "environment": _environment, "pytest": _pytest, "train_step": _train_step, "encode": _encode, "sample": _sample,
    "fit": _fit, "ddp": _ddp,
}


def numbers(step: str, directory: Path) -> dict[str, Any]:
    """The key numbers of one step from what it wrote into `directory` (empty when it wrote nothing)."""
    return NUMBERS[step](directory) if step in NUMBERS else {}


def _gib(mib: float | None) -> str:
    return f"{mib / 1024:.1f} GiB" if mib else "n/a"


def brief(step: str, n: dict[str, Any]) -> str:
    """One line of a step's key numbers, for the tables."""
    if not n:
        return ""
    if step == "environment":
        gpu = f"{n['device']} ({n['capability']}, {n['memory_gib']:.0f} GiB)" if n.get("cuda_available") else "no CUDA"
        return f"{gpu}; torch {n['torch']}, CUDA {n['cuda']}, NCCL {n['nccl']}, Python {n['python']}"
    if step == "pytest":
        return f"{n['passed']} passed, {n['failed']} failed, {n['errors']} errors, {n['skipped']} skipped"
    if step == "train_step":
        parts = []
        for mode, m in n["modes"].items():
            mfu = f", MFU {100 * m['mfu']:.1f} %" if m.get("mfu") is not None else ""
            parts.append(f"{mode} {fmt(m['images_per_s'])} img/s{mfu}, peak {_gib(m['peak_memory_mib'])}")
        return f"{n['preset']} batch {n['batch']}: " + "; ".join(parts)
    if step == "encode":
        return (f"{n['preset']} batch {n['batch']} {n['dtype']}: DBAE {fmt(n['dbae_ms_per_image'])} ms/img, DiffAE "
                f"T_inv = {n['t_inv']} {fmt(n['diffae_ms_per_image'])} ms/img ({n['diffae_over_dbae']:.0f}×)")
    if step == "sample":
        rates = ", ".join(f"{k} steps {fmt(v)} img/s" for k, v in n["images_per_s"].items())
        return f"{n['preset']} batch {n['batch']} {n['dtype']}: {rates}"
    if step == "fit":
        first_rate = n["over_time"][0][2] if n["over_time"] else None
        return (f"{n['preset']} batch {n['batch']} {n['dtype']}, {n['steps']} steps: loss {fmt(n['loss_first'])} → "
                f"{fmt(n['loss_last'])} (×{n['loss_ratio']:.3f}); {fmt(n['images_per_s'])} img/s steady "
                f"(first interval {fmt(first_rate)})")
    if step == "ddp":
        return (f"{n['backend']}, world 1, {n['sync_batchnorm_layers']} SyncBatchNorm layers: grad max |Δ| "
                f"{n['grad_max_abs_diff']:.3g} ({n['grad_rel_diff']:.3g} of the largest), weights after the step "
                f"{n['param_max_abs_diff']:.3g}")
    return json.dumps(n)[:200]


def _headline(summary: dict[str, Any]) -> str:
    c = summary["counts"]
    env = next((s["numbers"] for s in summary["steps"] if s["name"] == "environment"), {})
    where = env.get("device") if env.get("cuda_available") else "the CPU"
    commit = f", commit {summary['commit'][:10]}" if summary.get("commit") else ""
    return (f"{summary['mode']} mode on {where} (torch {env.get('torch', '?')}, {summary['started'][:16]} UTC"
            f"{commit}): {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped in "
            f"{summary['seconds']:.0f} s")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _steps_table(summary: dict[str, Any]) -> str:
    rows = [{"step": s["name"], "status": _cell(s["status"] + (f": {s['reason']}" if s.get("reason") else "")),
             "seconds": round(s["seconds"], 1), "numbers": _cell(brief(s["name"], s["numbers"]))}
            for s in summary["steps"]]
    return markdown_table(rows, ["step", "status", "seconds", "numbers"])


def markdown(summary: dict[str, Any]) -> str:
    """The whole summary: the steps table, per-step detail tables, the command of each step, and failures' output."""
    lines = ["# GPU check", "", _headline(summary), "", _steps_table(summary), ""]
    by_name = {s["name"]: s for s in summary["steps"]}
    train = by_name.get("train_step", {}).get("numbers")
    if train:
        rows = [{"mode": mode, **m} for mode, m in train["modes"].items()]
        lines += [f"## Training step: {train['preset']}, batch {train['batch']}, {fmt(train['gflops_per_image'])} "
                  "GFLOP/image (fwd+bwd)", "",
                  markdown_table(rows, ["mode", "precision", "optimizer_kernel", "images_per_s", "step_ms", "speedup",
                                        "peak_memory_mib", "tflops", "mfu"]), ""]
    fit = by_name.get("fit", {}).get("numbers")
    if fit and fit.get("over_time"):
        rows = [{"step": s, "loss": loss, "images_per_s": rate} for s, loss, rate in fit["over_time"]]
        lines += ["## Short fit: loss and images/s over time", "",
                  markdown_table(rows, ["step", "loss", "images_per_s"]), ""]
    lines += ["## Commands", ""] + [f"- {s['name']}: `{s['command']}`" for s in summary["steps"]] + [""]
    failed = [s for s in summary["steps"] if s["status"] == "failed"]
    for s in failed:
        tail = s.get("tail", "").rstrip() or "(no output)"
        lines += [f"## Failed: {s['name']}", "", s["reason"] or "", "", "```", tail, "```", ""]
    return "\n".join(lines)


def readme_block(summary: dict[str, Any]) -> str:
    """The README's GPU section table, from a full-mode summary."""
    return "\n".join([f"Last `make gpu-check`: {_headline(summary)}.", "", _steps_table(summary)])


def rewrite_readme(readme: Path, summary: dict[str, Any]) -> None:
    """Replace what lies between the README's gpu-check markers by `readme_block(summary)`."""
    if summary.get("mode") != "full":
        raise ValueError(f"the README's GPU table takes a full-mode summary, not a {summary.get('mode')!r} one")
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} markers")
    readme.write_text(text[:start + len(BEGIN)] + "\n" + readme_block(summary) + "\n" + text[end:])
