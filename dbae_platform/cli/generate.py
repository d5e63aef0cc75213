"""`dbae prior`, `generate`, `interpolate` and `manipulate`: the latent prior (second stage, dbae-method.md §5) and the
pictures of a trained checkpoint (§6, §7). cli/__init__.py wires in `add_parsers` and `HANDLERS`.

Every command takes CHECKPOINT, a checkpoint directory written by `dbae train` (state.pt + config.yaml) or a registered
model (models:/NAME/VERSION, runs:/RUN_ID/model: dbae_platform.registry), and uses its EMA weights. Latents are
posterior means. Outputs default to the checkpoint directory; the path written is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

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
from dbae_platform.argtypes import at_least, checkpoint_ref, directory, output_file, positive, seed
from dbae_platform.cli.flags import add_registry_flag
from dbae_platform.config import Config, ConfigError

__all__ = ["add_parsers", "HANDLERS"]

log = logging.getLogger(__name__)

GAUSSIAN_IMAGES = 5000  # training images encoded to fit `generate --gaussian`
GRID_ROW = 8  # samples per row of samples.png


# -- parsers -------------------------------------------------------------------------------------------
def _prior_out(text: str) -> Path:
    """`dbae prior --out`: a .pt file, or a directory to hold prior.pt."""
    return output_file(text) if text.endswith(".pt") else directory(text)


_prior_out.kind = "output file or directory"  # type: ignore[attr-defined]


def _checkpoint_args(p: argparse.ArgumentParser, out_default: str, out_type=directory) -> None:
    # CHECKPOINT is checked by _load_run, first thing: a missing one says what a checkpoint directory holds
    p.add_argument("checkpoint", metavar="CHECKPOINT", type=checkpoint_ref,
                   help="checkpoint directory written by dbae train (holds state.pt and config.yaml), or a registered "
                        "model: models:/NAME/VERSION, runs:/RUN_ID/model")
    p.add_argument("--out", type=out_type, default=None, help=f"output directory (default: {out_default})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override the run's config, e.g. --set data.root=/data/celeba")
    add_registry_flag(p)


def _scales(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def add_parsers(sub) -> None:
    """The prior, generate, interpolate and manipulate subcommands."""
    p = sub.add_parser("prior", help="train the latent DDPM prior p(z) on the run's encoded training set",
                       description="Encode the run's training set (data.train_images) with the EMA autoencoder and "
                                   "train the latent DDPM prior on the posterior means (dbae-method.md §5). Writes "
                                   "CHECKPOINT/prior.pt; rerunning when it has reached --steps only reports it.")
    _checkpoint_args(p, "CHECKPOINT; a path ending in .pt names the file itself", _prior_out)
    p.add_argument("--steps", type=positive(int), default=None, help="training steps (default: the preset's)")
    p.add_argument("--preset", choices=("paper", "tiny"), default=None,
                   help=f"prior network and optimiser preset (default: tiny below {SMALL_MODEL // 10**6}M model "
                        "parameters, else paper)")
    p.add_argument("--batch-size", type=positive(int), default=None, help="default: the preset's")
    p.add_argument("--lr", type=positive(float), default=None, help="default: the preset's")

    p = sub.add_parser("generate", help="unconditional samples: z ~ prior, then decode",
                       description="Draw z from the latent prior (CHECKPOINT/prior.pt by default; `dbae prior` "
                                   "trains it) or, with --gaussian, from a Gaussian fitted to encoded training "
                                   "latents, and decode (DBAE: x_T = Dec(z), then the reverse bridge; DiffAE: random "
                                   "x_T, then DDIM). Writes samples.png, 8 per row.")
    _checkpoint_args(p, "CHECKPOINT/generate")
    p.add_argument("--n", type=positive(int), default=64, help="samples (default 64)")
    p.add_argument("--steps", type=positive(int), default=20, help="image sampler steps (default 20)")
    p.add_argument("--prior-steps", type=positive(int), default=20, help="DDIM steps of the latent prior (default 20)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prior", type=Path, default=None, help="prior file (default: CHECKPOINT/prior.pt)")
    source.add_argument("--gaussian", action="store_true",
                        help="z ~ N(mean, diag std²) of encoded training latents instead of the learned prior")
    p.add_argument("--seed", type=seed, default=0)

    p = sub.add_parser("interpolate", help="interpolations between held-out image pairs",
                       description="Interpolate between --pairs seeded pairs of test images (DBAE: z lerped, x_T = "
                                   "Dec(z_λ); DiffAE: z lerped, inferred x_T slerped). Writes one strip per pair and "
                                   "interpolations.png (a row per pair: source, --frames images, target).")
    _checkpoint_args(p, "CHECKPOINT/interpolate")
    p.add_argument("--pairs", type=positive(int), default=4, help="image pairs (default 4)")
    p.add_argument("--frames", type=at_least(int, 2), default=8, help="λ values from 0 to 1 inclusive (default 8)")
    p.add_argument("--steps", type=positive(int), default=20, help="sampler steps (DiffAE: also inversion steps)")
    p.add_argument("--random-xt", action="store_true", help="DiffAE only: one shared random x_T for every λ")
    p.add_argument("--seed", type=seed, default=0, help="picks the test images")

    p = sub.add_parser("manipulate", help="attribute manipulation along a linear probe direction",
                       description="Fit a logistic probe for a binary attribute on encoded training latents, move "
                                   "the latents of --n test images by z' = z + s·√d·w/‖w‖ for every scale s "
                                   "(dbae-method.md §6), decode, and print the probe logit per scale. Writes one "
                                   "strip per image and manipulation.png (a row per image: original, then scales).")
    _checkpoint_args(p, "CHECKPOINT/manipulate")
    p.add_argument("--attribute", required=True, metavar="K",
                   help="a binary attribute column by index or name (shapes: 0-9 or is_square, is_ellipse, "
                        "is_triangle, is_star, is_heart, large, left, top, warm_fg, warm_bg; CelebA: 0-39 or e.g. "
                        "Smiling), or a condition on a factor by name or index, NAME=V, NAME>V or NAME<V (shapes "
                        "factors: shape, scale, rotation_cos, rotation_sin, x, y, fg_hue, bg_hue, e.g. shape=0), "
                        "or class=C for class-labelled datasets")
    p.add_argument("--scales", type=_scales, nargs="+", default=[[-1.0, 0.0, 1.0, 2.0]], metavar="S",
                   help="manipulation scales s, comma- or space-separated; write negatives as --scales=-1,0,1,2 or "
                        "--scales -1 0 1 2 (default -1,0,1,2)")
    p.add_argument("--n", type=positive(int), default=4, help="test images (default 4)")
    p.add_argument("--steps", type=positive(int), default=20, help="sampler steps (DiffAE: also inversion steps)")
    p.add_argument("--keep-endpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="DBAE: keep x_T = Dec(z) (else Dec(z')); DiffAE: keep the inferred x_T (else a random one)")
    p.add_argument("--probe-images", type=positive(int), default=2000,
                   help="training images the probe is fitted on (default 2000)")
    p.add_argument("--seed", type=seed, default=0, help="picks the probe's training images and the test images")


# -- shared pieces -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    directory: Path  # where state.pt lives: default outputs go below it
    cfg: Config
    model: nn.Module
    step: int
    device: torch.device

    @property
    def diffae(self) -> bool:
        return getattr(self.model, "kind", "dbae") == "diffae"


def _load_run(args: argparse.Namespace) -> _Run:
    """The EMA model, config and step of CHECKPOINT, on the requested device."""
    from dbae_core.checkpoint import WEIGHTS_KEYS, load_checkpoint
    from dbae_platform.config import load_config
    from dbae_platform.models import load_model, pick_device
    from dbae_platform.registry import checkpoint_files
    state_path, cfg_path = checkpoint_files(args.checkpoint, args.tracking_uri)
    state = load_checkpoint(state_path, required=WEIGHTS_KEYS)
    cfg = load_config(cfg_path, args.overrides)
    device = pick_device(args.device)
    model = load_model(state).to(device)
    log.info("%s model (%.2fM parameters) at step %d from %s", getattr(model, "kind", "dbae"),
             model.parameter_counts()["total"] / 1e6, int(state["step"]), state_path)
    return _Run(state_path.parent, cfg, model, int(state["step"]), device)


def _datasets(run: _Run) -> tuple[Dataset, Dataset]:
    from dbae_platform.models import build_datasets
    return build_datasets(run.cfg)


def _take(dataset: Dataset, n: int, seed: int, batch_size: int) -> tuple[Tensor, list[Tensor]]:
    """Images and stacked trailing labels of min(n, len) items: a seeded random subset (streamed data: the first n)."""
    if not isinstance(dataset, IterableDataset):
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, sorted(perm[:n].tolist()))
    images, extras, count = [], [], 0
    for batch in DataLoader(dataset, batch_size=min(batch_size, n), shuffle=False):
        batch = [batch] if torch.is_tensor(batch) else list(batch)
        images.append(batch[0].float())
        extras.append([torch.as_tensor(b) for b in batch[1:]])
        count += len(batch[0])
        if count >= n:
            break
    if not images:
        raise ConfigError("the dataset yielded no items: check data.root (--set data.root=DIR)")
    return torch.cat(images)[:n], [torch.cat(col)[:n] for col in zip(*extras)]


@torch.no_grad()
def _encode(run: _Run, x: Tensor) -> Tensor:
    """Posterior means of x, in batches of eval.batch_size, on the CPU."""
    b = run.cfg.eval.batch_size
    return torch.cat([run.model.encode(x[i:i + b].to(run.device)).float().cpu() for i in range(0, len(x), b)])


@torch.no_grad()
def _decode(run: _Run, z: Tensor, steps: int, generator: torch.Generator) -> Tensor:
    """model.decode in batches of eval.batch_size (DBAE: x_T = Dec(z) → bridge; DiffAE: random x_T → DDIM)."""
    b = run.cfg.eval.batch_size
    return torch.cat([run.model.decode(z[i:i + b].to(run.device), steps, generator=generator)[0].float().cpu()
                      for i in range(0, len(z), b)])


def _out_dir(args: argparse.Namespace, run: _Run, name: str) -> Path:
    out = args.out or run.directory / name
    out.mkdir(parents=True, exist_ok=True)
    return out


# -- dbae prior --------------------------------------------------------------------------------------
def _prior_path(out: Path | None, directory: Path) -> Path:
    if out is None:
        return directory / "prior.pt"
    return out if out.suffix == ".pt" else out / "prior.pt"


def _existing_prior(path: Path, cfg_dict: dict[str, Any], step: int) -> str | None:
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


def _prior(args: argparse.Namespace) -> int:
    run = _load_run(args)
    path = _prior_path(args.out, run.directory)
    params = run.model.parameter_counts()["total"]
    preset = args.preset or ("tiny" if params < SMALL_MODEL else "paper")
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr))
               if v is not None}
    pcfg = prior_preset(preset, latent_dim=run.model.cfg.latent_dim, **changes)
    if path.is_file():
        reason = _existing_prior(path, dataclasses.asdict(pcfg), run.step)
        if reason is None:
            log.info("%s is already trained for >= %d steps with these settings: nothing to do", path, pcfg.steps)
            sys.stdout.write(f"{path}\n")
            return 0
        log.info("retraining %s: %s", path, reason)
    log.info("prior preset %s (%s; the model has %.2fM parameters): %d steps, batch %d, lr %g", preset,
             "--preset" if args.preset else "default", params / 1e6, pcfg.steps, pcfg.batch_size, pcfg.lr)
    train, _ = _datasets(run)
    t0 = time.perf_counter()
    z, sigma = encode_posterior(run.model, train, batch_size=run.cfg.eval.batch_size, device=run.device)
    log.info("encoded %d training images in %.1f s", len(z), time.perf_counter() - t0)
    t0 = time.perf_counter()
    # the stochastic encoder's prior learns what the decoder saw: fresh draws z = mu + sigma * eps (sigma None: DBAE-d)
    prior, history = fit_prior(z, pcfg, device=run.device, log_every=max(1, pcfg.steps // 10), sigma=sigma)
    log.info("trained the prior in %.1f s; loss %s", time.perf_counter() - t0,
             ", ".join(f"{loss:.4f} @ {s}" for s, loss in history))
    save_prior(path, prior, pcfg.steps, checkpoint_step=run.step, preset=preset, train_latents=len(z),
               final_loss=history[-1][1])
    sys.stdout.write(f"{path}\n")
    return 0


# -- dbae generate -----------------------------------------------------------------------------------
def _read_prior(path: Path, device: torch.device) -> LatentPrior:
    """load_prior, with a truncated or foreign file as one line (CheckpointError) instead of torch's traceback."""
    from dbae_core.checkpoint import CheckpointError
    try:
        return load_prior(path, map_location=device)
    except ValueError:  # a torch file, but not a prior: load_prior's message says so
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"prior {path} is unreadable ({type(err).__name__}): it is truncated or not written by "
                              "`dbae prior`; rerun `dbae prior CHECKPOINT` to write it again") from None


