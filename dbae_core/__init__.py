"""DBAE core: the Diffusion Bridge AutoEncoder model, its samplers, data and metrics, in PyTorch only.

No Ray, MLflow or YAML imports here: this package runs wherever torch runs.
"""

__version__ = "0.1.0"
