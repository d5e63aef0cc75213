"""The entropy term's weight λ with the stochastic encoder (DBAE, dbae-method.md §3): 0 (no term) up to 1e-1.

    python sweeps/entropy_weight.py --smoke
    python sweeps/entropy_weight.py --search optuna --num-samples 16 \
        --space 'objective.entropy_weight={loguniform: [1.0e-5, 1.0e-1]}'
"""

import sys

from dbae_platform.cli.sweep import main
from dbae_platform.study import Study

STUDY = Study(
    name="entropy_weight",
    description="Sweep the entropy weight of DBAE's stochastic encoder.",
    preset="tiny",
    overrides={"model.method": "dbae"},
    space={"objective.entropy_weight": [0.0, 1e-4, 1e-3, 1e-2, 1e-1]},
    search="grid",
    metric=("eval/recon_mse",),
    mode=("min",),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
