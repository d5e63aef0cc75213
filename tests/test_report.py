"""`dbae report` on a real MLflow store holding sweeps laid out as the sweep driver writes them.

The metric values are chosen here, so each claim's verdict and the trends are known in advance; the test checks the
document and its pictures against them.
"""

import json
import re

import pytest
from mlflow import MlflowClient

from dbae_platform import report
from dbae_platform.cli import main

PAPER = {  # method -> metrics of the method comparison (shapes); DiffAE's random-x_T row under eval/random_xT/
    "dbae": {"eval/recon_mse": 0.010, "eval/ssim": 0.70, "eval/psnr": 20.0, "eval/probe_ap": 0.80, "eval/tad": 0.30,
             "eval/attrs": 3.0, "eval/encode_ms": 2.0, "eval/mig": 0.2},
    "dbae_d": {"eval/recon_mse": 0.020, "eval/ssim": 0.75, "eval/psnr": 18.0, "eval/probe_ap": 0.82, "eval/tad": 0.2,
               "eval/attrs": 2.0, "eval/encode_ms": 2.0, "eval/mig": 0.1},
    "diffae": {"eval/recon_mse": 0.001, "eval/ssim": 0.95, "eval/psnr": 30.0, "eval/probe_ap": 0.85,
               "eval/tad": 0.10, "eval/attrs": 3.0, "eval/encode_ms": 50.0, "eval/mig": 0.05,
               "eval/random_xT/recon_mse": 0.050, "eval/random_xT/ssim": 0.40, "eval/random_xT/psnr": 13.0,
               "eval/random_xT/encode_ms": 2.5},
}
# The verdicts these numbers imply, in the order of report.CLAIMS (worked out by hand from PAPER):
EXPECTED = [
    True,   # DBAE-d SSIM 0.75 > DBAE 0.70
    False,  # DBAE-d MSE 0.020 is not below DBAE's 0.010
    True,   # DBAE SSIM 0.70 > DiffAE random 0.40
    True,   # DBAE MSE 0.010 < DiffAE random 0.050
    True,   # DBAE-d SSIM 0.75 > 0.40
    True,   # DBAE-d MSE 0.020 < 0.050
    True,   # DiffAE inferred SSIM 0.95 > DBAE-d 0.75
    False,  # probe AP DBAE 0.80 < DiffAE 0.85
    False,  # probe AP DBAE-d 0.82 < DiffAE 0.85
    False,  # probe AP DBAE 0.80 < DBAE-d 0.82
    True,   # TAD DBAE 0.30 > DiffAE 0.10
    True,   # ATTRS DBAE 3 = DiffAE 3: a tie agrees ("at least")
    True,   # encode ms DBAE 2.0 < DiffAE inferred 50.0 (25x faster)
]
LATENT = {16: 0.030, 64: 0.020, 256: 0.015}  # latent_dim -> recon_mse: falls monotonically


def _sweep(client, name, swept, trials, params, command, seeds=None):
    """A sweep as the driver writes it; `seeds[i]` is trial i's seed (default 0 for all)."""
    exp = client.create_experiment(f"sweep/{name}")
    parent = client.create_run(exp, run_name=name, tags={
        "dbae.sweep.role": "parent", "dbae.sweep.name": name, "dbae.sweep.swept": json.dumps(swept),
        "dbae.command": command, "dbae.hardware": "Test CPU, 2 CPU cores, no GPU, torch x",
        "mlflow.source.git.commit": "0123456789abcdef"})
    for i, (values, metrics) in enumerate(trials):
        seed = str(seeds[i] if seeds else 0)
        run = client.create_run(exp, run_name=f"{values} seed {seed}", tags={
            "mlflow.parentRunId": parent.info.run_id, "dbae.sweep.values": json.dumps(values), "dbae.seed": seed})
        client.log_param(run.info.run_id, "train.seed", seed)
        for k, v in {**params, **values}.items():
            client.log_param(run.info.run_id, k, v)
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k, v, step=500)
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    params = {"data.dataset": "shapes", "train.steps": 500, "train.batch_size": 16, "resources.num_workers": 1,
              "eval.n": 300, "eval.sampler": "euler", "eval.sampler_steps": 20, "model.latent_dim": 64}
    _sweep(client, "paper_ablation_shapes32", ["model.method"],
           [({"model.method": m}, metrics) for m, metrics in PAPER.items()], params,
           "python sweeps/paper_ablation.py --preset repro_shapes32")
    _sweep(client, "latent_dim", ["model.latent_dim"],
           [({"model.latent_dim": d}, {"eval/recon_mse": v, "eval/ssim": 1 - 10 * v}) for d, v in LATENT.items()],
           {k: v for k, v in params.items() if k != "model.latent_dim"}, "python sweeps/latent_dim.py")
    _sweep(client, "latent_dim-smoke", ["model.latent_dim"], [({"model.latent_dim": 8}, {"eval/recon_mse": 1.0})],
           params, "python sweeps/latent_dim.py --smoke")
    return uri, tmp_path


