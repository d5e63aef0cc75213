"""The paper's claims as data (dbae-method.md §8): each a direction between two rows of the method comparison, with
the paper's numbers, and the verdict of our sweeps on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dbae_platform.report.collect import Stat, Sweep, format_number

__all__ = ["Claim", "CLAIMS", "Verdict", "difference_se", "check_claims", "NOISE_SE", "DIFFAE"]

# A difference a − b is told from seed noise when |a − b| > NOISE_SE standard errors of the difference,
# SE = sqrt(s_a²/n_a + s_b²/n_b) with the seeds' sample standard deviations s (about a 95 % two-sided test).
NOISE_SE = 2.0
# metrics of the latent alone (identical for both DiffAE rows; they sit on the inferred-x_T row of the table)
DIFFAE = "DiffAE, inferred x_T"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper as a direction: row `a` is better than row `b` on `metric` (higher or lower)."""

    text: str
    metric: str
    better: str  # "higher" | "lower"
    a: str
    b: str
    paper: str  # the paper's numbers (dbae-method.md §8)
    paper_a: float | None = None
    paper_b: float | None = None
    ties_agree: bool = False  # "at least" claims and counts: equal values agree


CLAIMS = (
    Claim("DBAE-d reconstructs better than DBAE (SSIM)", "ssim", "higher", "DBAE-d", "DBAE", "0.953 vs 0.920",
          0.953, 0.920),
    Claim("DBAE-d reconstructs better than DBAE (MSE)", "recon_mse", "lower", "DBAE-d", "DBAE", "2.49e-3 vs 4.81e-3",
          2.49e-3, 4.81e-3),
    Claim("DBAE beats DiffAE with random x_T at equal latent size (SSIM)", "ssim", "higher", "DBAE",
          "DiffAE, random x_T", "0.920 vs 0.677", 0.920, 0.677),
    Claim("DBAE beats DiffAE with random x_T at equal latent size (MSE)", "recon_mse", "lower", "DBAE",
          "DiffAE, random x_T", "4.81e-3 vs 7e-3", 4.81e-3, 7e-3),
    Claim("DBAE-d beats DiffAE with random x_T at equal latent size (SSIM)", "ssim", "higher", "DBAE-d",
          "DiffAE, random x_T", "0.953 vs 0.677", 0.953, 0.677),
    Claim("DBAE-d beats DiffAE with random x_T at equal latent size (MSE)", "recon_mse", "lower", "DBAE-d",
          "DiffAE, random x_T", "2.49e-3 vs 7e-3", 2.49e-3, 7e-3),
    Claim("DiffAE with inferred x_T (latent d + C·H·W wide) reconstructs best (SSIM, vs DBAE-d)", "ssim", "higher",
          "DiffAE, inferred x_T", "DBAE-d", "0.991 vs 0.953", 0.991, 0.953),
    Claim("DBAE's latent is more linearly predictive than DiffAE's (probe AP: attributes, or classes)", "probe",
          "higher", "DBAE", DIFFAE, "0.655 vs 0.603 (CelebA)", 0.655, 0.603),
    Claim("DBAE-d's latent is more linearly predictive than DiffAE's (probe AP: attributes, or classes)", "probe",
          "higher", "DBAE-d", DIFFAE, "0.650 vs 0.603 (CelebA)", 0.650, 0.603),
    Claim("DBAE's probe AP is at least DBAE-d's", "probe", "higher", "DBAE", "DBAE-d", "0.655 vs 0.650 (CelebA)",
          0.655, 0.650, ties_agree=True),
    Claim("DBAE is more disentangled than DiffAE (TAD, higher is better)", "tad", "higher", "DBAE", DIFFAE,
          "direction only: the summary's 0.124 vs 0.155 contradicts it and is unverified (§8)"),
    Claim("DBAE captures at least as many attributes as DiffAE (ATTRS)", "attrs", "higher", "DBAE", DIFFAE,
          "direction only (no number in §8)", ties_agree=True),
    Claim("DBAE encodes faster than DiffAE with inferred x_T (ms per image)", "encode_ms", "lower", "DBAE",
          DIFFAE, "one encoder pass vs ~100 NFE of DDIM inversion (§1)"),
)


