"""The MLflow UI in a real headless browser (skipped without Debian's chromium): a sweep's runs table lists its runs,
the parent run shows the ablation table and a child shows its image grid, each as a screenshot."""

import json
import shutil

import numpy as np
import pytest

from dbae_platform import tracking
from dbae_platform.cli import ui_check

needs_browser = pytest.mark.skipif(ui_check.find_browser() is None, reason="needs chromium (apt-get install chromium)")

PNG = b"\x89PNG\r\n\x1a\n"


def _sweep_store(runs):
    """A sweep as the driver leaves it: parent run with ablation/ablation.md, child runs with an image grid."""
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    parent, _ = tracking.open_run(uri, "sweep/latent_dim", runs / "sweep", runs, "latent_dim", {},
                                  {"dbae.sweep.role": "parent", "dbae.sweep.swept": json.dumps(["model.latent_dim"])},
                                  "name: latent_dim\n")
    client = tracking.mlflow_client(uri)
    for d in (8, 32):
        values = {"model.latent_dim": d}
        child, _ = tracking.open_run(uri, "sweep/latent_dim", runs / f"t{d}", runs, f"latent_dim={d}", values,
                                     {"dbae.sweep.values": json.dumps(values)}, "", parent_run_id=parent)
        grid = np.zeros((34, 66, 3), np.uint8)
        grid[1:33, 1:33] = 255
        client.log_image(child, grid, key="eval_reconstructions", step=200)
        client.log_metric(child, "eval/recon_mse", 0.01 * d, step=200)
        client.set_terminated(child, "FINISHED")
    (runs / "ablation.md").write_text("| model.latent_dim | n | recon_mse |\n|---|---:|---:|\n| 8 | 1 | 0.08 |\n")
    client.log_artifact(parent, str(runs / "ablation.md"), "ablation")
    client.set_terminated(parent, "FINISHED")


@needs_browser
def test_the_ui_shows_the_runs_table_the_ablation_table_and_an_image_grid(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "sweep").mkdir(parents=True)
    for d in (8, 32):
        (runs / f"t{d}").mkdir()
    _sweep_store(runs)
    out = tmp_path / "ui-check"
    assert ui_check.main(["--runs-dir", str(runs), "--out", str(out)]) == 0, capsys.readouterr().err[-2000:]
    shots = sorted(p.name for p in out.glob("*.png"))  # server.log beside them
    assert shots == ["ablation_table.png", "image_grid.png", "runs_table.png"]
    assert all((out / s).read_bytes()[:8] == PNG and (out / s).stat().st_size > 5000 for s in shots)


def test_no_store_or_no_sweep_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ui_check, "find_browser", lambda: "/usr/bin/chromium")  # never started: no page to open
    assert ui_check.main(["--runs-dir", str(tmp_path / "none")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    runs = tmp_path / "runs"
    runs.mkdir()
    tracking.mlflow_client(f"sqlite:///{runs / 'mlflow.db'}").search_experiments()  # an empty store
    assert ui_check.main(["--runs-dir", str(runs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no sweep in the MLflow store" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_missing_browser_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    (tmp_path / "mlflow.db").write_bytes(b"")
    assert ui_check.main(["--runs-dir", str(tmp_path)]) == 2
    assert "apt-get install chromium" in capsys.readouterr().err


def test_the_documented_module_command_names_a_missing_store(tmp_path):
    """`python -m dbae_platform.cli.ui_check --runs-dir runs --out build/ui-check` (README, module docstring) as a user
    runs it before any sweep: one line naming the fix, exit 2, no traceback."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "dbae_platform.cli.ui_check", "--runs-dir", "runs", "--out",
                           "build/ui-check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no MLflow store" in proc.stderr and "make demo" in proc.stderr and "Traceback" not in proc.stderr
