"""The benchmark scripts run and write the fields their reports rely on (a smoke test, not a timing assertion)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_writes_json_and_a_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--preset", "tiny", "--batch",
                           "2", "--steps", "1", "--warmup", "1", "--dtype", "fp32", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| preset | device | dtype |" in proc.stderr and "|---|---|" in proc.stderr
    (result_file,) = tmp_path.glob("train_step_tiny_fp32_b2_*.json")
    result = json.loads(result_file.read_text())
    for key in ("device", "dtype", "batch", "torch", "command", "images_per_s", "peak_memory_mib"):
        assert key in result
    assert result["batch"] == 2 and result["images_per_s"] > 0


def test_encode_benchmark_writes_json_and_the_ratio(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "encode.py"), "--preset", "tiny", "--batch", "1",
                           "--t-inv", "1", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "| method | T_inv (NFE) | ms / image | ratio vs DBAE |" in proc.stderr
    assert "DiffAE with T_inv = 2 takes" in proc.stderr
    result = json.loads((tmp_path / "encode_tiny_fp32_b1_cpu.json").read_text())
    assert [r["t_inv"] for r in result["rows"]] == [0, 1, 2] and result["rows"][0]["ratio_vs_dbae"] == 1.0
    for key in ("device", "dtype", "batch", "torch", "command"):
        assert key in result
