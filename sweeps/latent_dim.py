"""How reconstruction and representation quality change with the latent dimension d (DBAE-d, dbae-method.md §8).

    python sweeps/latent_dim.py --smoke                   # every trial for a few steps: checks the plumbing
    python sweeps/latent_dim.py --preset shapes32 --seeds 3
    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env sweeps/runtime_env.yaml \
        -- python sweeps/latent_dim.py --storage-path /shared/runs
"""

import sys

from dbae_platform.cli.sweep import main
from dbae_platform.study import Study

STUDY = Study(
    name="latent_dim",
    description="Sweep the latent dimension of DBAE-d.",
    preset="tiny",
    space={"model.latent_dim": [32, 64, 128, 256, 512]},
    search="grid",
    metric=("eval/recon_mse",),
    mode=("min",),
)

if __name__ == "__main__":
    sys.exit(main(STUDY))
