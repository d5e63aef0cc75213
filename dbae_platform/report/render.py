"""The results document: the method comparison with the claims' verdicts, the ablation tables and their plots, the
budget and provenance of every sweep, written as markdown beside its PNG pictures."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from dbae_platform import ablation
from dbae_platform.evaluate import CPU_GENERATION_IMAGES
from dbae_platform.report.claims import DIFFAE, NOISE_SE, Verdict, check_claims
from dbae_platform.report.collect import GAUSSIAN, KINDS, LABELS, Stat, Sweep, collect, format_number

__all__ = ["plot_ablation", "plot_methods", "render", "write_report"]

log = logging.getLogger(__name__)

NAMES = {"recon_mse": "MSE", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "encode_ms": "encode ms/img",
         "probe_ap": "probe AP (attributes)", "probe_class_ap": "probe AP (classes)", "probe_acc": "probe acc",
         "mig": "MIG", "dci": "DCI", "tad": "TAD", "attrs": "ATTRS", "fid": "FID", "kid": "KID",
         "precision": "precision", "recall": "recall"}
RECON = ("recon_mse", "psnr", "ssim", "lpips", "encode_ms")
REPRESENTATION = ("probe_ap", "probe_class_ap", "probe_acc", "mig", "dci", "tad", "attrs")
GENERATION = ("fid", "kid", "precision", "recall")
ABLATION_METRICS = ("recon_mse", "psnr", "ssim", "probe_ap", "probe_class_ap", "mig", "dci", "tad", "attrs", "fid")
PLOT_METRICS = ("recon_mse", "ssim", "probe_ap", "probe_class_ap", "mig", "tad")
EXPECTATIONS = {
    "latent_dim": ("Latent dimension d (DBAE-d)",
                   "z is the only path from x0 to the decoder (§1), so a wider z should reconstruct better; the paper "
                   "gives no latent-size ablation in §8, so this is our expectation, not a claim of the paper."),
    "entropy_weight": ("Entropy weight (DBAE, stochastic encoder)",
                       "The term rewards larger posterior σ (§5): a large weight trades information in z for "
                       "entropy, so reconstruction should worsen as the weight grows. The release never computes the "
                       "term (weight 0 reproduces it); the paper gives no ablation of it in §8."),
    "sde": ("Bridge SDE: VP vs VE",
            "Every released run uses VP (β_min 0.1, β_d 2); VE uses σ_max 80 (§2). The paper states no comparison "
            "in §8."),
}


def _markdown(rows: dict[str, dict[str, Stat]], labels: Sequence[str], metrics: Sequence[str]) -> str | None:
    labels = [lb for lb in labels if lb in rows]
    metrics = [m for m in metrics if any(m in rows[lb] for lb in labels)]
    if not labels or not metrics:
        return None
    lines = ["| method | seeds | " + " | ".join(NAMES.get(m, m) for m in metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for lb in labels:
        n = max((s.n for s in rows[lb].values()), default=0)
        lines.append(f"| {lb} | {n} | " + " | ".join(rows[lb][m].text() if m in rows[lb] else "n/a"
                                                      for m in metrics) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plots


def plot_ablation(table: pa.Table, swept: Sequence[str], metrics: Sequence[str], path: Path, title: str) -> Path | None:
    """One PNG with a panel per metric (those the table has), each drawn by `ablation.draw_metric`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if f"{m}_mean" in table.column_names
               and any(v is not None and math.isfinite(v) for v in table.column(f"{m}_mean").to_pylist())]
    if not metrics:
        return None
    fig = Figure(figsize=(3.2 * len(metrics), 3.0))
    FigureCanvasAgg(fig)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ablation.draw_metric(ax, table, swept, m)
        ax.set_title(NAMES.get(m, m), fontsize="medium")
        ax.set_xlabel(swept[0].split(".")[-1])
        ax.set_ylabel("")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def plot_methods(sweeps: Sequence[Sweep], metrics: Sequence[str], path: Path) -> Path | None:
    """Bars of the method comparison: one panel per metric, one bar group per dataset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = [(s.dataset, s.rows) for s in sweeps if s.kind == "methods"]
    metrics = [m for m in metrics if any(m in r for _, rows in data for r in rows.values())]
    if not data or not metrics:
        return None
    labels = list(LABELS.values())
    fig = Figure(figsize=(3.4 * len(metrics), 3.2))
    FigureCanvasAgg(fig)
    width = 0.8 / len(labels)
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for j, lb in enumerate(labels):
            ys = [rows.get(lb, {}).get(m) for _, rows in data]
            xs = np.arange(len(data)) + (j - (len(labels) - 1) / 2) * width
            ax.bar(xs, [s.mean if s else np.nan for s in ys], width, label=lb,
                   yerr=[s.std if s and math.isfinite(s.std) else 0.0 for s in ys])
        if m == "encode_ms":  # DiffAE's inversion is orders of magnitude slower than one encoder pass
            ax.set_yscale("log")
        ax.set_xticks(range(len(data)), [d for d, _ in data])
        ax.set_title(NAMES.get(m, m), fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _eval_image(client, run_id: str, key: str, dest: Path) -> Path | None:
    """The newest `images/eval_<key>+step+…png` artifact of a run, copied to `dest`; None when it has none."""
    try:
        files = [a.path for a in client.list_artifacts(run_id, "images")
                 if a.path.split("/")[-1].startswith(f"eval_{key}+") and a.path.endswith(".png")]
    except Exception as err:  # noqa: BLE001 - a missing artifact store only loses the picture
        log.warning("images of run %s unavailable: %s", run_id, err)
        return None
    if not files:
        return None
    newest = max(files, key=lambda p: int(p.split("+step+")[1].split("+")[0]) if "+step+" in p else 0)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, newest, tmp)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
    return dest


# ---------------------------------------------------------------------------------------------------- the document


def _minutes(run) -> float | None:
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 60000
    return None


def _budget(sweep: Sweep) -> str:
    steps, batch = sweep.param("train.steps"), sweep.param("train.batch_size")
    workers, accum = sweep.param("resources.num_workers") or "1", sweep.param("train.grad_accum") or "1"
    try:
        images = int(steps) * int(batch) * int(workers) * int(accum)
    except (TypeError, ValueError):
        images = None
    minutes = [m for r in sweep.children if (m := _minutes(r)) is not None]
    wall = f"{min(minutes):.1f}–{max(minutes):.1f} min per trial" if minutes else "wall time unknown"
    return (f"{steps} steps × batch {batch} × {workers} worker(s) × {accum} accumulation = "
            f"{images if images is not None else '?'} images per trial; {wall}")


def _parameters(client, sweep: Sweep) -> dict[str, str]:
    """Method -> parameter count in millions, from each trial's config.yaml artifact (counted on the meta device)."""
    from dbae_platform.config import load_config
    from dbae_platform.models import parameter_counts
    out: dict[str, str] = {}
    for run in sweep.children:
        method = run.data.params.get("model.method", "?")
        label = f"{method}, d={run.data.params.get('model.latent_dim', '?')}"
        if label in out:
            continue
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = load_config(Path(client.download_artifacts(run.info.run_id, "config.yaml", tmp)))
            out[label] = f"{parameter_counts(cfg)['total'] / 1e6:.2f}M"
        except Exception as err:  # noqa: BLE001 - a run without its config loses only this count
            log.warning("parameter count of run %s unavailable: %s", run.info.run_id, err)
    return out


