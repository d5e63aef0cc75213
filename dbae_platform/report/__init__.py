"""`dbae report`: the results document of the paper-claims study (docs/results.md and its PNG plots), from MLflow.

Every number in the document is read from the MLflow store: the newest parent run of each `sweep/*` experiment and
its child runs (smoke sweeps are skipped). What a sweep is follows from its swept keys: `model.method` alone is the
paper's method comparison (DBAE, DBAE-d, DiffAE with inferred and with random x_T, dbae-method.md §7), one per
dataset; `model.latent_dim`, `objective.entropy_weight` and `objective.sde` are the three ablations; anything else
is shown as its plain ablation table. The method comparison is checked against the directions of the paper's claims
(dbae-method.md §8): each claim, the paper's numbers, ours, the difference and whether the sign agrees. Commands,
hardware, commits and the training budget come from the runs' tags, params and start/end times.

One module a part: collect.py (MLflow -> the sweeps and their rows), claims.py (the paper's claims as data and their
verdicts), render.py (plots and the markdown document).
"""

from __future__ import annotations

from dbae_platform.report.claims import CLAIMS, Claim, Verdict, check_claims, difference_se
from dbae_platform.report.collect import Stat, Sweep, collect, method_rows
from dbae_platform.report.render import render, write_report

__all__ = ["Sweep", "Stat", "Claim", "Verdict", "CLAIMS", "collect", "method_rows", "check_claims", "difference_se",
           "render", "write_report"]
