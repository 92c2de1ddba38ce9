"""Spatial control (``masks.*``): a label image and a style, blend and weight per region.

    masks.content=labels.png
    'masks.regions=[{color:[255,0,0],style:a.jpg},{color:[0,0,255],style:b.jpg,weight:0.5}]'

Each region is one colour of the label image; its keys are ``color`` (RGB, 0..255),
``style`` (a path or a list; default: the run's ``style``), ``style_weights`` (its blend;
default equal, or the run's when it takes the run's styles) and ``weight`` (default 1;
0 keeps the photo there). ``masks.feather`` (px) softens the regions' edges. For a clip,
``masks.content`` may be a folder with a label image per frame. Checked
here (keys, values) and in the preflight (the label file, its colours); the engine's
``masks.py`` makes the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from style_exp.spec.loss import blend_weights
from style_exp.spec.settings import ConfigError, check_non_negative

REGION_KEYS = ("color", "style", "style_weights", "weight")


@dataclass(frozen=True)
class RegionSpec:
    """One region: its label colour, its styles (indices into the run's style list),
    their blend and the region's weight."""

    color: tuple[int, int, int]
    styles: tuple[int, ...]
    blend: tuple[float, ...]
    weight: float


@dataclass(frozen=True)
class MaskSpec:
    """The label image (for a photo or a whole clip; a clip's folder: one per frame) and
    its regions."""

    content: str
    regions: tuple[RegionSpec, ...]
    feather: float = 0.0  # px: the Gaussian blur's sigma on the regions' edges


def parse_masks(masks: Mapping[str, Any], styles: Sequence[str],
                blend: Sequence[float] | None) -> tuple[MaskSpec | None, tuple[str, ...]]:
    """The ``masks`` config as a :class:`MaskSpec` (None without ``masks.content``) and every
    style path the run reads: the run's ``styles`` then the regions' own, each once.

    ``blend`` is the run's ``style_weights`` as given (None: equal).
    """
    if not masks["content"]:
        if masks["regions"]:
            raise ConfigError("regions need a label image", "masks.content",
                              "give masks.content=LABELS.png")
        return None, tuple(styles)
    check_non_negative("masks.feather", masks["feather"])
    regions = masks["regions"]
    if not regions:
        raise ConfigError("a label image needs its regions", "masks.regions",
                          "e.g. 'masks.regions=[{color:[255,0,0],style:a.jpg}]'")
    paths = list(styles)
    parsed = []
    for index, region in enumerate(regions):
        key = f"masks.regions[{index}]"
        if not isinstance(region, Mapping):
            raise ConfigError(f"must be a mapping like {{color:[255,0,0],style:a.jpg}}, got "
                              f"{region!r}", key)
        unknown = sorted(set(region) - set(REGION_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; a region has {REGION_KEYS}", key)
        own = _paths(region.get("style"), f"{key}.style")
        if not own and not styles:
            raise ConfigError("has no style, and there is no run style to fall back on",
                              f"{key}.style")
        region_blend = region.get("style_weights", None if own else blend)
        weights = _blend(region_blend, len(own or styles), f"{key}.style_weights")
        for path in own:
            if path not in paths:
                paths.append(path)
        weight = region.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"must be a non-negative number, got {weight!r}", f"{key}.weight")
        parsed.append(RegionSpec(_color(region.get("color"), f"{key}.color"),
                                 tuple(paths.index(path) for path in own or styles), weights,
                                 float(weight)))
    colors = [region.color for region in parsed]
    if len(set(colors)) != len(colors):
        raise ConfigError(f"two regions have the same colour: {colors}", "masks.regions")
    return MaskSpec(str(masks["content"]), tuple(parsed), float(masks["feather"])), tuple(paths)


def _paths(style: Any, key: str) -> list[str]:
    paths = [] if style is None else [style] if isinstance(style, str) else list(style)
    if any(not str(path).strip() for path in paths):
        raise ConfigError("empty file name", key)
    return [str(path) for path in paths]


def _blend(weights: Sequence[float] | None, count: int, key: str) -> tuple[float, ...]:
    try:
        return blend_weights(weights, count)
    except ConfigError as error:
        raise ConfigError(error.what, key) from error


def _color(color: Any, key: str) -> tuple[int, int, int]:
    if (not isinstance(color, Sequence) or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
        raise ConfigError(f"must be three integers 0..255 like [255,0,0], got {color!r}", key)
    return (int(color[0]), int(color[1]), int(color[2]))