def test_claims_have_the_verdicts_their_numbers_imply(store):
    """One seed: each claim's direction, but no verdict, since the seed noise is unmeasured."""
    uri, _ = store
    sweeps = report.collect(MlflowClient(uri))
    assert [s.name for s in sweeps] == ["paper_ablation_shapes32", "latent_dim"]  # smoke sweep left out
    assert [s.kind for s in sweeps] == ["methods", "latent_dim"]
    verdicts = report.check_claims(sweeps)
    assert [v.direction for v in verdicts] == EXPECTED
    assert {v.status for v in verdicts} == {"one seed"} and {v.agrees for v in verdicts} == {None}
    assert verdicts[7].metric == "probe_ap"  # the attribute probe on shapes
    assert verdicts[-1].margin() == "25.0× faster"
    assert verdicts[0].margin().startswith("+0.05 (+7 %); paper +0.033 (+4 %)")


def test_a_dataset_without_attributes_gets_the_class_probe_and_no_tad_claims(store):
    uri, _ = store
    client = MlflowClient(uri)
    classes = {m: {"eval/recon_mse": 0.02, "eval/ssim": 0.5, "eval/probe_class_ap": ap}
               for m, ap in (("dbae", 0.7), ("dbae_d", 0.6), ("diffae", 0.5))}
    _sweep(client, "paper_ablation_fashion32", ["model.method"], [({"model.method": m}, v) for m, v in classes.items()],
           {"data.dataset": "fashion_mnist"}, "python sweeps/paper_ablation.py --preset repro_fashion32")
    fashion = [v for v in report.check_claims(report.collect(client)) if v.dataset == "fashion_mnist"]
    assert {v.metric for v in fashion} == {"ssim", "recon_mse", "probe_class_ap"}  # no TAD, ATTRS, encode time
    probe = [v.direction for v in fashion if v.metric == "probe_class_ap"]
    assert probe == [True, True, True]  # 0.7 > 0.5, 0.6 > 0.5, 0.7 >= 0.6
    # rows the comparison lacks (no random-x_T variant logged) stay as "not measured"
    assert any(v.status == "not measured" and v.claim.b == "DiffAE, random x_T" for v in fashion)


def test_document_tables_pictures_and_commands(store, tmp_path):
    uri, _ = store
    out = tmp_path / "docs" / "results.md"
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"Of {len(EXPECTED)} checks, {len(EXPECTED)} rest on one seed (direction only)" in text
    assert (f"**Summary**: of {len(EXPECTED)} checks of the paper's claims (section 2), {len(EXPECTED)} rest on one "
            "seed (direction only). Seeds per method: 1, CPU budget") in text
    rows = [line for line in text.splitlines() if line.startswith("| DBAE-d reconstructs better than DBAE (MSE)")]
    assert len(rows) == 1 and rows[0].endswith("| one seed: direction disagrees |")
    assert "| paper_ablation_shapes32 | shapes | 3 | 1 |" in text
    assert "### Latent dimension d (DBAE-d) (shapes, sweep `latent_dim`, 1 seed)" in text
    # the method tables: four reconstruction rows, DiffAE's random-x_T numbers on their own row
    assert re.search(r"\| DiffAE, random x_T \| 1 \| 0\.05 \| 13 \| 0\.4 \|", text)
    assert "python sweeps/paper_ablation.py --preset repro_shapes32" in text and "--smoke" not in text
    assert "Test CPU, 2 CPU cores" in text and "0123456789ab" in text
    assert "500 steps × batch 16 × 1 worker(s) × 1 accumulation = 8000 images per trial" in text
    assert "MSE falls monotonically from 0.03 (latent_dim = 16) to 0.015 (256)" in text
    pictures = sorted(p.name for p in (out.parent / "results").glob("*.png"))
    assert pictures == ["ablation_latent_dim.png", "methods.png"]
    for name in pictures:
        assert (out.parent / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](results/{name})" in text


def test_missing_store_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", "--runs-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow store" in err[0]