def _latent_source(args: argparse.Namespace, run: _Run) -> LatentPrior | None:
    """What z is drawn from: the learned prior (loaded and checked now) or, with --gaussian, None."""
    if args.gaussian:
        return None
    path = args.prior or run.directory / "prior.pt"
    if args.prior is not None and not path.is_file():
        raise FileNotFoundError(f"--prior {path} does not exist: pass a file written by `dbae prior` (prior.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"no latent prior at {path}: run `dbae prior {args.checkpoint}` first, or pass "
                                "--gaussian to sample z from a Gaussian fitted to the encoded training latents")
    prior = _read_prior(path, run.device)
    d = run.model.cfg.latent_dim
    if prior.cfg.latent_dim != d:
        raise ConfigError(f"the prior at {path} has latent_dim {prior.cfg.latent_dim} but the model has {d}: pass "
                          f"the prior trained for this checkpoint (dbae prior {args.checkpoint})")
    log.info("z ~ latent prior %s (%d DDIM steps)", path, args.prior_steps)
    return prior


def _sample_latents(args: argparse.Namespace, run: _Run, prior: LatentPrior | None,
                    generator: torch.Generator) -> Tensor:
    """n latents from the learned prior or, when it is None (--gaussian), a Gaussian fitted to encoded latents."""
    if prior is None:
        from dbae_platform.sampling import GaussianPrior
        x, _ = _take(_datasets(run)[0], GAUSSIAN_IMAGES, args.seed, run.cfg.eval.batch_size)
        log.info("z ~ Gaussian fitted to %d encoded training latents", len(x))
        return GaussianPrior(_encode(run, x)).sample(args.n, torch.Generator().manual_seed(args.seed))
    return prior.sample(args.n, args.prior_steps, generator=generator)


