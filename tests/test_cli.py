"""The `dbae` command: bad input gives one line on stderr and exit code 2; a tiny demo run completes."""

import subprocess
import sys

import pytest

from dbae_platform.cli import main


@pytest.mark.parametrize("argv,needle", [
    (["demo", "--steps", "0"], "--steps: 0 must be > 0"),
    (["demo", "--steps", "many"], "'many' is not an integer"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "required: command"),
    (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "dbae_platform.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_help_exits_0():
    proc = subprocess.run([sys.executable, "-m", "dbae_platform.cli", "demo", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--steps" in proc.stdout


def test_corrupt_checkpoint_is_bad_input(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "step_000000002.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00" * 10)
    assert main(["demo", "--run-dir", str(tmp_path), "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_000000002.pt is unreadable" in err[0]


@pytest.mark.slow
def test_demo_runs_and_resumes(tmp_path, caplog):
    caplog.set_level("INFO")
    args = ["demo", "--run-dir", str(tmp_path), "--steps", "4", "--batch-size", "4", "--eval-images", "4",
            "--sampler-steps", "2"]
    assert main(args) == 0
    assert "mean-image baseline" in caplog.text
    caplog.clear()
    assert main(args) == 0  # the same command again: finds the finished run and only re-evaluates
    assert "resuming from" in caplog.text and "step 4" in caplog.text
