"""The pictures of a trained checkpoint and its latent prior (second stage, dbae-method.md §5, §6, §7): fit the prior,
generate samples, interpolate between images, manipulate an attribute along a linear probe. The `dbae prior`,
`generate`, `interpolate` and `manipulate` commands (dbae_platform.cli.generate) call one function each.

A checkpoint is a directory written by `dbae train` (state.pt + config.yaml) or a registered model
(models:/NAME/VERSION, runs:/RUN_ID/model: dbae_platform.registry), loaded as a `Run` (dbae_platform.models); its
EMA weights are used. Latents are posterior means. Outputs default to the checkpoint directory. `datasets` is a
function returning the run's (train, test) datasets, called only where a command reads images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from dbae_core.editing import fit_probe, manipulate, manipulate_latent, save_grid, save_strip
from dbae_core.latent_prior import (
    SMALL_MODEL,
    LatentPrior,
    encode_posterior,
    fit_prior,
    load_prior,
    prior_preset,
    save_prior,
)
from dbae_platform import batches
from dbae_platform.config import ConfigError
from dbae_platform.sampling import Sampling

if TYPE_CHECKING:
    from dbae_platform.models import Run

__all__ = ["train_prior", "latent_source", "generate", "interpolate", "manipulate_attribute", "GAUSSIAN_IMAGES",
           "GRID_ROW"]

log = logging.getLogger(__name__)

GAUSSIAN_IMAGES = 5000  # training images encoded to fit `generate --gaussian`
GRID_ROW = 8  # samples per row of samples.png

Datasets = Callable[[], "tuple[Dataset, Dataset]"]


def _latents(run: Run, x: Tensor) -> Tensor:
    """Posterior means of x with the run's eval settings (batch size, precision), on the CPU."""
    return batches.encode(run.model, x, run.cfg.eval.batch_size, run.device, run.cfg.eval.precision)[0]


def out_dir(out: Path | None, run: Run, name: str) -> Path:
    """`out`, else RUN/`name`, created."""
    out = out or run.directory / name
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- dbae prior --------------------------------------------------------------------------------------
def prior_path(out: Path | None, directory: Path) -> Path:
    if out is None:
        return directory / "prior.pt"
    return out if out.suffix == ".pt" else out / "prior.pt"


def existing_prior(path: Path, cfg_dict: dict[str, Any], step: int) -> str | None:
    """Why an existing prior.pt must be (re)trained, or None when it is done: same settings, step and ≥ steps."""
    try:
        old = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: retrain over it
        return f"it is unreadable ({type(err).__name__})"
    if not isinstance(old, dict) or old.get("kind") != LatentPrior.kind:
        return "it is not a latent-prior file"
    changed = sorted(k for k in cfg_dict if k != "steps" and old.get("config", {}).get(k) != cfg_dict[k])
    if changed:
        return f"its settings differ ({', '.join(changed)})"
    if old.get("checkpoint_step") != step:
        return f"it was fitted on the latents of step {old.get('checkpoint_step')}, not {step}"
    if int(old.get("step", 0)) < cfg_dict["steps"]:
        return (f"it has {old.get('step')} of {cfg_dict['steps']} steps and fit_prior keeps no optimizer state, so "
                "training restarts from step 0")
    return None


