"""Linear probes on frozen latents (dbae-method.md §8): attribute AP, regression Pearson r / MSE / R², class accuracy.

Protocol of the paper's CelebA table, used for the multi-label and the class probes: a linear layer on latents
standardised with the training latents' mean and std, Adam (lr 1e-3), batch 128, 15 epochs, BCE-with-logits
(cross-entropy for classes), the epoch with the best validation score kept, its test score reported. 15 epochs of
CelebA are ~19k steps; on a small evaluation set (1,000 latents: 8 steps an epoch) they leave Adam, whose first steps
move every weight by ~lr whatever its gradient, far from the optimum, so the number of epochs is raised until at
least `min_steps` = 2,000 steps are taken (no change at CelebA size; `min_steps=0` is the literal protocol). Without a
validation set, 10 % of the training latents (a seeded draw) are held out for it. The head starts at zero (the
problem is convex), so a probe is a deterministic function of its inputs and seed. The regression probe is the
closed-form least-squares fit (a 1e-6 ridge keeps it defined on collinear latents), which is what Adam would converge
to.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ProbeConfig", "average_precision", "mean_average_precision", "probe_attributes", "probe_classes",
           "probe_regression"]


@dataclass(frozen=True)
class ProbeConfig:
    """Optimiser settings of the linear probe (the paper's CelebA protocol)."""

    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 15
    val_fraction: float = 0.1
    seed: int = 0
    min_steps: int = 2000  # epochs are raised until this many steps are taken (small sets); 0: exactly `epochs`

    def epochs_for(self, n: int) -> int:
        """Epochs to run on n training latents: `epochs`, or more to reach `min_steps`."""
        return max(self.epochs, math.ceil(self.min_steps / max(math.ceil(n / self.batch_size), 1)))


def average_precision(y_true, scores) -> float:
    """AP = Σ_k (R_k − R_{k−1}) P_k over distinct thresholds (= sklearn's average_precision_score); NaN if no y=1."""
    y = np.asarray(y_true).reshape(-1) > 0
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last item of each run of tied scores
    tp = np.cumsum(y)[last]
    precision, recall = tp / (last + 1), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true, scores) -> tuple[float, np.ndarray]:
    """Mean AP over the columns of (N, K) labels that have a positive, and the per-column APs (NaN where none)."""
    y, s = np.asarray(y_true), np.asarray(scores)
    per = np.array([average_precision(y[:, k], s[:, k]) for k in range(y.shape[1])])
    return (float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")), per


def _as_float(x) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x.detach().cpu()).double()


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    """(z − μ_train) / σ_train for the training latents and every other set."""
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return [((z - mu) / sd).float() for z in (train, *others)]


