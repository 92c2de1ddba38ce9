"""What one run is, as typed values: the command line's config, parsed once.

``app/parse.py`` turns the composed Hydra config into a :class:`RunSpec` and nothing
below it reads the config again: every value here is checked, every default applied
(the demo's included) and everything derived (normalised weights, the scales, the
tracking URI) computed once. Plain values only, so every layer may hold one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from style_exp.spec.loss import LossWeights
from style_exp.spec.masks import MaskSpec
from style_exp.spec.search import NO_SEARCH, SearchSettings
from style_exp.spec.settings import (
    ClipSettings,
    InitSettings,
    LoopSettings,
    ModelSettings,
    ThreadSettings,
    VideoSettings,
)

AUTO = "auto"  # tiles=auto: as large as the memory allows


@dataclass(frozen=True)
class Scale:
    """One level of a coarse-to-fine run: the output's longest side there, and its steps."""

    side: int
    iterations: int


@dataclass(frozen=True)
class Inputs:
    """What the run reads: a photo (or a clip) and paintings, or the embedded demo."""

    content: str | None  # None: the demo photo
    styles: tuple[str, ...]  # empty: the demo's paintings
    blend: tuple[float, ...]  # one weight per painting, summing to 1
    demo_styles: int  # how many demo paintings, when there are no files
    clip: ClipSettings | None = None  # set when ``content`` is a video or a frames folder
    masks: MaskSpec | None = None  # spatial control; then ``styles`` holds every region's

    @property
    def demo(self) -> bool:
        return self.content is None


@dataclass(frozen=True)
class Tracking:
    """Where the run is recorded: a resolved MLflow URI (never one with a password)."""

    uri: str
    experiment: str
    # How long a finished run waits for a tracking server that stopped answering to take
    # its queued records (app/outbox.py) before it names them and the command that sends them.
    outage_wait_min: float = 10.0


@dataclass(frozen=True)
class RunSpec:
    """One run, every value checked and every default and derived value settled.

    ``record`` is the resolved config as plain data (the demo's defaults applied): what
    the run logs as its ``config.yaml`` and params and what reproducing it reads back.
    """

    inputs: Inputs
    size: int  # the output's longest side, px
    style_scale: float  # the paintings' longest side = style_scale * size
    scales: tuple[Scale, ...]  # coarse to fine; the last is at ``size``
    iterations: int  # the step budget of a still's scale or a clip's first frame
    loss: LossWeights
    model: ModelSettings
    loop: LoopSettings
    init: InitSettings
    video: VideoSettings | None  # a clip's frame loop
    color: str
    precision: str  # requested: auto, or a compute precision
    tiles: int | str  # px, 0 (never) or AUTO; the preflight decides AUTO's side once
    seed: int
    determinism: bool
    threads: ThreadSettings
    progress: bool  # a progress bar on the terminal
    tracking: Tracking
    resume: bool = False  # in a sweep: skip the run if its sweep has it FINISHED already
    retry_with_tiles: bool = True  # a still too large to fit whole runs in tiles instead
    search: SearchSettings = NO_SEARCH  # an Optuna search's trial, or none
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def style_side(self) -> int:
        """The paintings' longest side at the output's size."""
        return style_side(self.size, self.style_scale)

    def files(self) -> dict[str, str]:
        """Every file the result depends on besides the code and the weights."""
        files = {}
        if self.inputs.content is not None:
            files["content"] = self.inputs.content
            files.update({f"style_{i}": path for i, path in enumerate(self.inputs.styles)})
        if self.inputs.masks is not None:
            files["masks"] = self.inputs.masks.content
        if self.init.kind == "image" and self.init.path:
            files["init"] = self.init.path
        return files


@dataclass(frozen=True)
class Provenance:
    """Where a run came from, as it is recorded: the command line's overrides and tags
    (a sweep's identity and the job's swept values, or the run it reproduces)."""

    overrides: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def style_side(size: int, style_scale: float) -> int:
    """The paintings' longest side for an output whose longest side is ``size``."""
    return max(1, round(size * style_scale))
