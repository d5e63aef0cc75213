"""`dbae prior`, `generate`, `interpolate` and `manipulate` on tiny checkpoints built in-process (no Ray, no training).

The checkpoints hold an untrained 16 px model (~0.1M parameters) on 64 shapes images, so every command runs in about a
second on CPU; what is checked is the plumbing: files, grid sizes, resumption, label parsing and one-line errors.
"""

import argparse
import dataclasses
import re

import pytest
import torch
from PIL import Image

from dbae_core.latent_prior import LatentPrior, load_prior, save_prior
from dbae_platform.cli import Parser, generate, guarded
from dbae_platform.config import ConfigError, load_config
from dbae_platform.models import build_model

SIZE, PAD = 16, 2  # image side and the grid padding of dbae_core.editing.image_grid
SMALL = {"data.size": SIZE, "data.train_images": 64, "model.latent_dim": 8, "model.unet.base_channels": 8,
         "model.unet.channel_mult": [1, 2], "model.unet.attention_resolutions": [], "model.unet.head_channels": 8,
         "model.encoder.base_channels": 8, "model.encoder.channel_mult": [1, 2],
         "model.encoder.attention_resolutions": [], "model.decoder.ngf": 4, "eval.batch_size": 32}


@pytest.fixture
def make_checkpoint(tmp_path):
    """A checkpoint directory as `dbae train` writes it (state.pt + config.yaml) for model.method `method`."""
    def make(method: str = "dbae_d"):
        cfg = load_config("tiny", {**SMALL, "name": f"gen_{method}", "model.method": method})
        torch.manual_seed(0)
        model = build_model(cfg)
        sd = model.state_dict()
        directory = tmp_path / method / "checkpoint_000000"
        directory.mkdir(parents=True)
        torch.save({"model": sd, "ema": sd, "optimizer": {}, "step": 4, "model_kind": model.kind,
                    "model_config": dataclasses.asdict(model.cfg)}, directory / "state.pt")
        (directory / "config.yaml").write_text(cfg.to_yaml())
        return directory
    return make


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="dbae")
    generate.add_parsers(p.add_subparsers(dest="command", required=True, parser_class=Parser))
    return p


def dbae(*argv) -> int:
    """Run one command in-process, exceptions propagating (as cli.main's handler call, before its error mapping)."""
    args = parser().parse_args([str(a) for a in argv])
    return generate.HANDLERS[args.command](args)


def png_size(path):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    return cols * (SIZE + PAD) + PAD, rows * (SIZE + PAD) + PAD


def test_prior_trains_saves_and_is_not_retrained(make_checkpoint, capsys, caplog):
    ckpt = make_checkpoint()
    assert dbae("prior", ckpt, "--steps", 3) == 0
    path = ckpt / "prior.pt"
    assert capsys.readouterr().out.strip() == str(path)
    prior = load_prior(path)
    assert prior.cfg.latent_dim == 8 and prior.cfg.width == 256  # tiny preset: the model is far below 10M parameters
    state = torch.load(path, weights_only=True)
    assert (state["step"], state["checkpoint_step"], state["train_latents"]) == (3, 4, 64)

    mtime = path.stat().st_mtime_ns
    caplog.set_level("INFO", logger="dbae_platform.generation")
    assert dbae("prior", ckpt, "--steps", 3) == 0
    assert "nothing to do" in caplog.text and path.stat().st_mtime_ns == mtime
    assert dbae("prior", ckpt, "--steps", 5) == 0  # more steps: fit_prior cannot resume, so it retrains
    assert "restarts from step 0" in caplog.text and torch.load(path, weights_only=True)["step"] == 5

    out = ckpt.parent / "elsewhere"
    assert dbae("prior", ckpt, "--steps", 2, "--preset", "tiny", "--lr", "1e-3", "--out", out) == 0
    assert load_prior(out / "prior.pt").cfg.lr == 1e-3


@pytest.mark.parametrize("method", ["dbae_d", "diffae"])
def test_generate_writes_a_grid_of_prior_samples(make_checkpoint, capsys, method):
    ckpt = make_checkpoint(method)
    dbae("prior", ckpt, "--steps", 2)
    capsys.readouterr()
    assert dbae("generate", ckpt, "--n", 10, "--steps", 3, "--prior-steps", 3) == 0
    path = ckpt / "generate" / "samples.png"
    assert capsys.readouterr().out.strip() == str(path)
    assert png_size(path) == grid_size(2, 8)  # 10 samples, 8 per row

    wrong = save_prior(ckpt.parent / "prior4.pt", LatentPrior(load_prior(ckpt / "prior.pt").cfg.replace(latent_dim=4)))
    with pytest.raises(ConfigError, match="latent_dim 4 but the model has 8"):
        dbae("generate", ckpt, "--prior", wrong)