def _split_val(z: Tensor, y: Tensor, z_val, y_val, cfg: ProbeConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The given validation set, or a seeded hold-out of cfg.val_fraction of the training set."""
    if z_val is not None:
        return z, y, _as_float(z_val), torch.as_tensor(np.asarray(y_val) if not torch.is_tensor(y_val) else y_val)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(cfg.seed + 1))
    n_val = min(max(1, round(cfg.val_fraction * len(z))), len(z) - 1)
    return z[perm[n_val:]], y[perm[n_val:]], z[perm[:n_val]], y[perm[:n_val]]


@contextlib.contextmanager
def _one_thread():
    """Run tiny ops on one thread: on a busy 2-core machine a threaded reduction can take 100x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_linear(z: Tensor, y: Tensor, z_val: Tensor, y_val: Tensor, out_dim: int,
                loss_fn: Callable[[Tensor, Tensor], Tensor], score_fn: Callable[[Tensor, Tensor], float],
                cfg: ProbeConfig) -> tuple[nn.Linear, float, int]:
    """Adam on a zero-initialised linear head; returns the head of the best validation epoch, its score and epoch."""
    head = nn.Linear(z.shape[1], out_dim)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (-float("inf"), {k: v.clone() for k, v in head.state_dict().items()}, 0)
    with _one_thread():
        for epoch in range(1, cfg.epochs_for(len(z)) + 1):
            _epoch(head, opt, z, y, loss_fn, gen, cfg.batch_size)
            with torch.no_grad():
                score = score_fn(head(z_val), y_val)
            if score > best[0]:
                best = (score, {k: v.clone() for k, v in head.state_dict().items()}, epoch)
    head.load_state_dict(best[1])
    return head, best[0], best[2]


def _epoch(head: nn.Linear, opt: torch.optim.Optimizer, z: Tensor, y: Tensor,
           loss_fn: Callable[[Tensor, Tensor], Tensor], gen: torch.Generator, batch_size: int) -> None:
    """One pass over shuffled mini-batches."""
    perm = torch.randperm(len(z), generator=gen)
    for i in range(0, len(z), batch_size):
        idx = perm[i:i + batch_size]
        opt.zero_grad(set_to_none=True)
        loss_fn(head(z[idx]), y[idx]).backward()
        opt.step()


def probe_attributes(z_train, y_train, z_test, y_test, z_val=None, y_val=None,
                     cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Multi-label linear probe (BCE-with-logits), best epoch by validation mean AP; test mean AP (§8, CelebA)."""
    z, zt = _as_float(z_train), _as_float(z_test)
    y = _as_float(y_train).gt(0).float()
    z, y, zv, yv = _split_val(z, y, z_val, y_val, cfg)
    z, zv, zt = _standardise(z, zv, zt)
    yv = _as_float(yv).gt(0).float()

    def score(logits: Tensor, target: Tensor) -> float:
        ap = mean_average_precision(target.numpy(), logits.numpy())[0]
        return ap if np.isfinite(ap) else -float("inf")

    head, val_ap, epoch = _fit_linear(z, y, zv, yv, y.shape[1], nn.functional.binary_cross_entropy_with_logits,
                                      score, cfg)
    with torch.no_grad():
        scores = head(zt).numpy()
    ap, per = mean_average_precision(np.asarray(y_test) > 0, scores)
    return {"ap": ap, "ap_per_attribute": per, "val_ap": val_ap, "best_epoch": epoch, "scores": scores}


def probe_classes(z_train, y_train, z_test, y_test, z_val=None, y_val=None, cfg: ProbeConfig = ProbeConfig()) -> dict:
    """Softmax linear probe (cross-entropy), best epoch by validation accuracy; test accuracy and test class AP.

    `ap` is the macro mean over classes of the one-vs-rest average precision of the softmax scores: the class
    counterpart of the attribute probe's mean AP (a class present in the test labels counts; others are skipped).
    """
    z, zt = _as_float(z_train), _as_float(z_test)
    y = torch.as_tensor(np.asarray(y_train)).long().reshape(-1)
    z, y, zv, yv = _split_val(z, y, z_val, y_val, cfg)
    z, zv, zt = _standardise(z, zv, zt)
    yt = torch.as_tensor(np.asarray(y_test)).long().reshape(-1)
    n_classes = int(max(y.max(), torch.as_tensor(yv).max(), yt.max())) + 1
    acc = lambda logits, target: (logits.argmax(1) == target.long()).float().mean().item()  # noqa: E731
    head, val_acc, epoch = _fit_linear(z, y, zv, torch.as_tensor(yv).long(), n_classes,
                                       nn.functional.cross_entropy, acc, cfg)
    with torch.no_grad():
        logits = head(zt)
    scores = logits.softmax(1).numpy()
    ap, per = mean_average_precision(nn.functional.one_hot(yt, n_classes).numpy(), scores)
    return {"accuracy": acc(logits, yt), "ap": ap, "ap_per_class": per, "val_accuracy": val_acc, "best_epoch": epoch,
            "scores": scores}


def probe_regression(z_train, y_train, z_test, y_test, ridge: float = 1e-6) -> dict:
    """Least-squares linear regression per target column; test Pearson r, MSE and R² (uniform mean over targets)."""
    z, zt = _standardise(_as_float(z_train), _as_float(z_test))
    z, zt = z.double(), zt.double()
    y, yt = _as_float(y_train), _as_float(y_test)
    y, yt = y.reshape(len(y), -1), yt.reshape(len(yt), -1)
    y_mean = y.mean(0)
    gram = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
    w = torch.linalg.solve(gram, z.T @ (y - y_mean))
    pred = zt @ w + y_mean
    res, dev = yt - pred, yt - yt.mean(0)
    ss_tot = dev.square().sum(0)
    ok = ss_tot > 0  # R² and r are undefined for a constant target
    r2 = 1 - res.square().sum(0)[ok] / ss_tot[ok]
    pc, dp = pred - pred.mean(0), dev
    r = (pc * dp).sum(0)[ok] / (pc.square().sum(0)[ok].sqrt() * dp.square().sum(0)[ok].sqrt()).clamp_min(1e-300)
    nan = float("nan")
    return {"r2": r2.mean().item() if ok.any() else nan, "pearson": r.mean().item() if ok.any() else nan,
            "mse": res.square().mean().item(), "r2_per_target": r2.numpy()}