def difference_se(a: Stat, b: Stat) -> float:
    """Standard error of mean(a) − mean(b) over independent seeds: sqrt(s_a²/n_a + s_b²/n_b); NaN when either side
    has fewer than two seeds (its spread is unmeasured)."""
    if a.n < 2 or b.n < 2 or not (math.isfinite(a.std) and math.isfinite(b.std)):
        return math.nan
    return math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    dataset: str
    a: Stat | None
    b: Stat | None
    metric: str

    @property
    def direction(self) -> bool | None:
        """Whether the means lie in the claimed direction (ties count for "at least" claims); None: not measured."""
        if self.a is None or self.b is None:
            return None
        if self.claim.ties_agree and self.a.mean == self.b.mean:
            return True
        return self.a.mean > self.b.mean if self.claim.better == "higher" else self.a.mean < self.b.mean

    @property
    def noise(self) -> float:
        """NOISE_SE standard errors of the difference (NaN with one seed on either side)."""
        return NOISE_SE * difference_se(self.a, self.b) if self.a is not None and self.b is not None else math.nan

    @property
    def resolved(self) -> bool:
        """The difference exceeds the seed noise (an exact tie of an "at least" claim is resolved: it agrees)."""
        if self.a is None or self.b is None or not math.isfinite(self.noise):
            return False
        if self.claim.ties_agree and self.a.mean == self.b.mean:
            return True
        return abs(self.a.mean - self.b.mean) > self.noise

    @property
    def agrees(self) -> bool | None:
        """True/False only when the difference is beyond the seed noise; None when within it, unmeasured (one
        seed) or not measured at all: see `status`."""
        return self.direction if self.resolved else None

    @property
    def status(self) -> str:
        """"agrees", "disagrees", "within noise", "one seed" (noise unmeasured) or "not measured"."""
        if self.direction is None:
            return "not measured"
        if not math.isfinite(self.noise):
            return "one seed"
        if not self.resolved:
            return "within noise"
        return "agrees" if self.direction else "disagrees"

    def margin(self) -> str:
        """Our difference a − b, relative to b, and the paper's difference for comparison."""
        if self.a is None or self.b is None:
            return "not measured"
        d = self.a.mean - self.b.mean
        rel = f" ({100 * d / abs(self.b.mean):+.0f} %)" if self.b.mean else ""
        ours = f"{format_number(d, 3) if d < 0 else '+' + format_number(d, 3)}{rel}"
        if self.claim.metric == "encode_ms" and self.a.mean > 0:
            ours = f"{self.b.mean / self.a.mean:.1f}× faster" if d < 0 else f"{self.a.mean / self.b.mean:.1f}× slower"
        if math.isfinite(self.noise):
            ours += f"; noise ±{format_number(self.noise, 2)}"
        if self.claim.paper_a is not None:
            pd = self.claim.paper_a - self.claim.paper_b
            ours += f"; paper {format_number(pd, 3) if pd < 0 else '+' + format_number(pd, 3)}" \
                    f" ({100 * pd / abs(self.claim.paper_b):+.0f} %)"
        return ours


def _probe_metric(rows: dict[str, dict[str, Stat]]) -> str:
    present = {m for r in rows.values() for m in r}
    return "probe_ap" if "probe_ap" in present else "probe_class_ap"


def check_claims(sweeps: Sequence[Sweep]) -> list[Verdict]:
    """Every claim on every method comparison (dataset) that has its metric, in the order of CLAIMS. A claim whose
    metric the dataset does not have (TAD without binary attributes) is left out; one row missing it is kept as
    "not measured"."""
    verdicts = []
    for claim in CLAIMS:
        for sweep in (s for s in sweeps if s.kind == "methods"):
            rows = sweep.rows
            metric = _probe_metric(rows) if claim.metric == "probe" else claim.metric
            a, b = rows.get(claim.a, {}).get(metric), rows.get(claim.b, {}).get(metric)
            if a is None and b is None:
                continue
            verdicts.append(Verdict(claim, sweep.dataset, a, b, metric))
    return verdicts
