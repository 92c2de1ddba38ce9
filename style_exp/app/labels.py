"""What runs and sweeps are called, in the dashboard, on the console and on compare sheets.

A reviewer scanning a table of runs needs to see at a glance what each run is (which
photo in which style) and what sets it apart from its neighbours (the swept values),
so names are made from those, not from MLflow's random words. Plain text only: no
MLflow, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from style_exp.app.schema import style_paths
from style_exp.engine.demo import DEMO_PHOTO, PAINTING_NAMES

SEPARATOR = " · "


def input_names(content: str | None, style: Any, demo_styles: int) -> tuple[str, list[str]]:
    """Short names of the photo and the paintings: file stems, or the demo's names."""
    if content is None:
        return Path(DEMO_PHOTO).stem, list(PAINTING_NAMES[:demo_styles])
    return Path(content).stem, [Path(path).stem for path in style_paths(style)]


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each config key by its last part (``loss.style_weight`` -> ``style_weight``),
    unless two keys would then read the same."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key
            for key, short in zip(keys, last, strict=True)}


def swept_text(values: Mapping[str, str]) -> str:
    """``style_weight=5000, seed=1``: the values that set one run of a sweep apart."""
    names = short_keys(list(values))
    return ", ".join(f"{names[key]}={value}" for key, value in values.items())


def run_name(content: str | None, style: Any, demo_styles: int,
             swept: Mapping[str, str] | None = None) -> str:
    """``tubingen x starry_night``, and in a sweep ``... · style_weight=5000``."""
    photo, paintings = input_names(content, style, demo_styles)
    name = f"{photo} x {'+'.join(paintings)}"
    return f"{name}{SEPARATOR}{swept_text(swept)}" if swept else name


def run_note(cfg: DictConfig, blend: list[float], size: tuple[int, int], steps: int,
             quality: Mapping[str, float], seconds: float) -> str:
    """The run's description (Markdown): what went in, how it was made, how it came out."""
    photo, paintings = input_names(cfg.content, cfg.style, cfg.demo.styles)
    styles = " + ".join(f"{name} ({weight:.2g})" if len(paintings) > 1 else name
                        for name, weight in zip(paintings, blend, strict=True))
    loss = cfg.loss
    lines = [f"**{photo}** in the style of **{styles}**",
             f"{size[0]}x{size[1]} px{SEPARATOR}{cfg.optimizer.name}, init {cfg.init.kind}, "
             f"{steps} steps{SEPARATOR}{seconds:.0f} s",
             f"weights: content {loss.content_weight:g}, style {loss.style_weight:g}, "
             f"tv {loss.tv_weight:g}"]
    if quality:
        lines.append(f"{quality_text(quality)} (0 = the photo's content / the style exactly)")
    return "  \n".join(lines)


def quality_text(metrics: Mapping[str, float]) -> str:
    """``content distance 0.412 · style distance 0.118``, from the ``quality/*`` metrics."""
    return SEPARATOR.join(f"{name.removeprefix('quality/').replace('_', ' ')} {value:.3f}"
                          for name, value in metrics.items() if name.startswith("quality/"))
