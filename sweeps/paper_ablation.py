"""The paper's information-split ablation (dbae-method.md §7) at equal latent size: DBAE, DBAE-d, and DiffAE decoding
from a random x_T and from its inferred x_T (the `variant` column of the table: `default` = inferred, `random_xT`).
Every method trains the release's objective (entropy weight 0: the term exists only for the stochastic encoder).

    python sweeps/paper_ablation.py --smoke
    python sweeps/paper_ablation.py --preset shapes32 --seeds 3 --set eval.suites='[recon, probe]'
"""

import sys

from dbae_platform.cli.sweep import main
from dbae_platform.study import Study

STUDY = Study(
    name="paper_ablation",
    description="DBAE vs DBAE-d vs DiffAE (random and inferred x_T) at equal latent size.",
    preset="tiny",
    overrides={"objective.entropy_weight": 0.0},  # the release's objective: the term exists only for DBAE
    space={"model.method": ["dbae", "dbae_d", "diffae"]},
    search="grid",
    metric=("eval/recon_mse",),
    mode=("min",),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
