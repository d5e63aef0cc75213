"""The benchmark scripts run and write the fields their reports rely on (a smoke test, not a timing assertion)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_runs_fast_and_reference_side_by_side(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--preset", "tiny", "--batch",
                           "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| mode | precision | images_per_s | step_ms | speedup |" in proc.stderr
    assert "fast path:" in proc.stderr and "× the reference path's images/s" in proc.stderr
    result = json.loads((tmp_path / "train_step_tiny_b2_fast-reference_cpu.json").read_text())
    for key in ("device", "dtype", "batch", "torch", "command", "gflops_per_image", "speedup_fast_vs_reference"):
        assert key in result
    fast, ref = result["rows"]
    assert (fast["mode"], fast["attention"], fast["fused"]) == ("fast", "sdpa", True)
    assert (ref["mode"], ref["attention"], ref["fused"], ref["precision"]) == ("reference", "plain", False, "fp32")
    assert ref["speedup"] == 1 and fast["speedup"] == pytest.approx(fast["images_per_s"] / ref["images_per_s"])
    assert result["batch"] == 2 and fast["images_per_s"] > 0 and fast["mfu"] is None  # no MFU on a CPU
    # forward + backward of the 2.2M-parameter tiny model at 32 px: a few GFLOP per image, not 0 and not 100
    assert 0.5 < result["gflops_per_image"] < 20


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


def test_sample_benchmark_counts_the_nfe_of_each_sampler(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sample.py"), "--preset", "tiny", "--batch", "1",
                           "--steps", "1", "2", "--samplers", "euler", "heun+churn", "--repeats", "1", "--warmup", "0",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| sampler | steps | nfe | ms_per_batch | images_per_s | ms_per_nfe |" in proc.stderr
    result = json.loads((tmp_path / "sample_tiny_fp32_b1_cpu.json").read_text())
    for key in ("device", "dtype", "batch", "torch", "command"):
        assert key in result
    assert result["dtype"] == "fp32" and result["batch"] == 1 and result["reference"] is False
    nfe = {(r["sampler"], r["steps"]): r["nfe"] for r in result["rows"]}
    # Euler spends N evaluations, Heun + churn 3N − 1 (Heun's last interval is a single Euler step).
    assert nfe == {("euler", 1): 1, ("euler", 2): 2, ("heun+churn", 1): 2, ("heun+churn", 2): 5}
    assert all(r["images_per_s"] > 0 for r in result["rows"])


def test_eval_benchmark_times_each_suite(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval.py"), "--n", "8", "--suites", "recon",
                           "probe", "--sampler-steps", "1", "--batch", "8", "--device", "cpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| suite | seconds | encode_ms | items | metrics_reported |" in proc.stderr
    result = json.loads((tmp_path / "eval_tiny_n8_cpu.json").read_text())
    for key in ("device", "dtype", "batch", "torch", "command"):
        assert key in result
    assert result["dtype"] == "fp32" and result["batch"] == 8 and result["n"] == 8
    rows = {r["suite"]: r for r in result["rows"]}
    assert list(rows) == ["recon", "probe"]
    assert all(r["seconds"] > 0 and r["items"] == 8 and r["encode_ms"] > 0 for r in rows.values())
    assert rows["recon"]["metrics_reported"] >= 3  # MSE, PSNR and SSIM; LPIPS only when its weights exist
    assert result["total_s"] == sum(r["seconds"] for r in rows.values())


def test_nfe_quality_reports_each_sampler_against_euler_100(tmp_path):
    from dbae_core.training import fit
    from dbae_platform.config import load_config
    from dbae_platform.models import build_datasets, build_model
    cfg = load_config("tiny", ["data.size=16", "data.train_images=64", "model.unet.attention_resolutions=[4]",
                               "model.encoder.attention_resolutions=[4]", "train.steps=2", "train.batch_size=4",
                               "train.progress=false"])
    fit(build_model(cfg), build_datasets(cfg)[0], cfg.train, tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "config.yaml").write_text(cfg.to_yaml())
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000000002.pt"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nfe_quality.py"), str(checkpoint), "--n", "4",
                           "--steps", "1", "2", "--samplers", "euler", "heun+churn", "--batch", "4", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "| sampler | steps | nfe | ssim | mse |" in proc.stderr
    result = json.loads((tmp_path / "nfe_quality_step_000000002.pt_n4_cpu.json").read_text())
    nfe = {(r["sampler"], r["steps"]): r["nfe"] for r in result["rows"]}
    # Euler N, Heun + churn 3N − 1; the release's Euler 100 is always measured as the reference
    assert nfe == {("euler", 1): 1, ("euler", 2): 2, ("euler", 100): 100, ("heun+churn", 1): 2, ("heun+churn", 2): 5}
    ref = next(r for r in result["rows"] if (r["sampler"], r["steps"]) == ("euler", 100))
    assert ref["ssim_vs_ref"] == 0 and ref["mse_ratio_vs_ref"] == 1
    assert all(0 <= r["mse"] and -1 <= r["ssim"] <= 1 for r in result["rows"])
    for key in ("device", "dtype", "batch", "torch", "command"):
        assert key in result

    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nfe_quality.py"), str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr


@pytest.mark.slow
def test_platform_overhead_interleaves_pairs_and_reports_the_median_ratio(tmp_path):
    """The docstring's command at smoke size: two interleaved (bare, dbae train) pairs on a local Ray, the ratios'
    median and spread computed from the pairs it reports."""
    import statistics
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "platform_overhead.py"), "--config", "tiny",
                           "--steps", "4", "--log-every", "2", "--batch", "2", "--repeats", "2",
                           "--set", "data.train_images=64", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "platform_overhead_tiny_b2_cpu.json").read_text())
    ratios = [p["platform_images_per_s"] / p["bare_images_per_s"] for p in result["pairs"]]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert result["ratio_median"] == pytest.approx(statistics.median(ratios))
    assert (result["ratio_min"], result["ratio_max"]) == pytest.approx((min(ratios), max(ratios)))
    assert "ratio platform/bare: median" in proc.stderr and "| pair |" in proc.stderr
