"""The evaluation suite (`dbae eval`, and the end of training) on a trained DBAE's EMA weights (dbae-method.md §8).

Suites: `recon` (MSE, PSNR, SSIM on [0, 1], LPIPS when its weights exist), `probe` (linear probes on frozen latents),
`disentangle` (MIG and DCI against known factors, TAD and ATTRS against binary attributes) and `generation` (FID, KID,
precision/recall on Inception features of decoded latent samples against training images). Latents are posterior
means, or draws z ~ q(z|x0) of the stochastic encoder with `sample_z` (the release's choice, §6).
Generation follows the paper's protocol (§5): the latent DDPM prior is trained here, for `prior_steps` steps on the
latents of `prior_images` training images (posterior draws for the stochastic encoder: what the decoder saw), then
z ~ prior → Dec → reverse bridge gives `eval/fid`, `eval/kid`, `eval/precision`, `eval/recall` (a given `prior` is used
instead of training one). The same metrics of a Gaussian fitted to those training latents (per-dimension mean and
std, dimensions independent: a baseline that ignores their correlations) are `eval/gaussian/*`, unless
`gaussian_baseline` is off (it costs a second set of decoded samples and their Inception features).
Dataset items are tuples (image in [−1, 1], labels...); each trailing element is read as class labels (1-D integers),
binary attributes (2-D, values in {0, 1} or {−1, 1}) or factors (other 1-D floats, other 2-D labels). A suite that
does not apply is skipped with a logged reason, and its keys are absent. Image grids and metrics.json are written to
`out_dir` (and the trained latent prior, as prior.pt).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from dbae_core.latent_prior import default_preset, encode_posterior, fit_prior, prior_preset, save_prior
from dbae_core.metrics import (
    InceptionFeatures,
    InceptionUnavailable,
    cache_key,
    cached_features,
    dci,
    fid,
    kid,
    load_lpips,
    mig,
    mse,
    precision_recall,
    probe_attributes,
    probe_classes,
    probe_regression,
    psnr,
    ssim,
    tad,
    to_unit,
)
from dbae_core.model import DBAE
from dbae_core.networks import Posterior
from dbae_core.training import autocast
from dbae_platform import batches
from dbae_platform.config import SUITES, ConfigError
from dbae_platform.sampling import GaussianPrior, Sampling

if TYPE_CHECKING:
    from dbae_platform.models import Run

__all__ = ["PriorBudget", "SUITES", "CPU_GENERATION_IMAGES", "evaluate", "evaluate_checkpoint", "format_table",
           "write_metrics_json"]

log = logging.getLogger(__name__)

CPU_GENERATION_IMAGES = 250  # Inception runs at ~5 images/s on 2 CPU cores
GPU_GENERATION_IMAGES = 10_000
GRID = 32  # images per grid


def label_kinds(extras: Sequence[Tensor]) -> dict[str, Tensor]:
    """{"classes" | "attributes" | "factors": labels}, the first element of each kind."""
    kinds: dict[str, Tensor] = {}
    for t in extras:
        if t.ndim == 1 and not t.is_floating_point():
            kinds.setdefault("classes", t.long())
        elif t.ndim == 2 and set(t.unique().tolist()) <= {0, 1, -1} and len(t.unique()) == 2:
            kinds.setdefault("attributes", (t > 0).float())
        elif t.ndim in (1, 2):
            kinds.setdefault("factors", t.reshape(len(t), -1).double())
    return kinds


def _save_image(images: Tensor, path: Path, **grid) -> None:
    """torchvision's image grid, imported here: `import torchvision` loads its models and torch._dynamo (about 1.3 s),
    which the Ray actors that import this module without drawing (a sweep's trial, the Train controller) would pay."""
    from torchvision.utils import save_image
    save_image(images, path, **grid)


def _reconstruct_inferred(model, x: Tensor, sampling: Sampling, batch_size: int,
                          device: torch.device) -> tuple[Tensor, float]:
    """DiffAE with inferred x_T: z, DDIM inversion over `steps` (the encoding, timed: ms per image), then decoding
    from (z, x_T) without clipping, the exact reverse of the inversion (encoder + 2·steps NFE per image)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    recs, encode_s = [], 0.0
    with autocast(device, sampling.precision):
        for i in batches.starts(x, batch_size, "reconstruct (inferred x_T)"):
            xb = x[i:i + batch_size].to(device)
            sync()
            t0 = time.perf_counter()
            z = model.encode(xb)
            x_T = model.invert(xb, z, sampling.steps)[0]
            sync()
            encode_s += time.perf_counter() - t0
            recs.append(model.decode(z, sampling.steps, x_T=x_T, clip=False)[0].float().cpu())
    return torch.cat(recs), 1000 * encode_s / max(len(x), 1)


def _recon_metrics(x: Tensor, recs: Tensor, prefix: str, lpips_model, batch_size: int,
                   device: torch.device) -> dict[str, float | None]:
    xu, ru = to_unit(x), to_unit(recs)
    metrics: dict[str, float | None] = {f"{prefix}recon_mse": mse(xu, ru).mean().item(),
                                        f"{prefix}psnr": psnr(xu, ru).mean().item(),
                                        f"{prefix}ssim": ssim(xu, ru).mean().item(), f"{prefix}lpips": None}
    if lpips_model is not None:
        metrics[f"{prefix}lpips"] = torch.cat([lpips_model(x[i:i + batch_size].to(device), recs[i:i + batch_size]
                                                           .to(device)).cpu() for i in range(0, len(x), batch_size)
                                               ]).mean().item()
    return metrics


def _recon_suite(model: DBAE, x: Tensor, z: Tensor, out: Path, sampling: Sampling, batch_size: int,
                 device: torch.device, seed: int, encode_ms: float) -> dict[str, float | None]:
    """DBAE: x̂0 from z alone (x_T = Dec(z)). DiffAE: from (z, inferred x_T) as `eval/*` and from (z, random x_T)
    as `eval/random_xT/*`, the setting DBAE competes with at equal latent size (§7). Each variant's `encode_ms` is
    what its decoding needs: z alone (`encode_ms`, given) or z and the inverted x_T (DiffAE inferred, timed here)."""
    lpips_model, reason = load_lpips(device=device)
    if lpips_model is None:
        log.info("LPIPS unavailable (%s): reported as n/a", reason)
    diffae = getattr(model, "kind", "dbae") == "diffae"
    gen = torch.Generator(device).manual_seed(seed)  # the churn noise of stochastic samplers
    if diffae:
        recs, inferred_ms = _reconstruct_inferred(model, x, sampling, batch_size, device)
    else:
        recs = batches.decode(model, z, sampling, batch_size, device, "reconstruct", gen)
    metrics = _recon_metrics(x, recs, "eval/", lpips_model, batch_size, device)
    if diffae:
        random_recs = batches.decode(model, z, sampling, batch_size, device, "reconstruct (random x_T)", gen)
        metrics.update(_recon_metrics(x, random_recs, "eval/random_xT/", lpips_model, batch_size, device))
        metrics.update({"eval/encode_ms": inferred_ms, "eval/random_xT/encode_ms": encode_ms})
    cols = 16
    k = min(len(x), GRID)
    rows = [t for i in range(0, k, cols) for t in (x[i:i + cols], recs[i:i + cols])]
    _save_image(to_unit(torch.cat(rows)), out / "reconstructions.png", nrow=min(cols, k), padding=1)
    pairs = min(4, len(x) // 2)
    if pairs:
        lam = [i / 7 for i in range(8)]
        with autocast(device, sampling.precision):
            inter = model.interpolate(x[:pairs].to(device), x[pairs:2 * pairs].to(device), lam, generator=gen,
                                      **sampling.kwargs(model)).float().cpu()
        _save_image(to_unit(inter.transpose(0, 1).flatten(0, 1)), out / "interpolations.png", nrow=len(lam), padding=1)
    return metrics


def _probe_suite(z_tr: Tensor, lab_tr: dict, z_te: Tensor, lab_te: dict) -> dict[str, float]:
    metrics = {}
    if "attributes" in lab_tr:
        metrics["eval/probe_ap"] = probe_attributes(z_tr, lab_tr["attributes"], z_te, lab_te["attributes"])["ap"]
    if "factors" in lab_tr:
        r = probe_regression(z_tr, lab_tr["factors"], z_te, lab_te["factors"])
        metrics.update({"eval/probe_r2": r["r2"], "eval/probe_pearson": r["pearson"], "eval/probe_mse": r["mse"]})
    if "classes" in lab_tr:
        c = probe_classes(z_tr, lab_tr["classes"], z_te, lab_te["classes"])
        metrics.update({"eval/probe_acc": c["accuracy"], "eval/probe_class_ap": c["ap"]})
    return metrics


def _disentangle_suite(z_tr: Tensor, lab_tr: dict, z_te: Tensor, lab_te: dict) -> dict[str, float]:
    metrics = {}
    if "factors" in lab_te:
        metrics["eval/mig"] = mig(z_te, lab_te["factors"])["mig"]
        d = dci(z_tr, lab_tr["factors"], z_te, lab_te["factors"])
        metrics.update({"eval/dci": d["disentanglement"], "eval/dci_completeness": d["completeness"],
                        "eval/dci_informativeness": d["informativeness"]})
    if "attributes" in lab_te:
        t = tad(z_te, lab_te["attributes"])
        metrics.update({"eval/tad": t["tad"], "eval/attrs": float(t["attrs"])})
    return metrics


def _dataset_id(dataset: Dataset, name: str | None, seed: int) -> str:
    """Cache name: `name`, the dataset's .name or class name, plus a hash of its repr (if it has one), length, seed."""
    base = name or getattr(dataset, "name", None) or type(dataset).__name__.lower()
    own_repr = type(dataset).__repr__ is not object.__repr__
    tag = f"{repr(dataset) if own_repr else ''}|{len(dataset)}|{seed}"
    return f"{base}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class PriorBudget:
    """The latent DDPM prior of the generation suite (§5): training steps and training images (None: all)."""

    steps: int = 2000
    images: int | None = None


def _train_posterior(model, train: Dataset, images: int | None, seed: int, batch_size: int, device: torch.device,
                     precision: str) -> Posterior:
    """q(z|x0) of min(images, len) seeded-random training images (all of them for None), on the CPU."""
    k = len(train) if images is None else min(images, len(train))
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:k]
    with autocast(device, precision):
        return encode_posterior(model, Subset(train, sorted(idx.tolist())), batch_size, device,
                                progress=k > batch_size)