def train_prior(run: Run, datasets: Datasets, out: Path | None = None, preset: str | None = None,
                steps: int | None = None, batch_size: int | None = None, lr: float | None = None) -> Path:
    """The latent prior of `run` (dbae-method.md §5) fitted on its encoded training set and saved (default
    RUN/prior.pt); one already trained with these settings is kept. `preset` defaults by model size."""
    path = prior_path(out, run.directory)
    params = run.model.parameter_counts()["total"]
    chosen = preset or ("tiny" if params < SMALL_MODEL else "paper")
    changes = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)) if v is not None}
    pcfg = prior_preset(chosen, latent_dim=run.model.cfg.latent_dim, **changes)
    if path.is_file():
        reason = existing_prior(path, dataclasses.asdict(pcfg), run.step)
        if reason is None:
            log.info("%s is already trained for >= %d steps with these settings: nothing to do", path, pcfg.steps)
            return path
        log.info("retraining %s: %s", path, reason)
    log.info("prior preset %s (%s; the model has %.2fM parameters): %d steps, batch %d, lr %g", chosen,
             "--preset" if preset else "default", params / 1e6, pcfg.steps, pcfg.batch_size, pcfg.lr)
    train, _ = datasets()
    t0 = time.perf_counter()
    z, sigma = encode_posterior(run.model, train, batch_size=run.cfg.eval.batch_size, device=run.device)
    log.info("encoded %d training images in %.1f s", len(z), time.perf_counter() - t0)
    t0 = time.perf_counter()
    # the stochastic encoder's prior learns what the decoder saw: fresh draws z = mu + sigma * eps (sigma None: DBAE-d)
    prior, history = fit_prior(z, pcfg, device=run.device, log_every=max(1, pcfg.steps // 10), sigma=sigma)
    log.info("trained the prior in %.1f s; loss %s", time.perf_counter() - t0,
             ", ".join(f"{loss:.4f} @ {s}" for s, loss in history))
    save_prior(path, prior, pcfg.steps, checkpoint_step=run.step, preset=chosen, train_latents=len(z),
               final_loss=history[-1][1])
    return path


# -- dbae generate -----------------------------------------------------------------------------------
def read_prior(path: Path, device: torch.device) -> LatentPrior:
    """load_prior, with a truncated or foreign file as one line (CheckpointError) instead of torch's traceback."""
    from dbae_core.checkpoint import CheckpointError
    try:
        return load_prior(path, map_location=device)
    except ValueError:  # a torch file, but not a prior: load_prior's message says so
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"prior {path} is unreadable ({type(err).__name__}): it is truncated or not written by "
                              "`dbae prior`; rerun `dbae prior CHECKPOINT` to write it again") from None


def latent_source(run: Run, checkpoint: str | Path, prior: Path | None, gaussian: bool,
                  prior_steps: int) -> LatentPrior | None:
    """What z is drawn from: the learned prior (`prior`, default RUN/prior.pt; loaded and checked now) or, with
    `gaussian`, None."""
    if gaussian:
        return None
    path = prior or run.directory / "prior.pt"
    if prior is not None and not path.is_file():
        raise FileNotFoundError(f"--prior {path} does not exist: pass a file written by `dbae prior` (prior.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"no latent prior at {path}: run `dbae prior {checkpoint}` first, or pass "
                                "--gaussian to sample z from a Gaussian fitted to the encoded training latents")
    learned = read_prior(path, run.device)
    d = run.model.cfg.latent_dim
    if learned.cfg.latent_dim != d:
        raise ConfigError(f"the prior at {path} has latent_dim {learned.cfg.latent_dim} but the model has {d}: pass "
                          f"the prior trained for this checkpoint (dbae prior {checkpoint})")
    log.info("z ~ latent prior %s (%d DDIM steps)", path, prior_steps)
    return learned


def sample_latents(run: Run, datasets: Datasets, prior: LatentPrior | None, n: int, prior_steps: int, seed: int,
                   generator: torch.Generator) -> Tensor:
    """n latents from the learned prior or, when it is None (--gaussian), a Gaussian fitted to encoded latents."""
    if prior is None:
        from dbae_platform.sampling import GaussianPrior
        x, _ = batches.take(datasets()[0], GAUSSIAN_IMAGES, seed, run.cfg.eval.batch_size)
        log.info("z ~ Gaussian fitted to %d encoded training latents", len(x))
        return GaussianPrior(_latents(run, x)).sample(n, torch.Generator().manual_seed(seed))
    return prior.sample(n, prior_steps, generator=generator)


def generate(run: Run, datasets: Datasets, prior: LatentPrior | None, out: Path | None, n: int, steps: int,
             prior_steps: int, seed: int) -> Path:
    """n samples: z from `prior` (None: a Gaussian fitted to encoded training latents), decoded with `steps` sampler
    steps, as a grid in OUT/samples.png (default RUN/generate)."""
    out = out_dir(out, run, "generate")
    generator = torch.Generator(run.device).manual_seed(seed)
    t0 = time.perf_counter()
    z = sample_latents(run, datasets, prior, n, prior_steps, seed, generator)
    sampling = Sampling(steps, precision=run.cfg.eval.precision)
    x = batches.decode(run.model, z, sampling, run.cfg.eval.batch_size, run.device, "sample", generator)
    path = save_grid(x, out / "samples.png", nrow=GRID_ROW)
    log.info("%d samples (%d sampler steps) in %.1f s", n, steps, time.perf_counter() - t0)
    return path


# -- dbae interpolate --------------------------------------------------------------------------------
def interpolate(run: Run, datasets: Datasets, out: Path | None, pairs: int, frames: int, steps: int, seed: int,
                random_xt: bool = False) -> Path:
    """`pairs` pairs of test images and `frames` decodings of their interpolated latents (λ from 0 to 1) as strips in
    OUT/interpolation_*.png and OUT/interpolations.png (default RUN/interpolate)."""
    if random_xt and not run.diffae:
        raise ConfigError("--random-xt applies to DiffAE checkpoints only: DBAE's x_T is Dec(z_λ); drop the flag")
    if frames < 2:
        raise ConfigError(f"--frames {frames} is too few: pass at least 2 (λ = 0 and 1)")
    out = out_dir(out, run, "interpolate")
    x, _ = batches.take(datasets()[1], 2 * pairs, seed, run.cfg.eval.batch_size)
    pairs = len(x) // 2
    if pairs == 0:
        raise ConfigError("the test split has fewer than 2 images: nothing to interpolate")
    x1, x2 = x[:pairs].to(run.device), x[pairs:2 * pairs].to(run.device)
    lambdas = [i / (frames - 1) for i in range(frames)]
    kw: dict[str, Any] = {}
    if run.diffae:
        kw = {"random_xT": random_xt, "generator": torch.Generator(run.device).manual_seed(seed)}
    t0 = time.perf_counter()
    decoded = run.model.interpolate(x1, x2, lambdas, steps=steps, **kw).float()  # (F, B, C, H, W)
    log.info("%d pairs x %d frames in %.1f s", pairs, len(lambdas), time.perf_counter() - t0)
    strip = torch.cat([x1[None].float(), decoded, x2[None].float()]).cpu()  # source | frames | target
    for i in range(pairs):
        save_strip(strip[:, i:i + 1], out / f"interpolation_{i}.png")
    return save_strip(strip, out / "interpolations.png")


# -- dbae manipulate ---------------------------------------------------------------------------------
_CONDITION = re.compile(r"^\s*([^=<>]+?)\s*(==|=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def label_names(run: Run, dataset: Dataset) -> dict[str, tuple[str, ...]]:
    """Column names of the label kinds the dataset carries, where known."""
    if run.cfg.data.dataset == "shapes":
        from dbae_core.data.shapes import ATTRIBUTE_NAMES, FACTOR_NAMES
        return {"attributes": ATTRIBUTE_NAMES, "factors": FACTOR_NAMES}
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "attribute_names", None)
    return {"attributes": tuple(names)} if names else {}


def _column(key: str, names: tuple[str, ...], width: int, kind: str) -> tuple[int, str]:
    """(index, name) of a column given by index or (case-insensitive) name."""
    if re.fullmatch(r"\d+", key.strip()):
        k = int(key)
        if k < width:
            return k, names[k] if k < len(names) else f"{kind} {k}"
    lower = [n.lower() for n in names]
    if key.strip().lower() in lower:
        k = lower.index(key.strip().lower())
        return k, names[k]
    known = f"names: {', '.join(names)}" if names else "no names are known for this dataset"
    raise ConfigError(f"--attribute {key!r} is not a {kind}: use an index 0-{width - 1} ({known})")


def binary_labels(spec: str, kinds: dict[str, Tensor], names: dict[str, tuple[str, ...]]) -> tuple[Tensor, str]:
    """Binary labels (N,) and a description for --attribute: a binary column, or a condition on a factor or class."""
    m = _CONDITION.match(spec)
    if m is None:
        if "attributes" not in kinds:
            have = " and ".join(sorted(kinds))
            raise ConfigError(f"--attribute {spec!r} names a binary attribute, but the dataset's labels are {have}: "
                              "use a condition, NAME=V, NAME>V or NAME<V (factors) or class=C (classes)")
        col, name = _column(spec, names.get("attributes", ()), kinds["attributes"].shape[1], "binary attribute")
        return kinds["attributes"][:, col], name
    key, op, value = m.group(1), m.group(2), float(m.group(3))
    if key.strip().lower() in ("class", "label"):
        if "classes" not in kinds:
            raise ConfigError(f"--attribute {spec!r}: the dataset has no class labels; see `--help` for the forms")
        values, name = kinds["classes"].double(), "class"
    else:
        if "factors" not in kinds:
            raise ConfigError(f"--attribute {spec!r}: the dataset has no factors to compare; see `--help` for the "
                              "forms")
        col, name = _column(key, names.get("factors", ()), kinds["factors"].shape[1], "factor")
        values = kinds["factors"][:, col]
    hit = {"=": (values - value).abs() < 1e-6, ">": values > value, "<": values < value}[op.replace("==", "=")]
    return hit.float(), f"{name}{op}{m.group(3)}"


def manipulate_attribute(run: Run, datasets: Datasets, out: Path | None, attribute: str, scales: list[float],
                         n: int, steps: int, seed: int, probe_images: int, keep_endpoint: bool = True) -> str:
    """A linear probe for `attribute` fitted on `probe_images` encoded training images, and `n` test images moved
    along it by each of `scales` (strips and manipulation.json in OUT, default RUN/manipulate). Returns the report:
    the mean probe logit of z' and of Enc(decoded image) per scale, and the strip's path."""
    from dbae_platform.evaluate import label_kinds
    if not scales:
        raise ConfigError("--scales is empty: pass e.g. --scales=-1,0,1,2")
    train, test = datasets()
    batch = run.cfg.eval.batch_size
    x_tr, extras = batches.take(train, probe_images, seed, batch)
    kinds = label_kinds(extras)
    if "classes" in kinds and bool((kinds["classes"] < 0).all()):
        del kinds["classes"]  # -1 marks unlabelled images
    if not kinds:
        raise ConfigError(f"the {run.cfg.data.dataset} dataset carries no labels: attribute manipulation needs "
                          "binary attributes, factors or classes (e.g. shapes, celeba, cifar10)")
    y, name = binary_labels(attribute, kinds, label_names(run, train))
    if y.min() == y.max():
        raise ConfigError(f"--attribute {name} is {'always' if y[0] > 0 else 'never'} true on the {len(y)} probe "
                          "images: pick another attribute or threshold")
    out = out_dir(out, run, "manipulate")
    z_tr = _latents(run, x_tr)
    probe = fit_probe(z_tr, y)
    accuracy = ((probe.logit(z_tr) > 0).float() == y).float().mean().item()
    log.info("probe for %s on %d training latents (%.0f%% positive): training accuracy %.3f", name, len(y),
             100 * y.mean().item(), accuracy)

    x, _ = batches.take(test, n, seed, batch)
    x = x.to(run.device)
    t0 = time.perf_counter()
    images = manipulate(run.model, x, probe, scales, steps=steps, keep_endpoint=keep_endpoint,
                        generator=torch.Generator(run.device).manual_seed(seed)).float()  # (S, n, C, H, W)
    log.info("%d images x %d scales in %.1f s", len(x), len(scales), time.perf_counter() - t0)
    z = _latents(run, x)
    latent = [probe.logit(manipulate_latent(z, probe, s)).mean().item() for s in scales]
    decoded = [probe.logit(_latents(run, images[k])).mean().item() for k in range(len(scales))]
    strip = torch.cat([x[None].float(), images]).cpu()  # original | scales
    for i in range(len(x)):
        save_strip(strip[:, i:i + 1], out / f"manipulation_{i}.png")
    path = save_strip(strip, out / "manipulation.png")
    (out / "manipulation.json").write_text(json.dumps(
        {"attribute": name, "probe_images": len(y), "probe_accuracy": accuracy, "scales": scales,
         "latent_logit": latent, "decoded_logit": decoded}, indent=2) + "\n")
    rows = [("scale", "latent_logit", "decoded_logit")] + [
        (f"{s:g}", f"{a:.4g}", f"{b:.4g}" if math.isfinite(b) else "n/a") for s, a, b in zip(scales, latent, decoded)]
    table = "\n".join(f"{s:>8}  {a:>12}  {b:>13}" for s, a, b in rows)
    return (f"attribute {name}: mean probe logit of z' (latent) and of Enc(decoded image) (decoded)\n"
            f"{table}\n{path}\n")
