"""The `dbae` command: bad input gives one line on stderr and exit code 2."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--steps", "0"], "--steps: 0 must be > 0"),
    (["generate", "--steps", "many"], "'many' is not an integer"),
    (["train", "tiny", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "required: command"),
    (["generate", "--device", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "dbae_platform.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_help_exits_0():
    proc = subprocess.run([sys.executable, "-m", "dbae_platform.cli", "generate", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--steps" in proc.stdout


def test_ui_lists_the_runs_tables_of_the_store_and_tags_them_as_training(tmp_path, capsys):
    """What `dbae ui` prints before serving: each experiment's runs-table URL on the address it binds, newest first;
    experiments of an older store gain the tag that makes the UI open them on the runs table."""
    from mlflow import MlflowClient

    from dbae_platform.cli.ui import _browsable, _print_experiments
    from dbae_platform.tracking import EXPERIMENT_KIND, ui_url

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("dbae/old")  # as an older version created it: no kind tag
    new = client.create_experiment("sweep/latent_dim")
    client.create_run(new)  # touched last: listed first
    _print_experiments(uri, f"http://{_browsable('0.0.0.0')}:5001")
    out = capsys.readouterr().out.splitlines()
    assert out == ["runs tables (newest first):",
                   f"  sweep/latent_dim: http://127.0.0.1:5001/#/experiments/{new}/runs",
                   f"  dbae/old: http://127.0.0.1:5001/#/experiments/{old}/runs"]
    assert all(client.get_experiment(e).tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1] for e in (old, new))
    # a tracking server's own address wins over dbae ui's
    assert ui_url("http://mlflow.internal:8080/", "7", "abc") == "http://mlflow.internal:8080/#/experiments/7/runs/abc"
    _print_experiments(f"sqlite:///{tmp_path / 'empty.db'}", "http://127.0.0.1:5000")
    assert capsys.readouterr().out == "no experiments yet: open http://127.0.0.1:5000\n"