def _latent_prior(model, post: Posterior, budget: PriorBudget, device: torch.device, seed: int, out: Path):
    """The latent DDPM prior (§5) trained on the posterior (fresh draws z = μ + σ ε for a stochastic encoder),
    with the network preset `dbae prior` picks for this model size; saved as out/prior.pt."""
    preset = default_preset(model)
    cfg = prior_preset(preset, latent_dim=post.mean.shape[1], steps=budget.steps, seed=seed)
    t0 = time.perf_counter()
    prior, history = fit_prior(post.mean, cfg, device=device, progress=budget.steps >= 1000,
                               log_every=max(1, budget.steps // 10), sigma=post.sigma)
    log.info("latent prior (%s preset, %d steps on %d training latents%s) in %.1f s; final loss %.4f", preset,
             budget.steps, len(post.mean), ", posterior draws" if post.sigma is not None else "",
             time.perf_counter() - t0, history[-1][1])
    save_prior(out / "prior.pt", prior, budget.steps, train_latents=len(post.mean), final_loss=history[-1][1])
    return prior


def _sample_prior(prior, n: int, seed: int) -> Tensor:
    """n latents from `prior.sample(n, generator=...)`, the generator seeded on the prior's device."""
    where = getattr(prior, "mean", None)
    gen = torch.Generator(where.device if torch.is_tensor(where) else "cpu").manual_seed(seed)
    return prior.sample(n, generator=gen).float().cpu()


def _generation_suite(model: DBAE, prior, train: Dataset, train_x: Tensor, m: int, key: str, cache_dir, out: Path,
                      sampling: Sampling, batch_size: int, device: torch.device, seed: int,
                      budget: PriorBudget, gaussian_baseline: bool = True) -> dict[str, float]:
    """FID, KID, precision/recall of z ~ learned prior (`eval/*`) and, with `gaussian_baseline`, of z ~ fitted
    Gaussian (`eval/gaussian/*`)."""
    post = _train_posterior(model, train, budget.images, seed, batch_size, device, sampling.precision)
    priors = {"eval/": prior if prior is not None else _latent_prior(model, post, budget, device, seed, out)}
    if gaussian_baseline:
        priors["eval/gaussian/"] = GaussianPrior(post.sample(torch.Generator().manual_seed(seed)))
    try:
        inception = InceptionFeatures(device=device, batch_size=min(batch_size, 50))
    except InceptionUnavailable as err:
        log.warning("generation suite skipped: %s", err)
        z = _sample_prior(priors["eval/"], 16, seed)
        samples = batches.decode(model, z, sampling, batch_size, device, "sample")
        _save_image(to_unit(samples), out / "samples.png", nrow=8, padding=1)
        return {}
    real = cached_features(key, lambda: inception(train_x[:m], progress=True), cache_dir)
    metrics = {}
    for prefix, source in priors.items():
        samples = batches.decode(model, _sample_prior(source, m, seed), sampling, batch_size, device,
                                 f"sample {prefix}")
        name = "samples.png" if prefix == "eval/" else "samples_gaussian.png"
        _save_image(to_unit(samples[:64]), out / name, nrow=8, padding=1)
        fake = inception(samples, progress=True)
        precision, recall = precision_recall(real, fake)
        metrics.update({f"{prefix}fid": fid(real, fake), f"{prefix}kid": kid(real, fake)[0],
                        f"{prefix}precision": precision, f"{prefix}recall": recall})
    return metrics


@contextlib.contextmanager
def _timed(suite: str):
    t0 = time.perf_counter()
    yield
    log.info("%s suite took %.1f s", suite, time.perf_counter() - t0)


def evaluate(model: DBAE, *, train: Dataset, test: Dataset, suites: Sequence[str] = SUITES, n: int = 1000,
             out_dir: str | Path, device: str | torch.device = "cpu", sampler_steps: int = 20, sampler: str = "euler",
             churn: float = 0.0, precision: str = "auto", batch_size: int = 64, sample_z: bool = False,
             prior_steps: int = 2000, prior_images: int | None = None, prior=None,
             gaussian_baseline: bool = True, generation_images: int | None = None, dataset_name: str | None = None,
             cache_dir: str | Path | None = None, seed: int = 0) -> dict[str, float | None]:
    """Run the suites on min(n, len) seeded-random items of each split; returns metrics and writes metrics.json.

    `sample_z`: latents are draws z ~ q(z|x0) (stochastic encoder only). `prior_steps`, `prior_images`: the budget
    of the latent DDPM prior that the generation suite trains, unless `prior` (anything with
    `sample(n, generator=...)`) is given. `gaussian_baseline`: also the metrics of a fitted Gaussian latent.
    """
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)}: use some of {SUITES}")
    if sample_z and not getattr(model, "stochastic", False):
        raise ValueError("sample_z=True needs a stochastic encoder (model.method=dbae): this encoder is deterministic")
    device, out = torch.device(device), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    test_x, test_extra = batches.take(test, n, seed, batch_size)
    lab_te = label_kinds(test_extra)
    sampling = Sampling(sampler_steps, sampler, churn, precision)
    z_te, encode_ms = batches.encode(model, test_x, batch_size, device, precision, sample_z, seed)
    metrics: dict[str, float | None] = {"eval/encode_ms": encode_ms}
    if {"probe", "disentangle", "generation"} & set(suites):
        train_x, train_extra = batches.take(train, n, seed, batch_size)
        lab_tr = label_kinds(train_extra)
        z_tr = batches.encode(model, train_x, batch_size, device, precision, sample_z, seed + 1)[0]
        shared = set(lab_tr) & set(lab_te)  # label kinds both splits carry
        shared_tr, shared_te = ({k: lab[k] for k in shared} for lab in (lab_tr, lab_te))
    if "recon" in suites:
        with _timed("recon"):
            metrics.update(_recon_suite(model, test_x, z_te, out, sampling, batch_size, device, seed, encode_ms))
    if "probe" in suites and not shared:
        log.info("probe suite skipped: the dataset's items carry no labels")
    elif "probe" in suites:
        with _timed("probe"):
            metrics.update(_probe_suite(z_tr, shared_tr, z_te, shared_te))
    if "disentangle" in suites and not {"factors", "attributes"} & shared:
        log.info("disentangle suite skipped: the dataset has no known factors or binary attributes")
    elif "disentangle" in suites:
        with _timed("disentangle"):
            metrics.update(_disentangle_suite(z_tr, shared_tr, z_te, shared_te))
    if "generation" in suites:
        cap = generation_images or (GPU_GENERATION_IMAGES if device.type == "cuda" else CPU_GENERATION_IMAGES)
        m = min(n, cap, len(train_x))
        key = cache_key(_dataset_id(train, dataset_name, seed), train_x.shape[-1], "train", m)
        with _timed("generation"):
            metrics.update(_generation_suite(model, prior, train, train_x, m, key, cache_dir, out, sampling,
                                             batch_size, device, seed, PriorBudget(prior_steps, prior_images),
                                             gaussian_baseline))
    write_metrics_json(metrics, out / "metrics.json")
    log.info("evaluation of %d test items (%s):\n%s", len(test_x), ", ".join(suites), format_table(metrics))
    return metrics