# Three seeds per method (fashion_mnist: class probe, generation). Values are mean + (−δ, 0, +δ), so each mean and
# sample std (ddof 1: exactly δ) is known by hand, and the 2-SE noise band of a difference is
# 2·sqrt(δa²/3 + δb²/3).
def _three(mean, delta):
    return [mean - delta, mean, mean + delta]


SEEDED = {
    "dbae": {"eval/ssim": _three(0.52, 0.02), "eval/recon_mse": _three(0.012, 0.002),
             "eval/probe_class_ap": _three(0.71, 0.01), "eval/fid": _three(150.0, 5.0),
             "eval/gaussian/fid": _three(180.0, 5.0)},
    "dbae_d": {"eval/ssim": _three(0.62, 0.02), "eval/recon_mse": _three(0.013, 0.002),
               "eval/probe_class_ap": _three(0.61, 0.01), "eval/fid": _three(160.0, 5.0),
               "eval/gaussian/fid": _three(170.0, 5.0)},
    "diffae": {"eval/ssim": _three(0.95, 0.05), "eval/recon_mse": _three(0.001, 0.0005),
               "eval/probe_class_ap": _three(0.81, 0.01), "eval/fid": _three(140.0, 5.0),
               "eval/gaussian/fid": _three(145.0, 5.0),
               "eval/random_xT/ssim": _three(0.30, 0.0), "eval/random_xT/recon_mse": _three(0.05, 0.0)},
}
# claim -> status, worked out by hand from SEEDED (Δ = a − b; band = 2 SE):
SEEDED_STATUS = {
    "DBAE-d reconstructs better than DBAE (SSIM)": "agrees",  # Δ +0.10, band 2·sqrt(2·0.02²/3) = 0.033
    "DBAE-d reconstructs better than DBAE (MSE)": "within noise",  # Δ +0.001, band 0.0033
    "DBAE beats DiffAE with random x_T at equal latent size (SSIM)": "agrees",  # Δ +0.22, band 0.023
    "DBAE beats DiffAE with random x_T at equal latent size (MSE)": "agrees",  # Δ −0.038, band 0.0023
    "DBAE-d beats DiffAE with random x_T at equal latent size (SSIM)": "agrees",
    "DBAE-d beats DiffAE with random x_T at equal latent size (MSE)": "agrees",
    "DiffAE with inferred x_T (latent d + C·H·W wide) reconstructs best (SSIM, vs DBAE-d)": "agrees",  # +0.33 vs 0.062
    "DBAE's latent is more linearly predictive than DiffAE's (probe AP: attributes, or classes)": "disagrees",  # −0.10
    "DBAE-d's latent is more linearly predictive than DiffAE's (probe AP: attributes, or classes)": "disagrees",
    "DBAE's probe AP is at least DBAE-d's": "agrees",  # +0.10 vs band 0.016
}


def test_verdicts_weigh_the_difference_against_the_seed_noise(store, tmp_path):
    import numpy as np
    from scipy import stats

    uri, _ = store
    client = MlflowClient(uri)
    trials = [({"model.method": m}, {k: v[seed] for k, v in metrics.items()})
              for m, metrics in SEEDED.items() for seed in range(3)]
    _sweep(client, "paper_ablation_fashion32", ["model.method"], trials,
           {"data.dataset": "fashion_mnist", "eval.prior_steps": 3000, "eval.prior_images": 2000},
           "python sweeps/paper_ablation.py --preset repro_fashion32 --seeds 3", seeds=[0, 1, 2] * 3)
    sweeps = report.collect(client)
    fashion = [v for v in report.check_claims(sweeps) if v.dataset == "fashion_mnist"]
    assert {v.claim.text: v.status for v in fashion} == SEEDED_STATUS
    assert all(v.a.n == v.b.n == 3 for v in fashion)

    # the standard error of the difference is Welch's: its t statistic equals scipy's
    ssim = fashion[0]
    a, b = SEEDED["dbae_d"]["eval/ssim"], SEEDED["dbae"]["eval/ssim"]
    t = stats.ttest_ind(a, b, equal_var=False).statistic
    assert (ssim.a.mean - ssim.b.mean) / report.difference_se(ssim.a, ssim.b) == pytest.approx(t, rel=1e-12)
    assert ssim.noise == pytest.approx(2 * np.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3), rel=1e-12)

    out = tmp_path / "docs" / "results.md"
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| paper_ablation_fashion32 | fashion_mnist | 9 | 3 |" in text
    assert "Seeds per method: 1/3" in text
    assert "2 standard errors of the difference" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| DBAE") and "fashion_mnist" in line}
    assert rows["DBAE-d reconstructs better than DBAE (MSE)"].endswith("| within noise |")
    assert rows["DBAE-d reconstructs better than DBAE (SSIM)"].endswith("| **agrees** |")
    assert "0.62 ± 0.02 vs 0.52 ± 0.02" in rows["DBAE-d reconstructs better than DBAE (SSIM)"]
    # generation: the DDPM prior's FID on the method rows, the Gaussian baseline on rows that say so
    assert "| DBAE | 3 | 150 ± 5 |" in text and "| DBAE, Gaussian latent | 3 | 180 ± 5 |" in text
    assert "(latent DDPM prior; Gaussian-latent baseline)" in text and "The *Gaussian latent* rows replace" in text
    assert "features of min(eval.n, 250) = 250 samples" in text  # the shapes sweep's eval.n = 300
    assert "latent DDPM prior trained in each trial (3000 steps on the latents of 2000 training images" in text


