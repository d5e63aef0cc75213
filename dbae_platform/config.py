"""Typed run configuration: preset YAML → dotted overrides → one frozen, validated `Config` (architecture.md, step 1).

Every invalid value stops here with a one-line `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbae_core.autoencoders import AutoencoderConfig, diffae_config
from dbae_core.bridges import make_bridge
from dbae_core.data import DATASETS, dataset_channels
from dbae_core.model import DBAEConfig
from dbae_core.networks import DecoderConfig, EncoderConfig, UNetConfig
from dbae_core.samplers import METHODS as METHODS_ODE
from dbae_core.training import TrainConfig
from dbae_platform.errors import ConfigError
from dbae_platform.storage import default_storage_path

__all__ = ["ConfigError", "Config", "DataConfig", "ModelConfig", "ObjectiveConfig", "EvalConfig", "TrackingConfig",
           "ResourcesConfig", "CONFIG_DIR", "METHODS", "load_config", "parse_overrides", "build", "flatten",
           "config_diff", "RESUMABLE_KEYS"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
METHODS = ("dbae", "dbae_d", "diffae")  # stochastic encoder + entropy term | deterministic encoder | DiffAE baseline
SUITES = ("recon", "probe", "disentangle", "generation")
# Keys that may change between reruns of one run (the rerun resumes); any other change needs a new run name.
# The execution settings (dbae_core.fastpath) change speed and memory, not the model, so they are among them.
RESUMABLE_KEYS = ("train.steps", "train.lr", "train.log_every", "train.ckpt_every", "train.image_every",
                  "train.keep_checkpoints", "train.progress", "train.num_workers", "train.grad_clip", "eval.",
                  "tracking.", "resources.", "train.precision", "train.channels_last", "train.compile",
                  "train.fused_optimizer", "train.foreach_ema", "train.attention", "train.activation_checkpointing",
                  "train.reference")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"
    root: str | None = None  # directory (or Parquet shard URI) of the dataset on disk; unused by procedural shapes
    size: int = 32  # image side in pixels (a power of two)
    train_images: int | None = None  # shapes: how many procedural images; other datasets: the first N (None: all)
    flip: bool = False  # random horizontal flips of training images


@dataclass(frozen=True)
class ModelConfig:
    method: str = "dbae"
    latent_dim: int = 64
    unet: UNetConfig = field(default_factory=UNetConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass(frozen=True)
class ObjectiveConfig:
    sde: str = "vp"
    bridge: dict[str, float] = field(default_factory=dict)  # schedule parameters, e.g. {beta_min: 0.1, beta_d: 2.0}
    precond: str = "bridge"
    sigma_data: float = 0.5
    sigma_data_end: float = 0.5
    cov: float = 0.0
    entropy_weight: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    suites: tuple[str, ...] = ("recon",)
    n: int = 256  # held-out images per suite
    sampler_steps: int = 20
    sampler: str = "euler"  # the reverse-bridge ODE solver of DBAE decoding: "euler" or "heun" (DiffAE: DDIM)
    churn: float = 0.0  # fraction of each step taken as an SDE step (0: deterministic ODE)
    precision: str = "auto"  # autocast of encoding/decoding: "auto" (bf16 on CUDA), "bf16" or "fp32"
    batch_size: int = 64
    val_n: int = 16  # held-out images reconstructed at every checkpoint: val/recon_mse (0: off)
    sample_z: bool = False  # evaluate with a draw z ~ q(z|x0) instead of the posterior mean (stochastic encoder only)
    prior_steps: int = 2000  # training steps of the latent DDPM prior behind eval/fid etc. (the generation suite)
    prior_images: int | None = None  # training images whose latents train that prior (null: all of them)
    gaussian_baseline: bool = True  # also report z ~ a Gaussian fitted to the training latents as eval/gaussian/*


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<runs_dir>/mlflow.db
    experiment: str | None = None  # None: dbae/<name>
    runs_dir: str = field(default_factory=default_storage_path)
    # CPU/GPU utilisation and memory of every worker as MLflow system metrics (system/*; with several workers
    # system/rank<i>/*); None: on when the run uses GPUs, off on CPU
    system_metrics: bool | None = None
    system_metrics_interval: float = 10.0  # seconds between samples


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 1  # data-parallel training workers (one process each)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used only with use_gpu
    max_failures: int = 2  # worker-group restarts from the newest checkpoint before the run fails


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), without the derived network fields: what config.yaml holds."""
        d = _plain(dataclasses.asdict(self))
        for part in ("unet", "encoder", "decoder"):
            d["model"][part] = {k: v for k, v in d["model"][part].items() if k not in _DERIVED}
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @property
    def channels(self) -> int:
        return dataset_channels(self.data.dataset, self.data.root)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or f"dbae/{self.name}"

    def model_config(self) -> AutoencoderConfig:
        """The core model config: network sizes from `model`, image size/channels from `data`, SDE from `objective`.

        DBAEConfig for dbae/dbae_d; for diffae the DiffAEConfig with the same encoder and UNet sizes (§7).
        """
        size, ch = self.data.size, self.channels
        m, o = self.model, self.objective
        cfg = DBAEConfig(
            image_size=size, latent_dim=m.latent_dim,
            encoder=dataclasses.replace(m.encoder, image_size=size, channels=ch, stochastic=m.method == "dbae"),
            decoder=dataclasses.replace(m.decoder, image_size=size, channels=ch),
            unet=dataclasses.replace(m.unet, image_size=size, channels=ch),
            sde=o.sde, bridge_params=dict(o.bridge), precond=o.precond, sigma_data=o.sigma_data,
            sigma_data_end=o.sigma_data_end, cov=o.cov, entropy_weight=o.entropy_weight)
        return diffae_config(cfg) if m.method == "diffae" else cfg