def _trend(table: pa.Table, x_key: str, metric: str) -> str | None:
    """`metric` from the first to the last swept value, and whether it moves monotonically."""
    if f"{metric}_mean" not in table.column_names:
        return None
    rows = [r for r in table.to_pylist() if r[f"{metric}_mean"] is not None and math.isfinite(r[f"{metric}_mean"])]
    if len(rows) < 2 or not all(isinstance(r[x_key], (int, float)) for r in rows):
        return None
    rows.sort(key=lambda r: r[x_key])
    ys = [r[f"{metric}_mean"] for r in rows]
    steps = np.sign(np.diff(ys))
    shape = "monotonically" if (steps >= 0).all() or (steps <= 0).all() else "not monotonically"
    direction = "rises" if ys[-1] > ys[0] else "falls"
    return (f"{NAMES.get(metric, metric)} {direction} {shape} from {format_number(ys[0])} ({x_key.split('.')[-1]} = "
            f"{rows[0][x_key]}) to {format_number(ys[-1])} ({rows[-1][x_key]})")


def _seed_count(sweep: Sweep) -> int:
    """Seeds per configuration: the most trials of one configuration that finished."""
    rows = ablation.build_table(sweep.trials, sweep.swept).column("n").to_pylist()
    return max(rows, default=0)


