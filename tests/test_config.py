"""Typed configs: presets resolve to the paper's networks, overrides apply, and every invalid value is one line."""

import dataclasses

import pytest
import yaml

from dbae_core.presets import preset
from dbae_platform.cli import main
from dbae_platform.config import ConfigError, config_diff, flatten, load_config, parse_overrides, presets


def test_presets_ship_and_resolve():
    assert {"tiny", "shapes32", "fashion32", "celeba64", "ffhq128"} <= set(presets())
    for name in ("tiny", "shapes32"):
        cfg = load_config(name)
        assert cfg.name == name
        cfg.model_config()


@pytest.mark.parametrize("name", ["celeba64", "ffhq128", "tiny"])
def test_yaml_presets_equal_the_core_presets(name):
    """The YAML is data for the same networks as dbae_core.presets (the paper's sizes, checked there by count)."""
    cfg = load_config(name, ["data.dataset=shapes", "data.flip=false"]) if name != "tiny" else load_config(name)
    got, want = cfg.model_config(), preset(name)
    assert got.unet == want.unet and got.decoder == want.decoder
    assert dataclasses.replace(got.encoder, stochastic=False) == want.encoder
    assert (got.latent_dim, got.sde, got.image_size) == (want.latent_dim, want.sde, want.image_size)


def test_overrides_are_typed_and_nested():
    cfg = load_config("tiny", ["model.latent_dim=32", "train.betas=[0.9, 0.99]", "objective.sde=ve",
                               "objective.bridge={sigma_max: 80}", "model.method=dbae",
                               "objective.entropy_weight=1e-3", "model.unet.channel_mult=[1,2]"])
    assert cfg.model.latent_dim == 32 and cfg.train.betas == (0.9, 0.99)
    assert cfg.objective.entropy_weight == 1e-3 and cfg.model.unet.channel_mult == (1, 2)
    core = cfg.model_config()
    assert core.sde == "ve" and core.encoder.stochastic and core.latent_dim == 32
    assert cfg.model_config().unet.image_size == cfg.data.size == 32


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("tiny", ["model.latent_dim=48"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert config_diff(cfg.to_dict(), again.to_dict()) == {}
    assert flatten(cfg.to_dict())["model.latent_dim"] == 48


BAD = [
    (["model.latnt_dim=3"], "unknown key 'model.latnt_dim': did you mean 'latent_dim'"),
    (["bogus=1"], "unknown key 'bogus'"),
    (["model.latent_dim=0"], "model.latent_dim=0 is invalid"),
    (["model.latent_dim=-3"], "model.latent_dim=-3 is invalid"),
    (["model.latent_dim=abc"], "model.latent_dim='abc' has the wrong type: expected an integer"),
    (["model.latent_dim=1.5"], "expected an integer"),
    (["data.size=48"], "data.size=48 is invalid: allowed is a power of two"),
    (["data.size=512"], "data.size=512 is invalid"),
    (["objective.sde=vpx"], "objective.sde=vpx is invalid: allowed is 'vp' or 've'"),
    (["objective.entropy_weight=0.1"],
     "objective.entropy_weight=0.1 is invalid: allowed is 0 with model.method=dbae_d"),
    (["objective.entropy_weight=-1", "model.method=dbae"], "objective.entropy_weight=-1.0 is invalid"),
    (["train.lr=-1e-4"], "train.lr=-0.0001 is invalid: allowed is a positive number"),
    (["train.lr=fast"], "train.lr='fast' has the wrong type"),
    (["train.steps=0"], "train.steps=0 is invalid"),
    (["train.optimizer=sgd"], "train.optimizer=sgd is invalid: allowed is one of"),
    (["train.precision=fp16"], "train.precision=fp16 is invalid"),
    (["train.ema_decay=1.0"], "train.ema_decay=1.0 is invalid"),
    (["train.betas=[0.9]"], "train.betas=[0.9] needs exactly 2 values"),
    (["model.method=vae"], "model.method=vae is invalid"),
    (["data.dataset=imagenet"], "data.dataset=imagenet is invalid"),
    (["model.unet.image_size=64"], "model.unet.image_size is set from data.size"),
    (["model.unet.channel_mult=[1,2,2,2,2,2]"], "model.unet.channel_mult"),
    (["model.unet.channel_mult=[]"], "model.unet.channel_mult=[] is invalid"),
    (["model.decoder.norm=layer"], "model.decoder.norm=layer is invalid"),
    (["model.encoder.attention_resolutions=[12]"], "model.encoder.attention_resolutions=[12] is invalid"),
    (["objective.bridge={beta_min: -1}"], "objective.bridge"),
    (["objective.bridge={gamma: 1}"], "objective.bridge"),
    (["resources.num_workers=0"], "resources.num_workers=0 is invalid"),
    (["eval.suites=[recon, fid]"], "eval.suites=[recon, fid] is invalid"),
    (["name=a/b"], "name=a/b is invalid"),
    (["model=3"], "model=3 has the wrong type"),
    (["latent_dim"], "is not KEY=VALUE"),
    (["model.latent_dim=[1"], "the value is not valid YAML"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[0][0] for b in BAD])
def test_every_invalid_value_is_one_line_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides)
    text = str(err.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("overrides,message", BAD[:8], ids=[b[0][0] for b in BAD[:8]])
def test_cli_reports_bad_config_with_exit_2(overrides, message, capsys):
    argv = ["train", "tiny", "--dry-run"] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_files(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {latent_dim: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_config("tinyy")
    assert main(["train", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_dry_run_prints_config_and_parameter_counts(capsys):
    assert main(["train", "tiny", "--dry-run", "--set", "model.latent_dim=32"]) == 0
    out = capsys.readouterr().out
    head, _, tail = out.rpartition("parameters:")
    assert yaml.safe_load(head)["model"]["latent_dim"] == 32
    assert tail.startswith(" total 2.03M") and "unet 1.38M" in tail and "encoder" in tail and "decoder" in tail


def test_dry_run_of_diffae_counts_the_model_it_would_train(capsys):
    """The DiffAE baseline builds its DDIM schedule on the CPU, so the meta-device dry run works for it too."""
    from dbae_platform.config import load_config
    from dbae_platform.models import build_model
    assert main(["train", "tiny", "--dry-run", "--set", "model.method=diffae"]) == 0
    total = sum(p.numel() for p in build_model(load_config("tiny", {"model.method": "diffae"})).parameters())
    assert f"({total:,})" in capsys.readouterr().out


def test_cli_usage_errors(capsys):
    for argv in (["train"], ["train", "tiny", "--bogus"], ["eval"], ["ui", "--port", "x"], ["nope"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dbae: error:"), (argv, err)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=1", "a.c=1.0e-3", "a.d=true", "a.e=null", "a.f=x", "a.g=[1, 2]"]) == {
        "a.b": 1, "a.c": 1e-3, "a.d": True, "a.e": None, "a.f": "x", "a.g": [1, 2]}