def test_generate_without_a_prior_says_what_to_run(make_checkpoint, capsys, tmp_path):
    ckpt = make_checkpoint()
    with pytest.raises(FileNotFoundError, match=r"dbae prior .*--gaussian"):
        dbae("generate", ckpt, "--n", 2)
    with pytest.raises(FileNotFoundError, match="--prior .* does not exist"):
        dbae("generate", ckpt, "--prior", tmp_path / "missing.pt")
    code = guarded(lambda a: generate.HANDLERS[a.command](a), parser(), ["generate", str(ckpt), "--n", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no latent prior" in err

    assert dbae("generate", ckpt, "--gaussian", "--n", 3, "--steps", 2, "--out", tmp_path / "g") == 0
    assert png_size(tmp_path / "g" / "samples.png") == grid_size(1, 3)


@pytest.mark.parametrize("method", ["dbae_d", "diffae"])
def test_interpolate_writes_strips_and_grid(make_checkpoint, capsys, method):
    ckpt = make_checkpoint(method)
    assert dbae("interpolate", ckpt, "--pairs", 2, "--frames", 3, "--steps", 2) == 0
    out = ckpt / "interpolate"
    assert capsys.readouterr().out.strip() == str(out / "interpolations.png")
    assert png_size(out / "interpolations.png") == grid_size(2, 5)  # source, 3 frames, target
    assert [png_size(out / f"interpolation_{i}.png") for i in range(2)] == [grid_size(1, 5)] * 2
    if method == "dbae_d":
        with pytest.raises(ConfigError, match="DiffAE checkpoints only"):
            dbae("interpolate", ckpt, "--random-xt")


def manipulation_table(text: str) -> tuple[list[float], list[float]]:
    rows = [line.split() for line in text.splitlines() if re.match(r"^\s*-?\d", line)]
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


@pytest.mark.parametrize("method, attribute, scales", [
    ("dbae_d", "is_square", ["--scales=-1,0,1,2"]),
    ("dbae_d", "shape=0", ["--scales", "-2", "0.5,3"]),
    ("diffae", "3", ["--no-keep-endpoint"]),
])
def test_manipulate_logits_move_with_the_scale(make_checkpoint, capsys, method, attribute, scales):
    ckpt = make_checkpoint(method)
    assert dbae("manipulate", ckpt, "--attribute", attribute, "--n", 2, "--steps", 2, *scales) == 0
    out = capsys.readouterr().out
    s, logits = manipulation_table(out)
    assert s == ([-1, 0, 1, 2] if scales[0] != "--scales" else [-2, 0.5, 3])
    assert all(b > a for a, b in zip(logits, logits[1:])), out
    path = ckpt / "manipulate" / "manipulation.png"
    assert out.strip().splitlines()[-1] == str(path)
    assert png_size(path) == grid_size(2, len(s) + 1)  # original, then one column per scale
    assert png_size(ckpt / "manipulate" / "manipulation_1.png") == grid_size(1, len(s) + 1)


def test_manipulate_rejects_unknown_or_missing_labels(make_checkpoint, monkeypatch):
    ckpt = make_checkpoint()
    with pytest.raises(ConfigError, match="is_round.*is_square"):
        dbae("manipulate", ckpt, "--attribute", "is_round")
    with pytest.raises(ConfigError, match="always|never"):
        dbae("manipulate", ckpt, "--attribute", "scale>1")

    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(3, SIZE, SIZE), torch.tensor(-1)

    monkeypatch.setattr(generate, "_datasets", lambda run: (Unlabelled(), Unlabelled()))
    with pytest.raises(ConfigError, match="carries no labels"):
        dbae("manipulate", ckpt, "--attribute", "0")


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist: pass a checkpoint directory written by dbae train"):
        dbae("generate", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no state.pt"):
        dbae("interpolate", tmp_path / "empty")
    for command in generate.HANDLERS:
        extra = ["--attribute", "0"] if command == "manipulate" else []
        code = guarded(lambda a: generate.HANDLERS[a.command](a), parser(), [command, str(tmp_path / "nope"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "does not exist" in err
