"""Every bad input is one line on stderr and exit code 2, before Ray or training starts, and nothing is written or
deleted: one test per case of issue 19's table, and a parametrised test that feeds every argument of every
subcommand (walked from the parser, so a new argument cannot go untested) bad values chosen by its type.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from dbae_core.checkpoint import CheckpointError
from dbae_core.latent_prior import LatentPrior, prior_preset, save_prior
from dbae_platform import cli, preflight
from dbae_platform.cli import sweep as sweep_cli
from dbae_platform.config import ConfigError, load_config
from dbae_platform.models import build_model

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"data.size": 16, "data.train_images": 64, "model.latent_dim": 8, "model.unet.base_channels": 8,
         "model.unet.channel_mult": [1, 2], "model.unet.attention_resolutions": [], "model.unet.head_channels": 8,
         "model.encoder.base_channels": 8, "model.encoder.channel_mult": [1, 2],
         "model.encoder.attention_resolutions": [], "model.decoder.ngf": 4, "eval.batch_size": 32}
CHECKPOINT = "ckpt/checkpoint_000000"  # relative to the test's working directory
STUDY = "name: bad_inputs\nspace:\n  model.latent_dim: [8, 16]\n"


class Started(Exception):
    """Raised where Ray, a training run or a server would start: a bad value got past every check."""


def _start(*_, **__):
    raise Started("a bad value reached Ray / training / the UI server")


# -- the working directory every command runs in -------------------------------------------------------
def write_checkpoint(directory: Path) -> Path:
    """A checkpoint directory as `dbae train` writes it (state.pt, config.yaml) of an untrained 16 px model, plus a
    latent prior beside it."""
    cfg = load_config("tiny", {**SMALL, "name": "small"})
    torch.manual_seed(0)
    model = build_model(cfg)
    sd = model.state_dict()
    directory.mkdir(parents=True)
    torch.save({"model": sd, "ema": sd, "optimizer": {}, "step": 4, "model_kind": model.kind,
                "model_config": dataclasses.asdict(model.cfg)}, directory / "state.pt")
    (directory / "config.yaml").write_text(cfg.to_yaml())
    save_prior(directory / "prior.pt", LatentPrior(prior_preset("tiny", latent_dim=8)))
    return directory


def write_store(runs: Path) -> None:
    """An embedded MLflow store holding the experiment sweep/x with one sweep parent run."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.create_experiment("sweep/x", artifact_location=(runs / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="x", tags={"dbae.sweep.role": "parent", "dbae.sweep.name": "x",
                                                     "dbae.sweep.swept": '["model.latent_dim"]'})
    client.set_terminated(run.info.run_id)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    write_checkpoint(root / CHECKPOINT)
    (root / "runs").mkdir()
    write_store(root / "runs")
    (root / "study.yaml").write_text(STUDY)
    (root / "afile").write_text("not a directory, not a checkpoint\n")
    (root / "adir").mkdir()
    return root


