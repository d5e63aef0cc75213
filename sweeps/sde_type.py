"""VP vs VE bridge (dbae-method.md §2), each with the stochastic (DBAE) and the deterministic (DBAE-d) encoder.

    python sweeps/sde_type.py --smoke
    python sweeps/sde_type.py --preset shapes32 --seeds 3

The bridge schedule takes each SDE's defaults (objective.bridge: {}), so VP and VE are compared at their own settings,
and every method trains the release's objective (entropy weight 0: the term exists only for the stochastic encoder;
sweeps/entropy_weight.py sweeps it).
"""

import sys

from dbae_platform.cli.sweep import main
from dbae_platform.study import Study

STUDY = Study(
    name="sde_type",
    description="VP vs VE bridges, with DBAE and DBAE-d.",
    preset="tiny",
    overrides={"objective.bridge": {}, "objective.entropy_weight": 0.0},
    space={"objective.sde": ["vp", "ve"], "model.method": ["dbae", "dbae_d"]},
    search="grid",
    metric=("eval/recon_mse",),
    mode=("min",),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