# Fields of the core network configs that the platform derives (so YAML must not set them).
_DERIVED = {"image_size": "data.size", "channels": "data.dataset", "stochastic": "model.method",
            "concat_endpoint": "model.method", "latent_conditioning": "model.method"}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


# -- building typed dataclasses from plain data -----------------------------------------------
def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        return "a mapping of names to numbers"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected a mapping of {tp.__name__} settings")
        return build(tp, value, key)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp in ok:
        if not ok[tp](value):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
        return float(value) if tp is float else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} needs exactly {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from `data`, type-checked key by key; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _DERIVED]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key in _DERIVED and key not in names:
            raise ConfigError(f"{path} is set from {_DERIVED[key]}: remove it and set {_DERIVED[key]} instead")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"in {prefix}" if prefix else "at the top level"
            raise ConfigError(f"unknown key {path!r}: {hint}allowed {where}: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a core dataclass's own check
        raise ConfigError(str(err)) from None


# -- validation ---------------------------------------------------------------------------------
def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _positive_ints(v: tuple[int, ...]) -> bool:
    return len(v) > 0 and all(x > 0 for x in v)


def _rules(cfg: Config) -> list[tuple[str, Any, bool, str]]:
    """(key, value, ok, what is allowed) for every constrained setting."""
    d, m, o, t, e, r = cfg.data, cfg.model, cfg.objective, cfg.train, cfg.eval, cfg.resources
    rules = [
        ("name", cfg.name, bool(cfg.name) and "/" not in cfg.name and cfg.name.strip() == cfg.name,
         "a non-empty name without '/' or surrounding spaces"),
        ("data.dataset", d.dataset, d.dataset in DATASETS, f"one of {sorted(DATASETS)}"),
        ("data.size", d.size, _power_of_two(d.size) and 16 <= d.size <= 256, "a power of two from 16 to 256"),
        ("data.train_images", d.train_images, d.train_images is None or d.train_images > 0,
         "a positive integer or null"),
        ("data.flip", d.flip, not (d.flip and d.dataset == "shapes"),
         "false for shapes (a flip would contradict its position and rotation factors)"),
        ("model.method", m.method, m.method in METHODS, f"one of {METHODS}"),
        ("model.latent_dim", m.latent_dim, m.latent_dim > 0, "a positive integer"),
        ("objective.sde", o.sde, o.sde in ("vp", "ve"), "'vp' or 've'"),
        ("objective.precond", o.precond, o.precond in ("bridge", "none"), "'bridge' or 'none'"),
        ("objective.sigma_data", o.sigma_data, o.sigma_data > 0, "a positive number"),
        ("objective.sigma_data_end", o.sigma_data_end, o.sigma_data_end > 0,
         "a positive number, e.g. 0.5 (0 makes c_in = A^(-1/2) grow without bound as t → T)"),
        ("objective.entropy_weight", o.entropy_weight, o.entropy_weight >= 0, "a number >= 0"),
        ("objective.entropy_weight", o.entropy_weight, o.entropy_weight == 0 or m.method == "dbae",
         f"0 with model.method={m.method} (its encoder is deterministic); use model.method=dbae for the entropy term"),
        ("model.decoder.norm", m.decoder.norm, m.decoder.norm in ("batch", "group"), "'batch' or 'group'"),
        ("train.betas", t.betas, all(0 <= b < 1 for b in t.betas), "two numbers in [0, 1)"),
        ("eval.suites", e.suites, all(s in SUITES for s in e.suites), f"a list drawn from {SUITES}"),
        ("eval.n", e.n, e.n > 0, "a positive integer"),
        ("eval.sampler_steps", e.sampler_steps, e.sampler_steps > 0, "a positive integer"),
        ("eval.sampler", e.sampler, e.sampler in METHODS_ODE, f"one of {METHODS_ODE}"),
        ("eval.churn", e.churn, 0 <= e.churn < 1, "a number in [0, 1)"),
        ("eval.precision", e.precision, e.precision in ("auto", "bf16", "fp32"), "'auto', 'bf16' or 'fp32'"),
        ("eval.batch_size", e.batch_size, e.batch_size > 0, "a positive integer"),
        ("eval.val_n", e.val_n, e.val_n >= 0, "an integer >= 0 (0: no validation at checkpoints)"),
        ("eval.sample_z", e.sample_z, not e.sample_z or m.method == "dbae",
         f"false with model.method={m.method} (its encoder is deterministic: z has no distribution to sample)"),
        ("eval.prior_steps", e.prior_steps, e.prior_steps > 0, "a positive integer"),
        ("eval.prior_images", e.prior_images, e.prior_images is None or e.prior_images > 1,
         "an integer >= 2 or null (all training images)"),
        ("tracking.system_metrics_interval", cfg.tracking.system_metrics_interval,
         cfg.tracking.system_metrics_interval > 0, "a positive number of seconds"),
        ("resources.num_workers", r.num_workers, r.num_workers > 0, "a positive integer"),
        ("resources.cpus_per_worker", r.cpus_per_worker, r.cpus_per_worker > 0, "a positive number"),
        ("resources.gpus_per_worker", r.gpus_per_worker, r.gpus_per_worker > 0, "a positive number"),
        ("resources.max_failures", r.max_failures, r.max_failures >= -1, "an integer >= 0 (-1: retry forever)"),
    ]
    for part in ("unet", "encoder"):
        net = getattr(m, part)
        rules += [
            (f"model.{part}.base_channels", net.base_channels, net.base_channels > 0, "a positive integer"),
            (f"model.{part}.channel_mult", net.channel_mult, _positive_ints(net.channel_mult),
             "a non-empty list of positive integers"),
            (f"model.{part}.num_res_blocks", net.num_res_blocks, net.num_res_blocks > 0, "a positive integer"),
            (f"model.{part}.attention_resolutions", net.attention_resolutions,
             all(_power_of_two(a) and a <= d.size for a in net.attention_resolutions),
             f"powers of two no larger than data.size={d.size}"),
        ]
    rules += [
        ("model.unet.head_channels", m.unet.head_channels, m.unet.head_channels > 0, "a positive integer"),
        ("model.unet.dropout", m.unet.dropout, 0 <= m.unet.dropout < 1, "a number in [0, 1)"),
        ("model.unet.channel_mult", m.unet.channel_mult, d.size >> max(0, len(m.unet.channel_mult) - 1) >= 4,
         f"at most {max(1, (d.size // 4).bit_length())} levels for data.size={d.size} (the lowest is ≥ 4 px)"),
        ("model.encoder.channel_mult", m.encoder.channel_mult, d.size >> max(0, len(m.encoder.channel_mult) - 1) >= 2,
         f"at most {max(1, (d.size // 2).bit_length())} levels for data.size={d.size} (the lowest is ≥ 2 px)"),
        ("model.encoder.num_heads", m.encoder.num_heads, m.encoder.num_heads > 0, "a positive integer"),
        ("model.decoder.ngf", m.decoder.ngf, m.decoder.ngf > 0, "a positive integer"),
    ]
    return rules


def validate(cfg: Config) -> Config:
    """Raise ConfigError for the first invalid value; return `cfg` unchanged otherwise."""
    for key, value, ok, allowed in _rules(cfg):
        if not ok:
            raise ConfigError(f"{key}={_show(value)} is invalid: allowed is {allowed}")
    try:
        make_bridge(cfg.objective.sde, **cfg.objective.bridge)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"objective.bridge={cfg.objective.bridge} is invalid for sde={cfg.objective.sde}: "
                          f"{err}") from None
    try:
        cfg.model_config()
    except FileNotFoundError as err:  # parquet shards: the channel count is read from them
        raise ConfigError(f"data.root={cfg.data.root}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    return cfg


def _show(v: Any) -> str:
    return yaml.safe_dump(_plain(v), default_flow_style=True).strip().removesuffix("\n...").removesuffix(" ...")


# -- presets, files and overrides -----------------------------------------------------------------
def presets() -> list[str]:
    """Names of the YAML presets shipped in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: fix the syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (data, model, train, ...), "
                          f"not a {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["model.latent_dim=64", "train.betas=[0.9,0.99]"]` → {"model.latent_dim": 64, ...} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not KEY=VALUE with a dotted key, e.g. model.latent_dim=64")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return out


def _apply(data: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    data = _plain(data)
    for key, value in dotted.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise ConfigError(f"override {key}: {part} is a value, not a section")
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(source: str | Path | dict[str, Any] = "tiny", overrides: list[str] | dict[str, Any] | None = None,
                ) -> Config:
    """A validated Config from a preset name (configs/<name>.yaml), a YAML path or a dict, plus dotted overrides."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if path.suffix not in (".yaml", ".yml") and not path.exists():
            if str(source) not in presets():
                raise ConfigError(f"config {source!r} is neither a YAML file nor a preset: presets are {presets()}")
            path = CONFIG_DIR / f"{source}.yaml"
        elif not path.is_file():
            raise ConfigError(f"config file {path} does not exist: pass a YAML file or a preset name ({presets()})")
        data = _read_yaml(path)
        data.setdefault("name", path.stem)
    dotted = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    cfg = build(Config, _apply(data, dotted))
    return validate(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → dotted keys: {"model": {"latent_dim": 64}} → {"model.latent_dim": 64}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: {key: (old, new)}."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
