"""What runs and sweeps are called, in the dashboard, on the console and on compare sheets.

A reviewer scanning a table of runs needs to see at a glance what each run is (which
photo in which style) and what sets it apart from its neighbours (the swept values),
so names are made from those, not from MLflow's random words. Plain text only: no
MLflow, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from style_exp.engine.demo import DEMO_PHOTO, PAINTING_NAMES
from style_exp.spec.runspec import Inputs, RunSpec

SEPARATOR = " · "


def input_names(inputs: Inputs) -> tuple[str, list[str]]:
    """Short names of the photo and the paintings: file stems, or the demo's names."""
    if inputs.content is None:
        return Path(DEMO_PHOTO).stem, list(PAINTING_NAMES[:inputs.demo_styles])
    return Path(inputs.content).stem, [Path(path).stem for path in inputs.styles]


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each config key by its last part (``loss.style_weight`` -> ``style_weight``),
    unless two keys would then read the same."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key
            for key, short in zip(keys, last, strict=True)}


def swept_text(values: Mapping[str, str]) -> str:
    """``style_weight=5000, seed=1``: the values that set one run of a sweep apart."""
    names = short_keys(list(values))
    return ", ".join(f"{names[key]}={_short(value)}" for key, value in values.items())


def _short(value: str) -> str:
    """A search's sampled float to 4 significant digits (``0.02511949870636483`` ->
    ``0.02512``): the name tells runs apart, the run's params keep the exact value."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 and "." in value else value


def run_name(inputs: Inputs, swept: Mapping[str, str] | None = None) -> str:
    """``tubingen x starry_night``, and in a sweep ``... · style_weight=5000``."""
    photo, paintings = input_names(inputs)
    name = f"{photo} x {'+'.join(paintings)}"
    swept = {key: value for key, value in (swept or {}).items()
             if key != "content"}  # a batch's photo: the name starts with it
    return f"{name}{SEPARATOR}{swept_text(swept)}" if swept else name


def run_note(spec: RunSpec, size: tuple[int, int], steps: int, quality: Mapping[str, float],
             seconds: float) -> str:
    """The run's description (Markdown): what went in, how it was made, how it came out."""
    photo, paintings = input_names(spec.inputs)
    styles = " + ".join(f"{name} ({weight:.2g})" if len(paintings) > 1 else name
                        for name, weight in zip(paintings, spec.inputs.blend, strict=True))
    loss = spec.loss
    lines = [f"**{photo}** in the style of **{styles}**",
             f"{size[0]}x{size[1]} px{SEPARATOR}{spec.loop.optimizer.name}, "
             f"init {spec.init.kind}, {steps} steps{SEPARATOR}{seconds:.0f} s",
             f"weights: content {loss.content:g}, style {loss.style:g}, tv {loss.tv:g}"]
    if quality:
        lines.append(f"{quality_text(quality)} (0 = the photo's content / the style exactly)")
    return "  \n".join(lines)


def quality_text(metrics: Mapping[str, float]) -> str:
    """``content distance 0.412 · style distance 0.118``, from the ``quality/*`` metrics."""
    return SEPARATOR.join(f"{name.removeprefix('quality/').replace('_', ' ')} {value:.3f}"
                          for name, value in metrics.items() if name.startswith("quality/"))