def evaluate_checkpoint(run: Run, suites: str | None = None, n: int | None = None, sampler_steps: int | None = None,
                        out: Path | None = None) -> tuple[dict[str, float | None], Path]:
    """`dbae eval`: the suites (comma-separated; default eval.suites) on the run's datasets with its eval settings
    (`n`, `sampler_steps` override eval.n, eval.sampler_steps); metrics.json and the image grids go to `out` (default
    RUN/eval). Returns the metrics and that directory."""
    from dbae_platform.models import EVAL_DIR, build_datasets
    cfg = run.cfg
    chosen = tuple(s.strip() for s in suites.split(",") if s.strip()) if suites else cfg.eval.suites
    bad = [s for s in chosen if s not in SUITES]
    if bad:
        raise ConfigError(f"--suite {bad[0]!r} is unknown: use a comma-separated list from {','.join(SUITES)}")
    train, test = build_datasets(cfg)
    out = out or run.directory / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    e = cfg.eval
    metrics = evaluate(run.model, train=train, test=test, suites=chosen, n=n or e.n, out_dir=out, device=run.device,
                       sampler_steps=sampler_steps or e.sampler_steps, sampler=e.sampler, churn=e.churn,
                       precision=e.precision, batch_size=e.batch_size, sample_z=e.sample_z,
                       prior_steps=e.prior_steps, prior_images=e.prior_images, gaussian_baseline=e.gaussian_baseline)
    write_metrics_json(metrics, out / "metrics.json")
    return metrics, out


def _clean(v) -> float | int | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return v


def write_metrics_json(metrics: dict[str, float | None], path: str | Path) -> None:
    """Metrics as a JSON object (None and non-finite values as null), keys sorted."""
    Path(path).write_text(json.dumps({k: _clean(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")


def format_table(metrics: dict[str, float | None]) -> str:
    """A two-column aligned text table; None shows as n/a."""
    cell = lambda v: "n/a" if _clean(v) is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [("metric", "value")] + [(k, cell(v)) for k, v in metrics.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
