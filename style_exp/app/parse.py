"""The composed config, parsed once into a :class:`RunSpec`: every check, every default.

Parse, don't validate: :func:`parse` is the one function that reads config fields.
It checks every value the schema's types cannot (ranges, layer names, list lengths,
the pairing of content and styles, a password in the tracking URI), naming the key
at fault in a :class:`ConfigError`, applies the demo's defaults, and computes every
derived value (normalised weights, the scales, the tracking URI) once. It loads no
image and no TensorFlow: a mistake costs a blink. Below it nothing sees the config.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf

from style_exp.app.schema import default_tracking_uri, settings_from
from style_exp.engine.color import COLOR_MODES
from style_exp.engine.videoio import is_clip
from style_exp.spec.loss import STYLE_STATISTICS, LossSettings, blend_weights
from style_exp.spec.masks import MaskSpec, parse_masks
from style_exp.spec.runspec import AUTO, Inputs, RunSpec, Scale, Tracking
from style_exp.spec.search import SearchSettings
from style_exp.spec.settings import (
    MIN_TILE,
    OPTIMIZERS,
    PRECISIONS,
    ClipSettings,
    ConfigError,
    InitSettings,
    LoopSettings,
    ModelSettings,
    OptimizerSettings,
    StopSettings,
    ThreadSettings,
    VideoSettings,
    check_choice,
    check_non_negative,
    check_positive,
)

# Keys that change no pixel of the result: where it is recorded, what the terminal shows,
# threading, the demo's sizes (already copied into size/iterations when they apply), how a
# sweep resumes, whether a run too large to fit whole is tiled (tiles are exact), and which
# search trial it is.
NO_EFFECT_KEYS = ("tracking", "progress", "threads", "resources", "demo", "sweep", "memory",
                  "search")
DEMO_KEYS = ("size", "iterations")  # taken from ``demo.*`` unless given
MEMORY_RETRIES = ("tiles", "none")


def parse(cfg: DictConfig, overrides: Iterable[str] = ()) -> RunSpec:
    """The run ``cfg`` describes, checked; ``overrides`` are the command line's (the demo's
    sizes apply to the keys it does not set)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config = with_demo_defaults(config, overridden_keys(overrides))
    for key in ("size", "iterations", "style_scale", "tracking.log_every"):
        check_positive(key, _lookup(config, key))
    check_non_negative("tracking.checkpoint_every", config["tracking"]["checkpoint_every"])
    check_non_negative("tracking.outage_wait_min", config["tracking"]["outage_wait_min"])
    loss = settings_from(config["loss"], LossSettings).weights(
        "loss.", named_settings(config["loss"]["style"], STYLE_STATISTICS, "loss.style."))
    model = _settings(config, "model", ModelSettings)
    optimizer = optimizer_settings(config["optimizer"])
    init = _settings(config, "init", InitSettings)
    stop = _settings(config, "stop", StopSettings)
    threads = _settings(config, "threads", ThreadSettings)
    check_choice("precision", config["precision"], PRECISIONS)
    check_choice("color", config["color"], COLOR_MODES)
    check_choice("memory.retry", config["memory"]["retry"], MEMORY_RETRIES)
    check_positive("resources.cpus", config["resources"]["cpus"])
    check_non_negative("resources.gpus", config["resources"]["gpus"])
    scales = scale_plan(config["scales"], config["scale_iterations"], config["size"],
                        config["iterations"])
    tiles = _tiles(config["tiles"])
    if config["determinism"] and config["xla"] and model.pooling == "max":
        raise ConfigError("XLA has no deterministic gradient of max pooling", "xla",
                          "use xla=false, or model.pooling=avg")
    video = _settings(config, "video", VideoSettings)
    clip = _settings(config, "video", ClipSettings)
    inputs = _inputs(config, clip)
    if inputs.clip is not None and config["scales"]:
        raise ConfigError("coarse-to-fine applies to still images", "scales",
                          "for a video use video.first_frame_iterations and video.frame_iterations")
    if inputs.clip is not None and tiles:
        raise ConfigError("tiling applies to still images; video frames are optimised whole",
                          "tiles")
    tracking = config["tracking"]
    resume = config["sweep"]["resume"]
    if not (isinstance(resume, bool) or (isinstance(resume, str) and resume.strip())):
        raise ConfigError(f"must be true, false or a sweep id, got {resume!r}", "sweep.resume")
    return RunSpec(
        inputs=inputs, size=config["size"], style_scale=config["style_scale"], scales=scales,
        iterations=config["iterations"], loss=loss, model=model,
        loop=LoopSettings(optimizer, stop, tracking["log_every"], tracking["checkpoint_every"],
                          config["xla"]),
        init=init, video=video if inputs.clip is not None else None, color=config["color"],
        precision=config["precision"], tiles=tiles, seed=config["seed"],
        determinism=config["determinism"], threads=threads, progress=config["progress"],
        tracking=Tracking(without_credentials(tracking["uri"]) or default_tracking_uri(),
                          tracking["experiment"], tracking["outage_wait_min"]),
        resume=resume is not False, retry_with_tiles=config["memory"]["retry"] == "tiles",
        search=_settings(config, "search", SearchSettings), record=config)


