"""Typed run configuration: YAML loading, validation with one-line messages, CLI overrides.

``--config`` takes a file or the bare name of a config shipped in the package
(``edgempi/configs/NAME.yaml``: ``vgg16``, ``resnet34_compact``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path

import yaml

from .errors import EdgempiError

OBJECTIVES = ("latency", "throughput")  # what the ranks' layout minimises: one image's time, or images per second


class ConfigError(EdgempiError):
    """A configuration that cannot be used."""


@dataclass(frozen=True)
class Config:
    model: str = "vgg16"
    reduction: int = 4  # channel reduction ratio of the compact variants
    in_channels: int = 1
    num_classes: int = 6
    seed: int = 0
    data: str = "data/neu-synth.h5"
    weights: str | None = None
    batch_size: int = 1
    limit: int | None = None
    mean: float = 0.5
    std: float = 0.25
    threads: int = 1
    strategy: str = "optimal"
    fusion: str = "dp"
    axis: str = "auto"  # blocks divided by rows, or by channels where a stage can: auto | rows | channels
    min_rows: int = 1
    poll_us: int = 0  # 0: MPI's own (spinning) waits; else test and sleep this long between tests
    overlap_halo: bool = True  # compute a block's interior rows while its halo is in flight
    adapt: bool = True  # re-plan during the job when a rank's measured speed changes (one group)
    adapt_margin: float = 0.25  # switch when the plan in force is predicted this much slower than a fresh one
    classifier_rank: int = 0
    profile: str | None = None
    warmup_batches: int = 1
    calibration_repeats: int = 3
    objective: str | None = None  # latency | throughput; None: the entry point's (infer latency, evaluate throughput)
    max_latency_ms: float | None = None  # throughput: only layouts whose groups' latency stays under this
    layout: str | None = None  # throughput: these groups of ranks (0,1/2/3) instead of the planner's choice


_TYPES = {
    "bool": bool,
    "int": int,
    "float": (int, float),
    "str": str,
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
}
_POSITIVE = ("reduction", "in_channels", "num_classes", "batch_size", "threads", "calibration_repeats", "min_rows")


def _check(config: Config) -> Config:
    for f in fields(Config):
        value = getattr(config, f.name)
        if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, _TYPES[f.type]):
            raise ConfigError(f"config '{f.name}' must be {f.type.replace(' | None', ' or null')}, not {value!r}")
    for name in _POSITIVE:
        if getattr(config, name) < 1:
            raise ConfigError(f"config '{name}' must be at least 1, not {getattr(config, name)}")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"config 'limit' must be at least 1, not {config.limit}")
    if config.std <= 0:
        raise ConfigError(f"config 'std' must be positive, not {config.std}")
    if config.poll_us < 0:
        raise ConfigError("config 'poll_us' must not be negative")
    if config.objective is not None and config.objective not in OBJECTIVES:
        raise ConfigError(f"config 'objective' must be one of {', '.join(OBJECTIVES)}, not {config.objective!r}")
    if not 0 < config.adapt_margin < 10:
        raise ConfigError(f"config 'adapt_margin' must be above 0 and below 10, not {config.adapt_margin}")
    if config.max_latency_ms is not None and config.max_latency_ms <= 0:
        raise ConfigError("config 'max_latency_ms' must be positive")
    if config.warmup_batches < 0:
        raise ConfigError("config 'warmup_batches' must not be negative")
    return config


def packaged(folder: str) -> dict[str, Path]:
    """The YAML files shipped in the package's ``folder`` (``configs``, ``clusters``) by bare name."""
    root = resources.files(__package__).joinpath(folder)
    return {Path(f.name).stem: Path(str(f)) for f in root.iterdir() if f.name.endswith(".yaml")}


def find_yaml(path: str | Path, folder: str, kind: str, error: type[Exception]) -> Path:
    """``path`` when it is a file, else the packaged ``folder/NAME.yaml`` of a bare name (no
    directory, no suffix); one line naming the packaged ones when it is neither."""
    if Path(path).is_file():
        return Path(path)
    known = packaged(folder)
    if str(path) in known:
        return known[str(path)]
    raise error(
        f"{kind} file '{path}' does not exist and is no packaged {kind} name (packaged: {', '.join(sorted(known))})"
    )


def load_config(path: str | Path | None, **overrides) -> Config:
    """Read a YAML config (a file, a packaged name, or the defaults when ``path`` is None) and
    apply non-None overrides."""
    values: dict = {}
    if path is not None:
        path = find_yaml(path, "configs", "config", ConfigError)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"config file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
            ) from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of settings")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _check(replace(Config(), **values))
