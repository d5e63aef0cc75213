"""The MLflow model registry: `dbae register`, models:/ and runs:/ URIs as CHECKPOINT, the pyfunc model.

Tiny untrained checkpoints built in-process (as tests/test_generate_cli.py) and an embedded sqlite store: register →
load by URI → the outputs equal the checkpoint's, through MLflow's own loader and through every command.
"""

import dataclasses
import json
import shutil

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from dbae_platform import registry
from dbae_platform.cli import main
from dbae_platform.config import load_config
from dbae_platform.models import build_model

SMALL = {"data.size": 16, "data.train_images": 64, "model.latent_dim": 8, "model.unet.base_channels": 8,
         "model.unet.channel_mult": [1, 2], "model.unet.attention_resolutions": [], "model.unet.head_channels": 8,
         "model.encoder.base_channels": 8, "model.encoder.channel_mult": [1, 2],
         "model.encoder.attention_resolutions": [], "model.decoder.ngf": 4, "eval.batch_size": 32}


def checkpoint(root, method="dbae_d", seed=0):
    """A checkpoint directory as `dbae train` writes it, with random weights (distinct per seed)."""
    cfg = load_config("tiny", {**SMALL, "name": f"reg_{method}_{seed}", "model.method": method})
    torch.manual_seed(seed)
    model = build_model(cfg)
    for p in model.parameters():  # zero-initialised output layers would make every model alike
        p.data.add_(0.05 * torch.randn_like(p))
    sd = model.state_dict()
    directory = root / f"{method}_{seed}" / "checkpoint_000000"
    directory.mkdir(parents=True)
    torch.save({"model": sd, "ema": sd, "optimizer": {}, "step": 4, "model_kind": model.kind,
                "model_config": dataclasses.asdict(model.cfg)}, directory / "state.pt")
    (directory / "config.yaml").write_text(cfg.to_yaml())
    return directory, model.eval()


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty sqlite store, created once (its schema migrations take seconds) and copied by each test."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(empty_store, tmp_path, monkeypatch):
    """The working directory with an embedded store at runs/mlflow.db (the default of every command)."""
    monkeypatch.chdir(tmp_path)
    for name in ("DBAE_STORAGE_PATH", "DBAE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "runs").mkdir()
    shutil.copyfile(empty_store, tmp_path / "runs" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as a user of mlflow.pyfunc.load_model("models:/...") sets it
    return uri


def images(n=3, size=16, seed=1):
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_registered_checkpoint_loads_by_uri_with_the_checkpoints_outputs(store, tmp_path, capsys):
    ckpt, model = checkpoint(tmp_path)
    assert main(["prior", str(ckpt), "--steps", "3"]) == 0  # a trained latent prior travels with the model
    capsys.readouterr()
    assert main(["register", str(ckpt), "dbae-small"]) == 0
    out = capsys.readouterr().out
    assert "as models:/dbae-small/1" in out and "dbae eval models:/dbae-small/1" in out

    # MLflow's own loader: predict encodes (posterior means) and reconstructs, exactly as the checkpoint's model
    loaded = mlflow.pyfunc.load_model("models:/dbae-small/1")
    x = images()
    with torch.no_grad():
        z = model.encode(x)
        recon = model.decode(z, 2)[0]
    np.testing.assert_array_equal(loaded.predict(x.numpy()), z.numpy())
    np.testing.assert_array_equal(loaded.predict(x.numpy(), params={"output": "reconstruction", "steps": 2}),
                                  recon.numpy())
    meta = loaded.metadata
    assert meta.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 16, 16)
    assert meta.get_input_schema() is not None and meta.saved_input_example_info is not None
    assert {p.name for p in meta.signature.params} == {"output", "steps"}

    # every command: the same numbers and pictures from the URI as from the checkpoint directory
    uri = "models:/dbae-small/1"
    for ref, tag in ((str(ckpt), "ckpt"), (uri, "uri")):
        assert main(["eval", ref, "--suite", "recon", "--n", "4", "--sampler-steps", "2", "--out", f"e_{tag}",
                     "--device", "cpu"]) == 0
        assert main(["generate", ref, "--n", "4", "--steps", "2", "--prior-steps", "2", "--out", f"g_{tag}",
                     "--device", "cpu"]) == 0
        assert main(["interpolate", ref, "--pairs", "1", "--frames", "3", "--steps", "2", "--out", f"i_{tag}",
                     "--device", "cpu"]) == 0
    by_uri, by_path = (json.loads((tmp_path / f"e_{tag}/metrics.json").read_text()) for tag in ("uri", "ckpt"))
    for timed in (by_uri, by_path):  # milliseconds per image: a timing, not a result
        del timed["eval/encode_ms"]
    assert by_uri == by_path and "eval/recon_mse" in by_uri
    # the README's `dbae generate models:/NAME/latest`: the newest version, here the only one
    assert main(["generate", "models:/dbae-small/latest", "--n", "4", "--steps", "2", "--prior-steps", "2", "--out",
                 "g_latest", "--device", "cpu"]) == 0
    np.testing.assert_array_equal(pixels(tmp_path / "g_latest/samples.png"), pixels(tmp_path / "g_ckpt/samples.png"))
    for png in ("g_{}/samples.png", "i_{}/interpolations.png", "i_{}/interpolation_0.png"):
        np.testing.assert_array_equal(pixels(tmp_path / png.format("ckpt")), pixels(tmp_path / png.format("uri")))
    cached = tmp_path / "runs" / "models" / "dbae-small" / "1"
    assert sorted(p.name for p in next(cached.glob("**/artifacts/checkpoint")).iterdir()) == \
        ["config.yaml", "prior.pt", "state.pt"]
    assert "optimizer" not in torch.load(next(cached.glob("**/state.pt")), weights_only=True)


def test_versions_latest_runs_uri_and_a_run_id_from_another_machine(store, tmp_path, capsys):
    """A second registration is version 2 (models:/NAME/latest finds it); runs:/RUN_ID/model loads the logged model;
    a run id whose checkpoint this machine cannot see registers from the EMA weights and config logged to the run."""
    first, _ = checkpoint(tmp_path, seed=0)
    second, model2 = checkpoint(tmp_path, "dbae", seed=1)
    assert main(["register", str(first), "m"]) == 0 and main(["register", str(second), "m"]) == 0
    assert "as models:/m/2" in capsys.readouterr().out
    x = images()
    with torch.no_grad():
        z2 = model2.encode(x).numpy()
    state, cfg = registry.resolve_checkpoint("models:/m/latest")
    assert state.parts[-5:] == ("2", "model", "artifacts", "checkpoint", "state.pt") and cfg.name == "config.yaml"
    client = mlflow.MlflowClient(store)
    version = client.get_model_version("m", "2")
    client.set_registered_model_alias("m", "champion", "2")
    for ref in ("models:/m@champion", f"runs:/{version.run_id}/model"):
        np.testing.assert_array_equal(mlflow.pyfunc.load_model(ref).predict(x.numpy()), z2)
        assert main(["eval", ref, "--suite", "recon", "--n", "2", "--sampler-steps", "1", "--out", "e",
                     "--device", "cpu"]) == 0

    # a finished run elsewhere: only its logged ema.pt and config.yaml are reachable (as dbae train logs them)
    exp = client.create_experiment("remote")
    run = client.create_run(exp, tags={"dbae.run_dir": str(tmp_path / "not-on-this-machine")})
    full = torch.load(second / "state.pt", weights_only=True)
    torch.save({k: full[k] for k in ("ema", "step", "model_kind", "model_config")}, tmp_path / "ema.pt")
    client.log_artifact(run.info.run_id, str(tmp_path / "ema.pt"))
    client.log_artifact(run.info.run_id, str(second / "config.yaml"))
    client.set_terminated(run.info.run_id)
    capsys.readouterr()
    assert main(["register", run.info.run_id, "remote-model"]) == 0
    assert f"MLflow run {run.info.run_id}" in capsys.readouterr().out
    np.testing.assert_array_equal(mlflow.pyfunc.load_model("models:/remote-model/1").predict(x.numpy()), z2)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_best_trial_run_picks_the_best_seed_of_the_best_configuration(store):
    client = mlflow.MlflowClient(store)
    exp = client.create_experiment("sweep/s")
    parent = client.create_run(exp).info.run_id
    rows = [({"model.latent_dim": 8}, 0.30, "FINISHED"), ({"model.latent_dim": 8}, 0.10, "FINISHED"),
            ({"model.latent_dim": 8}, 0.01, "FAILED"), ({"model.latent_dim": 16}, 0.05, "FINISHED")]
    ids = []
    for values, mse, status in rows:
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "dbae.sweep.values": json.dumps(values)})
        client.log_metric(run.info.run_id, "eval/recon_mse", mse)
        client.set_terminated(run.info.run_id, status)
        ids.append(run.info.run_id)
    assert registry.best_trial_run(client, parent, {"model.latent_dim": 8}, "eval/recon_mse", "min") == ids[1]
    assert registry.best_trial_run(client, parent, {"model.latent_dim": 8}, "eval/recon_mse", "max") == ids[0]
    with pytest.raises(ValueError, match="nothing to register"):
        registry.best_trial_run(client, parent, {"model.latent_dim": 32}, "eval/recon_mse", "min")


@pytest.mark.parametrize("argv, needle", [
    (["eval", "models:/nope/1"], "models:/nope/1 is not in the model registry"),
    (["eval", "models:/nope/one"], "is not a number"),
    (["generate", "runs:/xyz/model"], "is not a logged model"),
    (["eval", "models:/x/1", "--tracking-uri", "sqlite:///afile/mlflow.db"], "afile is a file"),
    (["register", "missing", "name"], "neither a checkpoint path nor an MLflow run id"),
    (["register", "0123456789abcdef" * 2, "name"], "is not in the MLflow store"),
])
def test_bad_model_references_are_one_line_exit_2(store, tmp_path, capsys, argv, needle):
    (tmp_path / "afile").write_text("x")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_an_unfinished_run_is_not_registered(store, capsys):
    client = mlflow.MlflowClient(store)
    run = client.create_run(client.create_experiment("e"))
    assert main(["register", run.info.run_id, "name"]) == 2
    assert "is RUNNING: register a finished run" in capsys.readouterr().err
