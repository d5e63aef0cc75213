"""Every sweep command that the README or a study's docstring shows runs, at smoke size, on a real local Ray cluster and
a real sqlite MLflow store. The commands are parsed out of the texts, so a new example cannot go untested.

Smoke size: the command as written plus `--smoke` (4 steps per trial on a small run), each swept list cut to its last
value (VE, DiffAE: the paths furthest from the defaults), at most 2 seeds and 2 samples, and a temporary storage path.
Its search algorithm, preset, seeds (> 1 stays > 1), scheduler, resume and study file are the command's own. A command
whose flags all appear in another documented command of the same study runs as part of that one.
"""

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from dbae_platform import cli
from dbae_platform.cli.sweep import add_study_flags, apply_flags
from dbae_platform.study import Study, load_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"(python sweeps/\w+\.py|dbae sweep )")


def _texts() -> dict[str, str]:
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for path in sorted((ROOT / "sweeps").glob("*.py")):
        doc = re.match(r'\s*"""(.*?)"""', path.read_text(), re.S)
        texts[f"sweeps/{path.name}"] = doc.group(1) if doc else ""
    return texts


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every sweep command in the texts: continuation lines joined, comments and any
    `ray job submit ... --` prefix dropped (the job-submit test runs that path on a real 2-node cluster)."""
    found: dict[tuple[str, ...], str] = {}
    for where, text in _texts().items():
        for line in text.replace("\\\n", " ").splitlines():
            m = COMMAND.search(line)
            if m is None:
                continue
            command = line[m.start():].split(" #", 1)[0].split("`", 1)[0].strip()
            found.setdefault(tuple(_normalised(shlex.split(command))), where)
    return [(where, list(argv)) for argv, where in found.items()]


def _normalised(argv: list[str]) -> list[str]:
    """Without what smoke size replaces anyway: --smoke and --storage-path PATH."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--storage-path":
            skip = True
        elif a != "--smoke" and not a.startswith("--storage-path="):
            out.append(a)
    return out


def _covered(argv: list[str], others: list[list[str]]) -> bool:
    """A command whose flags all appear in another command of the same study runs as part of that one."""
    head, flags = argv[:3] if argv[0] == "dbae" else argv[:2], set(argv[3 if argv[0] == "dbae" else 2:])
    return any(o != argv and o[:len(head)] == head and flags < set(o[len(head):]) for o in others)


def _study_of(argv: list[str]) -> tuple[Study, list[str]]:
    """The study a command runs and its flags."""
    if argv[0] == "dbae":
        return load_study(ROOT / argv[2]), argv[3:]
    spec = importlib.util.spec_from_file_location("study_file", ROOT / argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the `if __name__ == "__main__"` guard keeps it from running
    return module.STUDY, argv[2:]


def smoke_flags(study: Study, flags: list[str], storage: Path) -> list[str]:
    """The flags that bring the command to smoke size (appended: the last occurrence of a flag wins)."""
    parser = argparse.ArgumentParser()
    add_study_flags(parser)
    args = parser.parse_args(flags)
    effective = apply_flags(study, args)
    extra = ["--smoke", "--storage-path", str(storage), "--max-concurrent", "2"]
    for key, spec in effective.space.items():  # the last value: the path furthest from the defaults (VE, DiffAE)
        if isinstance(spec, list) and len(spec) > 1:
            extra += ["--space", f"{key}=[{spec[-1]!r}]".replace("'", "")]
    if len(effective.seeds) > 2:
        extra += ["--seeds", "2"]
    if effective.search != "grid" and effective.num_samples > 2:
        extra += ["--num-samples", "2"]
    return extra


ALL = documented_commands()
COMMANDS = [(where, argv) for where, argv in ALL if not _covered(argv, [a for _, a in ALL])]


def test_the_documented_commands_are_found():
    argvs = [" ".join(argv) for _, argv in COMMANDS]
    assert any("--search optuna" in a for a in argvs) and any(a.startswith("dbae sweep") for a in argvs)
    assert {Path(a.split()[1]).stem for a in argvs if a.startswith("python")} >= {
        "latent_dim", "entropy_weight", "sde_type", "paper_ablation"}


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[" ".join(argv) for _, argv in COMMANDS])
def test_documented_sweep_command_runs(local_ray, tmp_path, capsys, where, argv):
    study, flags = _study_of(argv)
    full = flags + smoke_flags(study, flags, tmp_path)
    if argv[0] == "dbae":
        rc = cli.main(["sweep", argv[2], *full])
    else:
        from dbae_platform.cli.sweep import main
        rc = main(study, full)
    out, err = capsys.readouterr()
    assert rc == 0, f"{where}: {' '.join(argv)}\n{err[-3000:]}"
    assert "ablation table of sweep" in out and "| n |" in out.replace("---:", "")
    effective = apply_flags(study, _parsed(flags + full))
    header, *rows = [line.strip("|").split("|") for line in out.split("ablation table of sweep", 1)[1].splitlines()
                     if line.startswith("| ")]
    n = [int(row[[c.strip() for c in header].index("n")]) for row in rows]
    assert rows, out[-2000:]
    if effective.asha is None:  # every seed of every configuration in the table
        assert n == [len(effective.seeds)] * len(rows), out[-2000:]
    else:  # ASHA may stop a seed early; stopped trials stay out of the final table
        assert all(1 <= k <= len(effective.seeds) for k in n), out[-2000:]
    _assert_ui_links(out, tmp_path)
    if "--register" in flags:
        _assert_registered(out, tmp_path, flags[flags.index("--register") + 1])


def _assert_registered(out: str, storage: Path, name: str) -> None:
    """`--register NAME`: the best trial's model is version 1 of NAME, and models:/NAME/1 works as a CHECKPOINT."""
    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.registry import resolve_checkpoint
    m = re.search(rf"registered the best trial \(MLflow run ([0-9a-f]{{32}})\) as models:/{re.escape(name)}/1$", out,
                  re.M)
    assert m, out[-1500:]
    state, cfg = resolve_checkpoint(f"models:/{name}/1", f"sqlite:///{storage / 'mlflow.db'}", storage)
    assert load_checkpoint(state, required=WEIGHTS_KEYS)["step"] > 0 and cfg is not None


def _assert_ui_links(out: str, storage: Path) -> None:
    """The sweep ends with the MLflow UI's runs table of its experiment and its parent run's page, and the experiment
    is tagged to open on the runs table (not MLflow 3's GenAI view)."""
    from mlflow import MlflowClient

    from dbae_platform.tracking import EXPERIMENT_KIND
    table = re.search(r"runs table of experiment (\S+): http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs "
                      rf"\(serve it: dbae ui --runs-dir {re.escape(str(storage))}\)", out)
    parent = re.search(r"parent run \(ablation table, plots\): http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/"
                       r"([0-9a-f]{32})$", out, re.M)
    assert table and parent, out[-1500:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    run = client.get_run(parent[2])
    experiment = client.get_experiment(table[2])
    assert run.data.tags["dbae.sweep.role"] == "parent" and run.info.experiment_id == table[2] == parent[1]
    assert experiment.name == table[1] and experiment.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]


def _parsed(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_study_flags(parser)
    return parser.parse_args(flags)
