"""`dbae prior`, `generate`, `interpolate` and `manipulate`: the latent prior (second stage, dbae-method.md §5) and the
pictures of a trained checkpoint (§6, §7), computed by dbae_platform.generation. cli/__init__.py wires in
`add_parsers` and `HANDLERS`.

Every command takes CHECKPOINT, a checkpoint directory written by `dbae train` (state.pt + config.yaml) or a registered
model (models:/NAME/VERSION, runs:/RUN_ID/model: dbae_platform.registry), and uses its EMA weights. Latents are
posterior means. Outputs default to the checkpoint directory; the path written is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from dbae_core.latent_prior import SMALL_MODEL
from dbae_platform import generation
from dbae_platform.argtypes import at_least, checkpoint_ref, directory, output_file, positive, seed
from dbae_platform.cli.flags import add_registry_flag, checkpoint_run

if TYPE_CHECKING:
    from dbae_platform.models import Run

__all__ = ["add_parsers", "HANDLERS"]

# -- parsers -------------------------------------------------------------------------------------------
def _prior_out(text: str) -> Path:
    """`dbae prior --out`: a .pt file, or a directory to hold prior.pt."""
    return output_file(text) if text.endswith(".pt") else directory(text)


_prior_out.kind = "output file or directory"  # type: ignore[attr-defined]


def _checkpoint_args(p: argparse.ArgumentParser, out_default: str, out_type=directory) -> None:
    # CHECKPOINT is checked by checkpoint_run, first thing: a missing one says what a checkpoint directory holds
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


# -- handlers ------------------------------------------------------------------------------------------
def _datasets(run: Run) -> tuple[Dataset, Dataset]:
    from dbae_platform.models import build_datasets
    return build_datasets(run.cfg)


def _prior(args: argparse.Namespace) -> int:
    run = checkpoint_run(args)
    path = generation.train_prior(run, lambda: _datasets(run), args.out, args.preset, args.steps, args.batch_size,
                                  args.lr)
    sys.stdout.write(f"{path}\n")
    return 0


def _generate(args: argparse.Namespace) -> int:
    run = checkpoint_run(args)
    # before anything is written: a bad --prior leaves no empty output folder
    prior = generation.latent_source(run, args.checkpoint, args.prior, args.gaussian, args.prior_steps)
    path = generation.generate(run, lambda: _datasets(run), prior, args.out, args.n, args.steps, args.prior_steps,
                               args.seed)
    sys.stdout.write(f"{path}\n")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    run = checkpoint_run(args)
    path = generation.interpolate(run, lambda: _datasets(run), args.out, args.pairs, args.frames, args.steps,
                                  args.seed, random_xt=args.random_xt)
    sys.stdout.write(f"{path}\n")
    return 0


def _manipulate(args: argparse.Namespace) -> int:
    run = checkpoint_run(args)
    scales = [s for group in args.scales for s in group]
    sys.stdout.write(generation.manipulate_attribute(run, lambda: _datasets(run), args.out, args.attribute, scales,
                                                     args.n, args.steps, args.seed, args.probe_images,
                                                     keep_endpoint=args.keep_endpoint))
    return 0


HANDLERS = {"prior": _prior, "generate": _generate, "interpolate": _interpolate, "manipulate": _manipulate}
