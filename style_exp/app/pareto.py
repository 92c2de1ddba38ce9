"""The content/style Pareto front of a set of runs, drawn with each front run's image.

A run is dominated when another is at least as close on both quality distances and
closer on one; the front is what a search (or a sweep) offers to choose from. Runs a
search's pruner stopped are drawn but never on the front: their distances are those of
a run cut short.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE

PRUNED_TAG, TRIAL_TAG = "style_exp.pruned", "style_exp.trial"  # as app/study.py tags them
LABEL_CHARS = 30
THUMBNAIL = 40  # px, each front run's image on the plot
IMAGES_SHOWN = 8  # front runs drawn with their image and label; the others as points


class Measured(Protocol):  # compare.Entry
    run: Any  # an MLflow Run
    image: np.ndarray

    @property
    def quality(self) -> dict[str, float]: ...

    @property
    def label(self) -> str: ...


def non_dominated(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each point (both coordinates minimised), whether no other point dominates it."""
    return [not any(ox <= x and oy <= y and (ox, oy) != (x, y) for ox, oy in points)
            for x, y in points]


def _label(entry: Measured) -> str:
    """A search's trial by its number; another run by its swept values, cut short."""
    trial = entry.run.data.tags.get(TRIAL_TAG)
    return f"trial {trial}" if trial is not None else entry.label[:LABEL_CHARS]


def shown(front: Sequence[Any]) -> list[Any]:
    """At most :data:`IMAGES_SHOWN` points of the front, evenly along it, both ends kept: a
    search's front may hold most of its trials, whose images would cover each other."""
    if len(front) <= IMAGES_SHOWN:
        return list(front)
    picks = np.linspace(0, len(front) - 1, IMAGES_SHOWN).round().astype(int)
    return [front[i] for i in picks]


def pareto_plot(entries: Sequence[Measured], path: Path) -> Path | None:
    """Style against content distance: the front in colour, joined, each point with its
    image; dominated runs grey, pruned ones grey crosses. None with fewer than 2 runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    measured = [e for e in entries if {CONTENT_DISTANCE, STYLE_DISTANCE} <= set(e.quality)]
    if len(measured) < 2:
        return None
    pruned = [e.run.data.tags.get(PRUNED_TAG) == "true" for e in measured]
    kept = [e for e, cut in zip(measured, pruned, strict=True) if not cut]
    points = [(e.quality[CONTENT_DISTANCE], e.quality[STYLE_DISTANCE]) for e in kept]
    front = sorted(((p, e) for p, e, best in zip(points, kept, non_dominated(points),
                                                 strict=True) if best), key=lambda pair: pair[0])
    figure, axes = plt.subplots(figsize=(7, 5.5), dpi=100)
    behind = [p for p, best in zip(points, non_dominated(points), strict=True) if not best]
    if behind:
        axes.scatter(*zip(*behind, strict=True), color="0.7", label="dominated")
    cut = [(e.quality[CONTENT_DISTANCE], e.quality[STYLE_DISTANCE])
           for e, c in zip(measured, pruned, strict=True) if c]
    if cut:
        axes.scatter(*zip(*cut, strict=True), color="0.7", marker="x", label="pruned")
    xs, ys = zip(*(p for p, _ in front), strict=True)
    axes.plot(xs, ys, "o-", color="tab:red", label="Pareto front", zorder=3)
    for (x, y), entry in shown(front):
        image = OffsetImage(entry.image.astype(np.uint8), zoom=THUMBNAIL / max(entry.image.shape))
        axes.add_artist(AnnotationBbox(image, (x, y), xybox=(30, 30), boxcoords="offset points",
                                       pad=0.1, arrowprops={"arrowstyle": "-", "color": "0.5"}))
        axes.annotate(_label(entry), (x, y), textcoords="offset points", xytext=(5, -10),
                      fontsize=7)
    axes.set_xlabel("content distance (to the photo, relu4_2)")
    axes.set_ylabel("style distance (to the styles' Grams, relu1_1..5_1)")
    pictured = f" ({IMAGES_SHOWN} with images)" if len(front) > IMAGES_SHOWN else ""
    axes.set_title(f"Pareto front: {len(front)} of {len(measured)} runs{pictured}; "
                   "lower is closer")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    axes.margins(0.15)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