def _first_param(sweeps: Sequence[Sweep], key: str) -> str | None:
    """`key` of the first sweep that records it (the method comparisons first)."""
    ordered = sorted(sweeps, key=lambda s: s.kind != "methods")
    return next((v for s in ordered if (v := s.param(key)) is not None), None)


def _seeds_text(sweeps: Sequence[Sweep]) -> str:
    methods = sorted({_seed_count(s) for s in sweeps if s.kind == "methods"})
    return "Seeds per method: " + "/".join(map(str, methods)) if methods else "No method comparison"


def _tally(counts: dict[str, list[Verdict]]) -> str:
    words = {"agrees": "agree", "disagrees": "disagree", "within noise": "are within the seed noise",
             "one seed": "rest on one seed (direction only)"}
    parts = [f"{len(v)} {words[k]}" for k, v in counts.items() if v]
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else "none"


def render(client, sweeps: Sequence[Sweep], out_dir: Path, command: str, plots: str = "results") -> str:
    """The markdown document; plots and image grids are written to out_dir/`plots`."""
    plot_dir = out_dir / plots
    lines = ["# Results: the paper's claims on this platform", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             f"{sum(len(s.children) for s in sweeps)} MLflow runs of {len(sweeps)} sweep(s). Do not edit by hand: "
             "rerun the command (`make results` reruns the study and then this command).", ""]
    if not sweeps:
        return "\n".join(lines + ["No sweeps found in the MLflow store.", ""])
    verdicts = check_claims(sweeps)
    counts = {k: [v for v in verdicts if v.status == k] for k in ("agrees", "disagrees", "within noise", "one seed")}
    checked = sum(len(v) for v in counts.values())
    if checked:
        against = [f"{v.claim.text} ({v.dataset})" for v in counts["disagrees"]]
        lines += [f"**Summary**: of {checked} checks of the paper's claims (section 2), {_tally(counts)}"
                  + (f". They disagree on: {'; '.join(against)}" if against else "")
                  + f". {_seeds_text(sweeps)}, CPU budget (below).", ""]

    hardware = sorted({r.data.tags["dbae.hardware"] for s in sweeps for r in [s.parent, *s.children]
                       if "dbae.hardware" in r.data.tags})
    commits = sorted({r.data.tags["mlflow.source.git.commit"][:12] + ("-dirty" if r.data.tags[
        "mlflow.source.git.commit"].endswith("-dirty") else "") for s in sweeps for r in [s.parent, *s.children]
        if "mlflow.source.git.commit" in r.data.tags})
    total = sum(m for s in sweeps for r in s.children if (m := _minutes(r)) is not None)
    s0 = next((s for s in sweeps if s.kind == "methods"), sweeps[0])
    lines += ["## Set-up", "",
              f"- **Hardware**: {'; '.join(hardware) or 'not recorded'}.",
              f"- **Code**: commit {', '.join(commits) or 'not recorded'}.",
              f"- **Compute**: {total:.0f} trial-minutes in all; trials ran concurrently, as many as fit at "
              f"{s0.param('resources.cpus_per_worker')} CPU each (`resources.cpus_per_worker`).",
              "- **Budget**: this is a CPU-sized study — small networks, 32 px, a few thousand images per run — far "
              "from the paper's ~1M steps of 256 images on 64–128 px faces (§9). Its numbers answer whether the "
              "*directions* of the paper's claims appear at this budget, not the paper's values.",
              f"- **Noise**: tables show the mean ± sample standard deviation over seeds (`seeds` column). A claim's "
              f"verdict reads *agrees* or *disagrees* only when the difference of the means exceeds "
              f"{NOISE_SE:g} standard errors of the difference, SE = √(s_a²/n_a + s_b²/n_b) (about a 95 % two-sided "
              f"test), and *within noise* otherwise; with one seed on either side the spread is unmeasured and only "
              f"the direction is given. Sweeps with one seed (the ablations of section 3) are labelled so.", ""]
    lines += ["| sweep | dataset | trials | seeds | training budget |", "|---|---|---:|---:|---|"]
    for s in sweeps:
        lines.append(f"| {s.name} | {s.dataset} | {len(s.trials)} | {_seed_count(s)} | {_budget(s)} |")
    z = "draws z ~ q(z|x0)" if s0.param("eval.sample_z") in ("True", "true") else "posterior means as latents"
    n = s0.param("eval.n")
    generated = (f"min(eval.n, {CPU_GENERATION_IMAGES}) = {min(int(n), CPU_GENERATION_IMAGES)}" if str(n).isdigit()
                 else f"at most {CPU_GENERATION_IMAGES} (the CPU cap)")
    has_gaussian = any(label in s.rows for s in sweeps if s.kind == "methods" for label in GAUSSIAN.values())
    gaussian = (" The *Gaussian latent* rows replace the prior with a Gaussian fitted to the training latents, as a "
                "baseline." if has_gaussian else " The Gaussian-latent baseline (`eval.gaussian_baseline`) was off.")
    lines += ["", f"Evaluation (every trial, at the end of training, EMA weights): {s0.param('eval.n')} held-out "
              f"images per suite (the probe trains on as many training images), decoding with the "
              f"{s0.param('eval.sampler')} sampler in {s0.param('eval.sampler_steps')} steps (DiffAE: DDIM, and DDIM "
              f"inversion, in as many), {z}. Generation follows the paper's protocol (§5): a latent DDPM prior "
              f"trained in each trial ({_first_param(sweeps, 'eval.prior_steps') or '?'} steps on the latents of "
              f"{_first_param(sweeps, 'eval.prior_images') or 'all'} training images, posterior draws for the "
              f"stochastic encoder) gives z, the decoder and the bridge sampler give the image; "
              f"FID/KID/precision-recall on Inception-v3 pool features of {generated} samples against as many "
              f"training images.{gaussian} LPIPS needs backbone weights that are not available offline: n/a.", "",
              "### Commands", "", "```"]
    lines += [s.command or f"(sweep {s.name}: command not recorded)" for s in sweeps] + [command, "```", ""]

    methods = [s for s in sweeps if s.kind == "methods"]
    if methods:
        lines += ["## 1. DBAE, DBAE-d and DiffAE at equal latent size and budget", ""]
        for s in methods:
            rows = s.rows
            params = _parameters(client, s)
            lines += [f"### {s.dataset} (sweep `{s.name}`, latent d = {s.param('model.latent_dim')})", ""]
            if params:
                lines += ["Parameters: " + ", ".join(f"{k}: {v}" for k, v in params.items()) + ".", ""]
            order = list(LABELS.values())
            for title, metrics, labels in (("Reconstruction and encoding time", RECON, order),
                                           ("Representation (linear probes, disentanglement)", REPRESENTATION,
                                            ["DBAE", "DBAE-d", DIFFAE]),
                                           ("Unconditional generation (latent DDPM prior"
                                            + ("; Gaussian-latent baseline)" if has_gaussian else ")"),
                                            GENERATION, ["DBAE", "DBAE-d", DIFFAE, *GAUSSIAN.values()])):
                table = _markdown(rows, labels, metrics)
                if table:
                    lines += [f"**{title}**", "", table.replace(f"| {DIFFAE} |", "| DiffAE |")
                              if metrics is not RECON else table, ""]
            lines += ["DiffAE's representation and generation rows are its latent z (the same for both x_T "
                      "variants); its samples decode from random x_T. Encode time of DiffAE with inferred x_T "
                      "includes the DDIM inversion. Encode times are measured inside each trial while other trials "
                      "share the CPU: their ratios are indicative, `benchmarks/encode.py` measures them alone.", ""]
            shown = {}  # one trial per method for the pictures: its lowest seed
            for run in sorted(s.children, key=lambda r: int(r.data.tags.get("dbae.seed", "0") or 0)):
                shown.setdefault(run.data.params.get("model.method"), run)
            for row in shown.values():
                label = LABELS.get((row.data.params.get("model.method"), "default"), "?")
                slug = f"{s.dataset}_{row.data.params.get('model.method')}"
                pictures = [(key, _eval_image(client, row.info.run_id, key, plot_dir / f"{key}_{slug}.png"))
                            for key in ("reconstructions", "samples")]
                pictures = [(k, p) for k, p in pictures if p is not None]
                if pictures:
                    seed = row.data.tags.get("dbae.seed", "0")
                    lines += [f"{label} (seed {seed}): "
                              + " ".join(f"![{k} {label}]({plots}/{p.name})" for k, p in pictures), ""]
        figure = plot_methods(methods, ("recon_mse", "ssim", "probe_ap", "probe_class_ap", "tad", "encode_ms"),
                              plot_dir / "methods.png")
        if figure:
            lines += [f"![method comparison]({plots}/{figure.name})", ""]

        unmeasured = len(verdicts) - checked
        lines += ["## 2. The paper's claims (dbae-method.md §8): do our numbers agree with their direction?", "",
                  f"Of {checked} checks, {_tally(counts)}" + (f" ({unmeasured} not measured)" if unmeasured else "")
                  + "; claims on metrics a dataset lacks, such as TAD without binary attributes, are left out. "
                  "Each row: the claim, the paper's numbers, ours (row a vs row b, mean ± std over seeds), our "
                  f"difference a − b (relative to b) with the noise band ({NOISE_SE:g} SE of the difference) next to "
                  "the paper's difference, and the verdict by the rule of the set-up. A disagreement is a result of "
                  "this budget, reported as such.", "",
                  "| claim | paper | dataset | ours (a vs b) | difference | verdict |", "|---|---|---|---|---|---|"]
        for v in verdicts:
            ours = "n/a" if v.a is None or v.b is None else f"{v.a.text()} vs {v.b.text()}"
            verdict = (f"one seed: direction {'agrees' if v.direction else 'disagrees'}" if v.status == "one seed"
                       else f"**{v.status}**" if v.status in ("agrees", "disagrees") else v.status)
            lines.append(f"| {v.claim.text} | {v.claim.paper} | {v.dataset} | {ours} | {v.margin()} | {verdict} |")
        lines += ["", "Generation: §8 quotes only DBAE's FID (11.8 on CelebA 64), no comparison between methods, so "
                  "the generation table above is reported without a verdict.", ""]

    ablations = [s for s in sweeps if s.kind != "methods"]
    if ablations:
        lines += ["## 3. Ablations", ""]
    for s in ablations:
        x_key = next((k for k in KINDS if k in s.swept), s.swept[0] if s.swept else None)
        title, expectation = EXPECTATIONS.get(s.kind, (f"Sweep {s.name}", ""))
        table = ablation.build_table(s.trials, s.swept, [m for m in ABLATION_METRICS + ("encode_ms",)])
        empty = [c.removesuffix("_mean") for c in table.column_names if c.endswith("_mean")
                 and all(v is None or not math.isfinite(v) for v in table.column(c).to_pylist())]
        table = table.drop_columns([f"{m}_{part}" for m in empty for part in ("mean", "std")])
        seeds = _seed_count(s)
        lines += [f"### {title} ({s.dataset}, sweep `{s.name}`, {seeds} seed{'s' if seeds != 1 else ''})", "",
                  ablation.to_markdown(table), ""]
        if seeds == 1:
            lines += ["One seed: the trend below is not weighed against seed noise.", ""]
        for run, source in s.borrowed:
            point = ", ".join(f"{k} = {run.data.params.get(k)}" for k in s.swept)
            lines += [f"The row {point} is trial `{run.info.run_name}` of sweep `{source}`: the same configuration, "
                      "seed and budget, run once.", ""]
        if x_key:
            swept = [x_key] + [k for k in s.swept if k != x_key]
            figure = plot_ablation(table, swept, PLOT_METRICS, plot_dir / f"ablation_{s.name}.png", title)
            if figure:
                lines += [f"![{title}]({plots}/{figure.name})", ""]
        if expectation:
            lines += [f"Expectation: {expectation}", ""]
        observed = [t for m in ("recon_mse", "ssim", "probe_ap", "probe_class_ap", "mig", "tad")
                    if x_key and (t := _trend(table, x_key, m))]
        if observed:
            lines += ["Observed: " + "; ".join(observed) + ".", ""]
        elif x_key and s.kind == "sde":
            rows = table.to_pylist()
            best = {m: min(rows, key=lambda r: r[f"{m}_mean"] if m == "recon_mse" else -r[f"{m}_mean"])
                    for m in ("recon_mse", "ssim") if f"{m}_mean" in table.column_names}
            if best:
                lines += ["Observed: " + "; ".join(f"better {NAMES[m]}: {r[x_key]}" for m, r in best.items())
                          + ".", ""]
    return "\n".join(lines)


def write_report(tracking_uri: str, out: Path, command: str, include_smoke: bool = False) -> Path:
    """Write the document to `out` and its pictures to `out.parent/<out.stem>/`; returns the document's path."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    sweeps = collect(client, include_smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_dir = out.parent / out.stem
    if plot_dir.is_dir():  # pictures of sweeps that are gone must not linger
        for old in plot_dir.glob("*.png"):
            old.unlink()
    out.write_text(render(client, sweeps, out.parent, command, plots=out.stem) + "\n")
    log.info("wrote %s (%d sweeps) and its pictures in %s", out, len(sweeps), plot_dir)
    return out
