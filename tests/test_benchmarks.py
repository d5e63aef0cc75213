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
