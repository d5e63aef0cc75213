"""The GPU check cannot rot: its --tiny mode runs every step on the CPU, a failing, crashing or hanging step is recorded
in one line while the next still runs, and the README's GPU table is rewritten from a summary between its markers."""

import copy
import datetime
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "pytest", "train_step", "encode", "sample", "fit", "ddp"]


@pytest.fixture()
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


@pytest.fixture()
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check_report")


@pytest.mark.slow
def test_tiny_gpu_check_runs_every_step_on_cpu(tmp_path, report):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("check", "mode", "started", "seconds", "passed", "counts", "commit", "command", "steps"):
        assert key in summary
    assert summary["mode"] == "tiny" and summary["passed"] and summary["counts"]["failed"] == 0
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEPS
    for name, step in steps.items():
        for key in ("status", "reason", "seconds", "timeout_s", "command", "numbers", "log", "tail"):
            assert key in step
        if name == "pytest" and step["status"] == "skipped":  # no CUDA: the gpu tests skip, and the step says so
            assert step["reason"].startswith("no CUDA here") and step["numbers"]["skipped"] >= 4
        else:
            assert step["status"] == "passed", (name, step["reason"], step["tail"])
        assert Path(step["log"]).exists()
    n = {name: step["numbers"] for name, step in steps.items()}
    assert n["environment"]["torch"] and n["environment"]["gloo"]
    assert set(n["train_step"]["modes"]) == {"fast", "reference"}
    assert all(m["images_per_s"] > 0 for m in n["train_step"]["modes"].values())
    assert n["encode"]["t_inv"] == 4 and n["encode"]["diffae_ms_per_image"] > 0
    assert set(n["sample"]["images_per_s"]) == {"euler 2", "euler 4"}
    fit = n["fit"]
    assert fit["loss_fell"] and fit["loss_last"] < fit["loss_first"] and fit["dtype"] == "fp32"
    assert len(fit["over_time"]) == 10 and all(rate > 0 for _, _, rate in fit["over_time"])
    ddp = n["ddp"]
    assert ddp["backend"] == "gloo" and ddp["grad_max_abs"] > 0 and ddp["grad_max_abs_diff"] == 0.0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| step | status | seconds | numbers |" in md and "## Short fit: loss and images/s over time" in md
    assert all(f"| {name} | " in md for name in STEPS)
    with pytest.raises(ValueError, match="takes a full-mode summary"):
        report.rewrite_readme(tmp_path / "README.md", summary)
    print(f"gpu_check.py --tiny: {seconds:.1f} s wall, steps: "
          + ", ".join(f"{s['name']} {s['seconds']:.1f} s" for s in summary["steps"]))


def test_a_failing_crashing_or_hanging_step_is_recorded_and_the_next_step_runs(tmp_path, gpu_check, monkeypatch):
    def boom(directory):
        raise RuntimeError("the kernel\nfailed")

    def hang(directory):
        time.sleep(60)

    def crash(directory):
        os.kill(os.getpid(), signal.SIGKILL)

    def ok(directory):
        (directory / "ok.txt").write_text("ran")

    monkeypatch.setattr(gpu_check, "pytest_available", lambda: False)
    steps = [gpu_check.Step("boom", "boom", 60, boom), gpu_check.Step("hang", "hang", 1, hang),
             gpu_check.Step("crash", "crash", 60, crash),
             gpu_check.Step("pytest", "pytest", 60, lambda d: gpu_check.run_pytest(d, tiny=True)),
             gpu_check.Step("ok", "ok", 60, ok)]
    records = gpu_check.run_steps(steps, tmp_path / "steps")
    by_name = {r["name"]: r for r in records}
    assert [r["status"] for r in records] == ["failed"] * 4 + ["passed"]
    assert by_name["boom"]["reason"] == "RuntimeError: the kernel failed"
    assert "RuntimeError: the kernel" in by_name["boom"]["tail"]  # the traceback is in the step's log
    assert by_name["hang"]["reason"] == "timed out after 1 s (the step's limit)" and by_name["hang"]["seconds"] < 30
    assert by_name["crash"]["reason"] == "killed by SIGKILL"
    assert by_name["pytest"]["reason"] == "RuntimeError: " + gpu_check.MISSING_PYTEST
    assert "make gpu-deps" in by_name["pytest"]["reason"] and "\n" not in by_name["pytest"]["reason"]
    assert (tmp_path / "steps" / "ok" / "ok.txt").read_text() == "ran"
    summary = gpu_check.summarise(records, "full", datetime.datetime.now(), 1.0)
    assert not summary["passed"] and summary["counts"] == {"passed": 1, "failed": 4, "skipped": 0}
    json_path, md_path = gpu_check.write_summary(summary, tmp_path)
    assert json.loads(json_path.read_text())["counts"]["failed"] == 4
    assert "## Failed: hang" in md_path.read_text()