def _generate(args: argparse.Namespace) -> int:
    run = _load_run(args)
    prior = _latent_source(args, run)  # before anything is written: a bad --prior leaves no empty output folder
    out = _out_dir(args, run, "generate")
    generator = torch.Generator(run.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    z = _sample_latents(args, run, prior, generator)
    x = _decode(run, z, args.steps, generator)
    path = save_grid(x, out / "samples.png", nrow=GRID_ROW)
    log.info("%d samples (%d sampler steps) in %.1f s", args.n, args.steps, time.perf_counter() - t0)
    sys.stdout.write(f"{path}\n")
    return 0


# -- dbae interpolate --------------------------------------------------------------------------------
def _interpolate(args: argparse.Namespace) -> int:
    run = _load_run(args)
    if args.random_xt and not run.diffae:
        raise ConfigError("--random-xt applies to DiffAE checkpoints only: DBAE's x_T is Dec(z_λ); drop the flag")
    if args.frames < 2:
        raise ConfigError(f"--frames {args.frames} is too few: pass at least 2 (λ = 0 and 1)")
    out = _out_dir(args, run, "interpolate")
    x, _ = _take(_datasets(run)[1], 2 * args.pairs, args.seed, run.cfg.eval.batch_size)
    pairs = len(x) // 2
    if pairs == 0:
        raise ConfigError("the test split has fewer than 2 images: nothing to interpolate")
    x1, x2 = x[:pairs].to(run.device), x[pairs:2 * pairs].to(run.device)
    lambdas = [i / (args.frames - 1) for i in range(args.frames)]
    kw: dict[str, Any] = {}
    if run.diffae:
        kw = {"random_xT": args.random_xt, "generator": torch.Generator(run.device).manual_seed(args.seed)}
    t0 = time.perf_counter()
    frames = run.model.interpolate(x1, x2, lambdas, steps=args.steps, **kw).float()  # (F, B, C, H, W)
    log.info("%d pairs x %d frames in %.1f s", pairs, len(lambdas), time.perf_counter() - t0)
    strip = torch.cat([x1[None].float(), frames, x2[None].float()]).cpu()  # source | frames | target
    for i in range(pairs):
        save_strip(strip[:, i:i + 1], out / f"interpolation_{i}.png")
    path = save_strip(strip, out / "interpolations.png")
    sys.stdout.write(f"{path}\n")
    return 0


# -- dbae manipulate ---------------------------------------------------------------------------------
_CONDITION = re.compile(r"^\s*([^=<>]+?)\s*(==|=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def _label_names(run: _Run, dataset: Dataset) -> dict[str, tuple[str, ...]]:
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


def _binary_labels(spec: str, kinds: dict[str, Tensor], names: dict[str, tuple[str, ...]]) -> tuple[Tensor, str]:
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


def _manipulate(args: argparse.Namespace) -> int:
    from dbae_platform.evaluate import label_kinds
    run = _load_run(args)
    scales = [s for group in args.scales for s in group]
    if not scales:
        raise ConfigError("--scales is empty: pass e.g. --scales=-1,0,1,2")
    train, test = _datasets(run)
    batch = run.cfg.eval.batch_size
    x_tr, extras = _take(train, args.probe_images, args.seed, batch)
    kinds = label_kinds(extras)
    if "classes" in kinds and bool((kinds["classes"] < 0).all()):
        del kinds["classes"]  # -1 marks unlabelled images
    if not kinds:
        raise ConfigError(f"the {run.cfg.data.dataset} dataset carries no labels: attribute manipulation needs "
                          "binary attributes, factors or classes (e.g. shapes, celeba, cifar10)")
    y, name = _binary_labels(args.attribute, kinds, _label_names(run, train))
    if y.min() == y.max():
        raise ConfigError(f"--attribute {name} is {'always' if y[0] > 0 else 'never'} true on the {len(y)} probe "
                          "images: pick another attribute or threshold")
    out = _out_dir(args, run, "manipulate")
    z_tr = _encode(run, x_tr)
    probe = fit_probe(z_tr, y)
    accuracy = ((probe.logit(z_tr) > 0).float() == y).float().mean().item()
    log.info("probe for %s on %d training latents (%.0f%% positive): training accuracy %.3f", name, len(y),
             100 * y.mean().item(), accuracy)

    x, _ = _take(test, args.n, args.seed, batch)
    x = x.to(run.device)
    t0 = time.perf_counter()
    images = manipulate(run.model, x, probe, scales, steps=args.steps, keep_endpoint=args.keep_endpoint,
                        generator=torch.Generator(run.device).manual_seed(args.seed)).float()  # (S, n, C, H, W)
    log.info("%d images x %d scales in %.1f s", len(x), len(scales), time.perf_counter() - t0)
    z = _encode(run, x)
    latent = [probe.logit(manipulate_latent(z, probe, s)).mean().item() for s in scales]
    decoded = [probe.logit(_encode(run, images[k])).mean().item() for k in range(len(scales))]
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
    sys.stdout.write(f"attribute {name}: mean probe logit of z' (latent) and of Enc(decoded image) (decoded)\n"
                     f"{table}\n{path}\n")
    return 0


HANDLERS = {"prior": _prior, "generate": _generate, "interpolate": _interpolate, "manipulate": _manipulate}