def test_without_the_gaussian_baseline_the_document_says_it_was_off(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    trials = [({"model.method": m}, {k: v[seed] for k, v in metrics.items() if "gaussian" not in k})
              for m, metrics in SEEDED.items() for seed in range(3)]
    _sweep(client, "paper_ablation_fashion32", ["model.method"], trials,
           {"data.dataset": "fashion_mnist", "eval.n": 200, "eval.gaussian_baseline": False},
           "python sweeps/paper_ablation.py --preset repro_fashion32 --seeds 3", seeds=[0, 1, 2] * 3)
    out = tmp_path / "results.md"
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert "Gaussian latent |" not in text and "The Gaussian-latent baseline (`eval.gaussian_baseline`) was off" in text
    assert "**Unconditional generation (latent DDPM prior)**" in text
    assert "features of min(eval.n, 250) = 200 samples" in text


def test_an_ablation_takes_its_reference_point_from_the_method_comparison(tmp_path):
    """make results runs d = 64 once, in the method comparison: the latent-dimension ablation (16 and 256 only) gets the
    comparison's DBAE-d trial of the same seed and settings as its d = 64 row, and says so. A trial of another seed or
    method is not the same run, and an ablation that ran the point itself (VP in the SDE sweep) takes nothing."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    common = {"data.dataset": "shapes", "train.steps": 400, "eval.n": 200, "objective.sde": "vp"}
    methods = [({"model.method": m}, {"eval/recon_mse": 0.01 * (i + 1) + 0.001 * seed, "eval/ssim": 0.5})
               for i, m in enumerate(["dbae", "dbae_d"]) for seed in range(2)]
    _sweep(client, "paper_ablation_shapes32", ["model.method"], methods,
           {**common, "model.latent_dim": 64, "name": "paper"}, "python sweeps/paper_ablation.py", seeds=[0, 1, 0, 1])
    _sweep(client, "latent_dim", ["model.latent_dim"],
           [({"model.latent_dim": d}, {"eval/recon_mse": e, "eval/ssim": 0.4}) for d, e in ((16, 0.05), (256, 0.01))],
           {**common, "model.method": "dbae_d", "name": "latent"}, "python sweeps/latent_dim.py")
    _sweep(client, "sde_type", ["objective.sde"],
           [({"objective.sde": s}, {"eval/recon_mse": 0.03, "eval/ssim": 0.4}) for s in ("vp", "ve")],
           {**{k: v for k, v in common.items() if k != "objective.sde"}, "model.method": "dbae_d",
            "model.latent_dim": 64, "name": "sde"}, "python sweeps/sde_type.py")
    sweeps = {s.name: s for s in report.collect(client)}
    latent, sde = sweeps["latent_dim"], sweeps["sde_type"]
    assert sorted(t.values["model.latent_dim"] for t in latent.trials) == [16, 64, 256]
    [(run, source)] = latent.borrowed
    assert source == "paper_ablation_shapes32" and run.data.params["model.method"] == "dbae_d"
    assert run.data.params["train.seed"] == "0" and run.data.metrics["eval/recon_mse"] == pytest.approx(0.02)
    assert sde.borrowed == [] and len(sde.trials) == 2

    out = tmp_path / "results.md"
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"The row model.latent_dim = 64 is trial `{run.info.run_name}` of sweep `paper_ablation_shapes32`" in text
    rows = [line for line in text.split("Latent dimension", 1)[1].splitlines() if line.startswith("| 64 |")]
    assert rows and "0.02" in rows[0], text