def test_full_mode_without_cuda_fails_each_step_saying_so(tmp_path, gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    steps = [s for s in gpu_check.make_steps(tiny=False) if s.name in ("environment", "ddp")]
    records = gpu_check.run_steps(steps, tmp_path)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("CUDA is not available" in r["reason"] and "--tiny runs on the CPU" in r["reason"] for r in records)
    assert records[0]["numbers"]["cuda_available"] is False  # the environment is still recorded


def _full_summary():
    numbers = {
        "environment": {"device": "NVIDIA H200", "capability": "sm_90", "memory_gib": 139.8, "cuda_available": True,
                        "torch": "2.11.0+cu130", "cuda": "13.0", "nccl": "2.27.7", "python": "3.12.3"},
        "pytest": {"tests": 4, "passed": 4, "failed": 0, "errors": 0, "skipped": 0},
        "train_step": {"preset": "celeba64", "batch": 64, "gflops_per_image": 119.8, "peak_bf16_tflops": 989.0,
                       "device": "NVIDIA H200",
                       "modes": {"fast": {"images_per_s": 1500.0, "step_ms": 42.7, "speedup": 3.0,
                                          "peak_memory_mib": 30000.0, "tflops": 179.7, "mfu": 0.18,
                                          "precision": "bf16", "optimizer_kernel": "foreach"},
                                 "reference": {"images_per_s": 500.0, "step_ms": 128.0, "speedup": 1.0,
                                               "peak_memory_mib": 50000.0, "tflops": 59.9, "mfu": 0.06,
                                               "precision": "fp32", "optimizer_kernel": "loop"}}},
        "fit": {},
    }
    steps = [{"name": name, "status": "passed", "reason": None, "seconds": 10.0, "timeout_s": 60, "command": "c",
              "numbers": n, "log": "x", "tail": ""} for name, n in numbers.items()]
    steps[-1].update(status="failed", reason="timed out after 100 s (the step's limit)")
    return {"check": "gpu_check", "mode": "full", "started": "2026-12-01T03:00:00+00:00", "seconds": 40.0,
            "passed": False, "counts": {"passed": 3, "failed": 1, "skipped": 0}, "commit": "0123456789abcdef",
            "command": "python benchmarks/gpu_check.py", "steps": steps}


def test_readme_gpu_table_is_rewritten_between_the_markers(tmp_path, report):
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(report.BEGIN):readme.index(report.END)]
    assert "No GPU run has been recorded yet" in block and "make gpu-check" in readme
    path = tmp_path / "README.md"
    path.write_text(f"# title\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    summary = _full_summary()
    report.rewrite_readme(path, summary)
    text = path.read_text()
    assert text.startswith("# title\n\nbefore\n" + report.BEGIN) and text.endswith(report.END + "\nafter\n")
    assert "old table" not in text
    assert "full mode on NVIDIA H200 (torch 2.11.0+cu130, 2026-12-01T03:00 UTC, commit 0123456789)" in text
    assert "3 passed, 1 failed, 0 skipped in 40 s" in text
    assert "| train_step | passed | 10 | celeba64 batch 64: fast 1500.0 img/s, MFU 18.0 %, peak 29.3 GiB; " in text
    assert "| fit | failed: timed out after 100 s (the step's limit) | 10 |  |" in text
    report.rewrite_readme(path, summary)
    assert path.read_text() == text  # idempotent
    with pytest.raises(ValueError, match="takes a full-mode summary"):
        report.rewrite_readme(path, {**copy.deepcopy(summary), "mode": "tiny"})
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="has no <!-- gpu-check:begin -->"):
        report.rewrite_readme(path, summary)


def test_readme_rewrite_from_a_summary_file_on_the_command_line(tmp_path):
    summary, readme = tmp_path / "gpu_check.json", tmp_path / "README.md"
    summary.write_text(json.dumps(_full_summary()))
    readme.write_text("<!-- gpu-check:begin -->\n<!-- gpu-check:end -->\n")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--summary", str(summary), "--readme",
                           str(readme)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| environment | passed | 10 | NVIDIA H200 (sm_90, 140 GiB); torch 2.11.0+cu130" in readme.read_text()