def listing(root: Path) -> dict[str, int]:
    """Every file and directory under root with its modification time."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base, name)
            found[str(path.relative_to(root))] = path.lstat().st_mtime_ns
    return found


@pytest.fixture
def guarded_env(workdir, monkeypatch):
    """The working directory, no cluster or tracking server in the environment, and tripwires where work starts."""
    monkeypatch.chdir(workdir)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DBAE_STORAGE_PATH", "DBAE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # run_sweep sets it; restored after the test
    import ray
    monkeypatch.setattr(ray, "init", _start)
    monkeypatch.setattr("dbae_platform.ray_cluster.ray_init", _start)
    monkeypatch.setattr("dbae_platform.cli.ui.subprocess.call", _start)
    return workdir


def assert_one_line_exit_2(run, argv, capsys, root: Path) -> str:
    before = listing(root)
    capsys.readouterr()
    code = run(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, (argv, code, out.err[-2000:])
    assert "Traceback" not in out.err and 1 <= len(lines) <= 3, (argv, out.err[-2000:])
    assert listing(root) == before, (argv, "files were written or deleted")
    return lines[-1]


# -- bad values by argument type -----------------------------------------------------------------------
def _numbers(typ) -> list[str]:
    """Out-of-range and non-numeric text for a range-checked number type."""
    if typ.kind.startswith("positive"):
        return ["0", "-1", "x"]
    low, high = typ.low, typ.high
    bad = [str(low - 1), "x"]
    if typ.kind == "port":
        bad.append("70000")
    if high is not None:
        bad.append(str(high + 1))
    return bad


BY_KIND = {
    "name": ["", "a/b", " padded"],
    "host": ["bad host!", ""],
    "input path": ["missing"],
    "input file": ["missing", "adir"],
    "input directory": ["missing", "afile"],
    "output directory": ["afile", "afile/sub"],
    "output file": ["adir", "afile/x.md"],
    "output file or directory": ["afile", "afile/x.pt"],
    "output directory or URI": ["afile"],
    "output directory or bucket": ["afile", "afile/sub", "s3://", "ftp://host/runs"],
    "checkpoint or model URI": ["missing", "adir", "models:/nope/1", "models:/nope/one", "runs:/nothex/model",
                                "s3://", "ftp://host/checkpoint_1"],
}
# Arguments of free text (or checked by the command itself, first thing): their bad values, by (command, dest).
SETS = ["noequals", "model.latent_dim=abc"]
URIS = ["bogus://nowhere", "sqlite:///afile/mlflow.db"]
FREE = {
    ("train", "config"): ["nope", "missing.yaml"], ("train", "overrides"): SETS, ("train", "tracking_uri"): URIS,
    ("eval", "suite"): ["nope"], ("eval", "overrides"): SETS,
    **{(c, "tracking_uri"): URIS for c in ("eval", "prior", "generate", "interpolate", "manipulate", "register")},
    ("register", "source"): ["missing", "adir", "0123456789abcdef0123456789abcdef"],  # pragma: allowlist secret
    ("sweep", "preset"): ["nope"], ("sweep", "space"): ["noequals", "model.latent_dim=abc"],
    ("sweep", "overrides"): SETS, ("sweep", "tracking_uri"): URIS,
    ("table", "experiment"): ["nope"], ("table", "parent_run"): ["0123456789abcdef"], ("table", "tracking_uri"): URIS,
    ("report", "tracking_uri"): URIS,
    **{(c, "overrides"): SETS for c in ("prior", "generate", "interpolate", "manipulate")},
    ("generate", "prior"): ["missing", "afile"],
    ("manipulate", "attribute"): ["nope", "scale>99"], ("manipulate", "scales"): ["x", ""],
    ("data prepare", "root"): ["missing", "afile"], ("data prepare", "split"): ["nope", "train,train"],
    ("data prepare", "option"): ["noequals", "flip=true"],
}
NO_VALUE = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
            argparse.BooleanOptionalAction, argparse._SubParsersAction, argparse._VersionAction)

# A valid command line per subcommand: each case changes one argument of it.
BASE = {
    "train": ["train", "tiny", "--set", "train.steps=1"],
    "eval": ["eval", CHECKPOINT, "--n", "2", "--sampler-steps", "1", "--out", "out/eval", "--device", "cpu"],
    "register": ["register", CHECKPOINT, "dbae-x", "--runs-dir", "runs"],
    "ui": ["ui", "--runs-dir", "runs", "--port", "5999"],
    "sweep": ["sweep", "study.yaml", "--storage-path", "runs"],
    "table": ["table", "sweep/x", "--runs-dir", "runs"],
    "report": ["report", "--runs-dir", "runs", "--out", "out/results.md"],
    "prior": ["prior", CHECKPOINT, "--steps", "1", "--out", "out/prior.pt", "--device", "cpu"],
    "generate": ["generate", CHECKPOINT, "--n", "2", "--steps", "1", "--prior-steps", "1", "--out", "out/g",
                 "--device", "cpu"],
    "interpolate": ["interpolate", CHECKPOINT, "--pairs", "1", "--frames", "2", "--steps", "1", "--out", "out/i",
                    "--device", "cpu"],
    "manipulate": ["manipulate", CHECKPOINT, "--attribute", "is_square", "--n", "1", "--steps", "1",
                   "--probe-images", "16", "--out", "out/m", "--device", "cpu"],
    "data prepare": ["data", "prepare", "--dataset", "shapes", "--out", "out/shards", "--size", "16", "--split",
                     "test", "--option", "length=2"],
}
SWEEP_SCRIPT_BASE = ["--storage-path", "runs"]


def bad_values(command: str, action: argparse.Action) -> list[str]:
    if action.choices is not None and not isinstance(action.choices, dict):
        return ["nope"]
    kind = getattr(action.type, "kind", None)
    if kind is not None and hasattr(action.type, "low"):
        return _numbers(action.type)
    if kind is not None and kind.startswith("positive"):
        return _numbers(action.type)
    if kind in BY_KIND:
        return BY_KIND[kind]
    return FREE.get((command, action.dest), [])


def arguments(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command, action) for every argument that takes a value, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from arguments(sub, (*prefix, name))
        elif not isinstance(action, NO_VALUE):
            yield " ".join(prefix), action


def with_value(base: list[str], command: str, action: argparse.Action, value: str) -> list[str]:
    """`base` with `action`'s value replaced by `value` (an option's old occurrence dropped)."""
    if not action.option_strings:  # a positional (one per command here): the first word after the command's
        words = len(command.split())
        return [*base[:words], value, *base[words + 1:]]
    argv, skip = [], False
    for word in base:
        if skip:
            skip = False
        elif word in action.option_strings:
            skip = True
        else:
            argv.append(word)
    return [*argv, action.option_strings[-1], value]


def cases(parser: argparse.ArgumentParser, base_of, prefix: tuple[str, ...] = ()) -> list:
    params = []
    for command, action in arguments(parser, prefix):
        name = action.option_strings[-1] if action.option_strings else action.dest
        values = bad_values(command, action)
        if not values:  # a new argument without bad values fails here, by name
            params.append(pytest.param(command, name, None, None, id=f"{command} {name} UNTESTED"))
        for value in values:
            argv = None if base_of(command) is None else with_value(base_of(command), command, action, value)
            params.append(pytest.param(command, name, value, argv, id=f"{command} {name}={value!r}"))
    return params


def _sweep_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(prog="python sweeps/latent_dim.py")
    sweep_cli.add_study_flags(parser)
    return parser


def _latent_dim_study():
    spec = importlib.util.spec_from_file_location("latent_dim_study", ROOT / "sweeps" / "latent_dim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STUDY


@pytest.mark.parametrize("command, name, value, argv", cases(cli.build_parser(), lambda c: BASE.get(c)))
def test_every_argument_of_every_subcommand_rejects_bad_values(command, name, value, argv, guarded_env, capsys):
    assert value is not None, f"`dbae {command} {name}` has no bad values: add them to BY_KIND or FREE"
    assert argv is not None, f"`dbae {command}` has no BASE command line: add one"
    assert_one_line_exit_2(cli.main, argv, capsys, guarded_env)


@pytest.mark.parametrize("command, name, value, argv",
                         cases(_sweep_parser(), lambda c: SWEEP_SCRIPT_BASE, ("sweep",)))
def test_every_sweep_script_flag_rejects_bad_values(command, name, value, argv, guarded_env, capsys):
    assert value is not None, f"sweep flag {name} has no bad values: add them to BY_KIND or FREE"
    study = _latent_dim_study()
    assert_one_line_exit_2(lambda a: sweep_cli.main(study, a), argv, capsys, guarded_env)


def test_the_base_command_lines_are_valid(guarded_env, capsys):
    """Each case above fails because of its bad value: the base it changes gets as far as real work."""
    for argv in (BASE["train"], BASE["sweep"], BASE["ui"]):
        with pytest.raises(Started):
            cli.main(argv)
    with pytest.raises(Started):
        sweep_cli.main(_latent_dim_study(), SWEEP_SCRIPT_BASE)
    assert cli.main(BASE["table"]) == 0


# -- the rows of the table ---------------------------------------------------------------------
def test_missing_image_folder_is_one_line_before_ray(guarded_env, capsys):
    argv = ["train", "tiny", "--set", "data.dataset=image_folder", "--set", f"data.root={guarded_env / 'gone'}"]
    line = assert_one_line_exit_2(cli.main, argv, capsys, guarded_env)
    assert "image folder not found" in line and "data.root" in line


def test_tracking_uri_under_a_file_is_one_line(guarded_env, capsys):
    argv = ["train", "tiny", "--tracking-uri", f"sqlite:///{guarded_env / 'afile'}/mlflow.db"]
    line = assert_one_line_exit_2(cli.main, argv, capsys, guarded_env)
    assert "afile is a file, not a directory" in line


def test_unknown_tracking_scheme_is_one_line(guarded_env, capsys):
    line = assert_one_line_exit_2(cli.main, ["table", "sweep/x", "--tracking-uri", "bogus://nowhere"], capsys,
                                  guarded_env)
    assert "scheme MLflow does not know" in line


def test_unknown_parent_run_is_one_line(guarded_env, capsys):
    argv = ["table", "sweep/x", "--runs-dir", "runs", "--parent-run", "0123456789abcdef"]
    line = assert_one_line_exit_2(cli.main, argv, capsys, guarded_env)
    assert "--parent-run 0123456789abcdef is not a run" in line


def test_truncated_prior_is_one_line(guarded_env, capsys):
    prior = guarded_env / "out-of-tree-prior.pt"
    prior.write_bytes((guarded_env / CHECKPOINT / "prior.pt").read_bytes()[:500])
    try:
        line = assert_one_line_exit_2(cli.main, ["generate", CHECKPOINT, "--prior", str(prior), "--device", "cpu"],
                                      capsys, guarded_env)
    finally:
        prior.unlink()
    assert "is unreadable" in line and "dbae prior" in line


def test_port_out_of_range_is_one_line(guarded_env, capsys):
    line = assert_one_line_exit_2(cli.main, ["ui", "--runs-dir", "runs", "--port", "70000"], capsys, guarded_env)
    assert "from 1 to 65535" in line


@pytest.mark.parametrize("body, needle", [
    ("name: s\nspace: [8, 16]\n", "space=[8, 16] has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\nsearch: random\nnum_samples: many\n",
     "num_samples='many' has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\nseeds: [0, x]\n", "seeds=[0, 'x'] has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\nnum_samples: true\n", "num_samples=True has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\nmetric: 3\n", "metric=3 has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\noverrides: [a]\n", "overrides=['a'] has the wrong type"),
    ("name: s\nspace: {model.latent_dim: [8]}\nasha: {reduction_factor: 1}\n", "asha.reduction_factor=1"),
    ("name: s\nspace: {model.latent_dim: [8]}\nmax_concurrent_trials: 0\n", "max_concurrent_trials=0"),
    ("- a list\n", "must hold a mapping"),
])
def test_study_yaml_is_validated_by_type(guarded_env, capsys, body, needle):
    study = guarded_env / "adir" / "typed.yaml"
    study.write_text(body)
    try:
        line = assert_one_line_exit_2(cli.main, ["sweep", str(study)], capsys, guarded_env)
    finally:
        study.unlink()
    assert needle in line


def test_debug_shows_the_traceback(guarded_env, capsys, monkeypatch):
    monkeypatch.setenv("DBAE_DEBUG", "1")
    assert cli.main(["table", "sweep/x", "--tracking-uri", "bogus://nowhere"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("dbae: error: tracking URI")


def test_a_config_error_wrapped_by_ray_is_one_line():
    from ray.train.v2.api.exceptions import WorkerGroupError
    inner = ConfigError("data.root=/x: not found: pass the dataset's folder")
    try:
        try:
            raise WorkerGroupError("rank 0 failed", {0: inner})
        except WorkerGroupError as err:
            raise RuntimeError(f"training failed: {err}") from err
    except RuntimeError as err:
        assert cli.bad_input_message(err) == str(inner)
    assert cli.bad_input_message(RuntimeError("a bug")) is None  # not bad input: the traceback stays


# -- preflight pieces, without Ray ---------------------------------------------------------------------
def fake_run(run_dir: Path, steps: list[int]) -> list[Path]:
    """checkpoint_* directories as Ray Train names them (oldest first), each with a small valid state."""
    paths = []
    for i, step in enumerate(steps):
        path = run_dir / f"checkpoint_2026-01-01_00-00-0{i}.000000"
        path.mkdir(parents=True)
        torch.save({"model": {}, "ema": {}, "optimizer": {}, "step": step}, path / "state.pt")
        paths.append(path)
    return paths


def test_preflight_skips_an_unreadable_newest_checkpoint(tmp_path, caplog):
    older, newest = fake_run(tmp_path, [2, 4])
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 2])
    caplog.set_level("WARNING", logger="dbae_platform.preflight")
    assert preflight.newest_loadable_checkpoint(tmp_path) == older
    skip = [r.getMessage() for r in caplog.records]
    assert len(skip) == 1 and newest.name in skip[0] and f"resuming from {older.name}" in skip[0]
    assert (newest / "state.pt").read_bytes() == data[: len(data) // 2]  # left untouched
    (older / "state.pt").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="none of the 2 checkpoint"):
        preflight.newest_loadable_checkpoint(tmp_path)


def test_preflight_finds_wrong_sized_and_unreadable_data(tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(folder / f"{i:02d}.png")
    cfg = load_config("tiny", {"data.dataset": "image_folder", "data.root": str(folder), "data.size": 16})
    preflight.check_data(cfg)
    for png in folder.iterdir():
        png.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="cannot be read"):
        preflight.check_data(cfg)


# -- with Ray: the corrupt newest checkpoint, and the data check on a node ----------------------------
def _train_argv(tmp_path: Path, steps: int) -> list[str]:
    sets = ["name=corrupt", f"train.steps={steps}", "train.ckpt_every=2", "train.log_every=2", "train.batch_size=4",
            "train.keep_checkpoints=10", "train.image_every=0", "data.train_images=64", "eval.suites=[]",
            "eval.val_n=0", "resources.cpus_per_worker=0.5", f"tracking.runs_dir={tmp_path / 'runs'}"]
    return ["train", "tiny", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def ray_with_worker_logs():
    """A local Ray whose workers' output reaches this process (the skip line a worker logs is checked)."""
    import ray
    if os.environ.get("RAY_ADDRESS"):
        pytest.skip("needs a local Ray: RAY_ADDRESS is set")
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=256 * 2**20, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_rerun_with_a_truncated_newest_checkpoint_resumes_from_the_previous_one(tmp_path, ray_with_worker_logs,
                                                                                capfd, caplog):
    assert cli.main(_train_argv(tmp_path, 4)) == 0
    run_dir = tmp_path / "runs" / "corrupt"
    *_, older, newest = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 3])  # a node died while writing it
    capfd.readouterr()
    caplog.clear()
    caplog.set_level("WARNING", logger="dbae_platform.preflight")
    assert cli.main(_train_argv(tmp_path, 6)) == 0
    time.sleep(1)  # the workers' last lines reach the driver through Ray's log monitor
    driver = [r.getMessage() for r in caplog.records if r.name == "dbae_platform.preflight"]
    assert len(driver) == 1 and f"checkpoint {newest} is unreadable" in driver[0], driver  # said once, up front
    assert f"resuming from {older.name}" in driver[0]
    worker = [line for line in capfd.readouterr().err.splitlines() if f"checkpoint {newest.name} is unreadable" in line]
    assert worker and f"resuming from {older.name}" in worker[0]  # the worker took the fallback
    assert (newest / "state.pt").read_bytes() == data[: len(data) // 3]  # left untouched
    assert json.loads((run_dir / "result.json").read_text())["step"] == 6


@pytest.mark.slow
def test_data_check_on_a_node_is_one_line(ray_with_worker_logs, tmp_path):
    cfg = load_config("tiny", {"data.dataset": "image_folder", "data.root": str(tmp_path / "only-on-the-driver")})
    with pytest.raises(ConfigError, match=r"^on Ray node .*image folder not found"):
        preflight.check_data_on_nodes(cfg, include_driver_node=True)
    preflight.check_data_on_nodes(load_config("tiny"), include_driver_node=True)  # shapes: fine everywhere