def config_key(record: Mapping[str, Any], input_hashes: Mapping[str, str],
               ignored_video_keys: Iterable[str] = ()) -> str:
    """Identifies runs whose results are interchangeable: the same resolved config (keys
    that change no pixel left out) on the same input files."""
    config = {key: value for key, value in record.items() if key not in NO_EFFECT_KEYS}
    ignored = set(ignored_video_keys)
    config["video"] = {key: value for key, value in record["video"].items()
                       if key not in ignored}
    text = json.dumps({"config": config, "inputs": dict(input_hashes)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def overridden_keys(overrides: Iterable[str]) -> list[str]:
    """The keys a Hydra command line sets (``+size=3`` and ``~size`` name ``size``)."""
    return [item.split("=", 1)[0].lstrip("+~") for item in overrides]


def with_demo_defaults(config: dict[str, Any], overridden: Iterable[str]) -> dict[str, Any]:
    """With no content/style given, run the demo at its small size unless the user chose one."""
    if config["content"] is not None:
        return config
    given = set(overridden)
    return {**config, **{key: config["demo"][key] for key in DEMO_KEYS if key not in given}}


def optimizer_settings(optimizer: Mapping[str, Any]) -> OptimizerSettings:
    """The ``optimizer`` group's values as the settings of the optimiser it names, checked."""
    return named_settings(optimizer, OPTIMIZERS, "optimizer.")


def named_settings(node: Mapping[str, Any], registry: Mapping[str, type], prefix: str) -> Any:
    """A group's values (under ``prefix``) as the settings of the ``name`` they give, checked."""
    if node["name"] not in registry:
        raise ConfigError(f"must be one of {tuple(registry)}, got {node['name']!r}",
                          f"{prefix}name")
    settings = settings_from(node, registry[node["name"]])
    settings.check(prefix)
    return settings


def scale_plan(scales: list[int], scale_iterations: list[int] | None, size: int,
               iterations: int) -> tuple[Scale, ...]:
    """The sizes to optimise at, coarse to fine, with the iterations at each."""
    sides = [int(s) for s in scales] or [int(size)]
    if any(s <= 0 for s in sides) or any(b <= a for a, b in itertools.pairwise(sides)):
        raise ConfigError(f"must be positive and increasing, got {sides}", "scales")
    if sides[-1] != size:
        raise ConfigError(f"must end at size={size}, got {sides}", "scales")
    if scale_iterations is None:
        return tuple(Scale(side, int(iterations)) for side in sides)
    counts = [int(n) for n in scale_iterations]
    if len(counts) != len(sides) or any(n <= 0 for n in counts):
        raise ConfigError(f"must give a positive count for each of the {len(sides)} scales, "
                          f"got {counts}", "scale_iterations")
    return tuple(Scale(side, count) for side, count in zip(sides, counts, strict=True))


def style_paths(style: Any) -> list[str]:
    """``style`` as a list of paths, whether it was given as one path or a list."""
    if style is None:
        return []
    if isinstance(style, (list, tuple)):
        return [str(path) for path in style]
    return [str(style)]


def without_credentials(uri: str | None) -> str | None:
    """Refuse a tracking URI with a password in it: it would be logged as a param.

    Credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD (``DIR/client.env``).
    """
    if uri and urlsplit(uri).password is not None:
        raise ConfigError("must not contain a password: set MLFLOW_TRACKING_USERNAME and "
                          "MLFLOW_TRACKING_PASSWORD instead", "tracking.uri")
    return uri


def _inputs(config: Mapping[str, Any], clip: ClipSettings) -> Inputs:
    styles = style_paths(config["style"])
    content = config["content"]
    named = [("content", content), *((f"style[{i}]", p) for i, p in enumerate(styles))]
    for key, path in named:
        if path is not None and not str(path).strip():
            raise ConfigError("empty file name", key)
    masks, every_style = parse_masks(config["masks"], styles, config["style_weights"])
    if masks is not None and content is None:
        raise ConfigError("masks need a photo", "content", "give content=FILE")
    if (content is None) != (not every_style):
        raise ConfigError("give both content=FILE and style=FILE, or neither for the demo",
                          "content" if styles else "style")
    demo_styles = config["demo"]["styles"]
    if demo_styles not in (1, 2):
        raise ConfigError(f"must be 1 or 2, got {demo_styles}", "demo.styles")
    if masks is None:
        blend = blend_weights(config["style_weights"], len(styles) if styles else demo_styles)
    else:
        blend = _regions_blend(masks, len(every_style))
    return Inputs(content, every_style, blend, demo_styles,
                  clip if content is not None and is_clip(content) else None, masks)


def _regions_blend(masks: MaskSpec, count: int) -> tuple[float, ...]:
    """What the quality distances measure a masked run against: the styled regions' blends,
    each region counted once (their areas are not known here)."""
    styled = [region for region in masks.regions if region.weight > 0] or masks.regions
    weights = [0.0] * count
    for region in styled:
        for index, b in zip(region.styles, region.blend, strict=True):
            weights[index] += b / len(styled)
    return tuple(weights)


def _tiles(tiles: Any) -> int | str:
    if tiles == AUTO or tiles == 0 or (isinstance(tiles, int) and tiles >= MIN_TILE):
        return tiles
    raise ConfigError(f"must be 0 (off), auto or a side of at least {MIN_TILE} px, "
                      f"got {tiles!r}", "tiles")


def _settings(config: Mapping[str, Any], key: str, settings: type) -> Any:
    """The settings class's fields from the config's ``key`` group, checked under ``key.``."""
    value = settings_from(config[key], settings)
    value.check(f"{key}.")
    return value


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config
