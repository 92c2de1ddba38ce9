"""A planned run made ready: its images loaded, the problem, the start image, the network.

The plan (``preflight.Plan``) says what to do; this loads and builds it, knowing
nothing of MLflow, so the tracked run (``execute.py``) only records and runs, and
tests can build a job without a tracking store. A :class:`Job` is also what a clip's
frame loop asks for each frame's problem, start and output (``engine.video.FrameMaker``).

The jobs of a sweep that share a process (the basic launcher's, or a joblib or Ray
worker's) share what does not depend on their settings: :data:`WARM` keeps the last
job's weights, network, quality meter and compiled steps for the next one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from style_exp.app.preflight import Plan
from style_exp.engine import color
from style_exp.engine.demo import demo_paintings, demo_photo
from style_exp.engine.device import compute_precision
from style_exp.engine.images import load_image, pixels_digest, resize
from style_exp.engine.init import initial_image
from style_exp.engine.masks import load_regions
from style_exp.engine.objective import Problem, Workspace, build_network
from style_exp.engine.quality import QualityMeter
from style_exp.engine.stylize import rescaled
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.videoio import Clip
from style_exp.engine.weights import VGGWeights, load_weights
from style_exp.spec.runspec import RunSpec


@dataclass(frozen=True)
class LoadedInputs:
    """The images as loaded: content at ``size``, styles at ``style_scale * size``."""

    content: np.ndarray
    styles: list[np.ndarray]
    labels: list[str]  # content first, then styles: what to call the input copies


@dataclass(frozen=True)
class Job:
    """Everything one run needs, ready to optimise."""

    spec: RunSpec
    tile: int  # px: scales larger than this are optimised by tiles (0: never), as planned
    inputs: LoadedInputs
    problem: Problem  # at full size, the images as the optimiser sees them (colour prepared)
    init: np.ndarray
    network: VGG19Features
    precision: str  # what the convolutions compute in (``auto`` resolved)
    weights_sha256: str
    quality: QualityMeter  # distances to the photo and the styles as loaded, for any image
    clip: Clip | None = None
    labels: tuple[Path, ...] = ()  # the label image of each frame (masks.content=DIR)
    # Per scale side: the optimiser's compiled step, kept for this process's next job.
    workspaces: dict[int, Workspace] = field(default_factory=dict)

    def problem_at(self, side: int) -> Problem:
        """The problem at one scale of a coarse-to-fine run."""
        return rescaled(self.problem, side)

    def output_image(self, image: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        """The output image: colour preservation puts the colours of the photo (or of a
        video ``frame``) back."""
        if frame is None:
            frame = resize(self.inputs.content, image.shape[1::-1])
        return color.finish(image, frame, self.spec.color)

    def problem_for(self, index: int, frame: np.ndarray) -> Problem:
        """A video frame's problem: the frame as content, the styles prepared for it, and
        its own label image's regions when there is one per frame."""
        content, styles = color.prepare(frame, self.inputs.styles, self.spec.color)
        regions = self.problem.regions
        if self.labels and self.spec.inputs.masks is not None:
            regions = load_regions(self.spec.inputs.masks, self.labels[index])
        return dataclasses.replace(self.problem, content=content, styles=styles,
                                   regions=regions)

    def start_image(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Where an independent video frame starts: the configured init, seeded per frame."""
        content = color.prepare(frame, [], self.spec.color)[0]
        rng = np.random.default_rng([self.spec.seed, index])
        return initial_image(self.spec.init, content, self.problem.styles, rng,
                             self.problem.style_blend)


def prepare(plan: Plan) -> Job:
    """Load and build everything the plan's spec asks for."""
    spec = plan.spec
    clip, labels = plan.sizes.clip, plan.sizes.labels  # as the preflight opened and listed them
    if spec.determinism:
        tf.config.experimental.enable_op_determinism()
    # Every draw of a run is numpy's, seeded by the job; TensorFlow's seed covers any
    # library op that would draw. Setting it clears TensorFlow's kernel cache, so every
    # compiled step is instantiated again (0.35 s of a later job's first step at load 4):
    # a sweep's jobs with one seed set it once.
    WARM.get("tf_seed", spec.seed, lambda: tf.random.set_seed(spec.seed))
    masks = spec.inputs.masks
    inputs = load_inputs(spec, clip)
    content, styles = color.prepare(inputs.content, inputs.styles, spec.color)
    init = initial_image(spec.init, content, styles, np.random.default_rng(spec.seed),
                         spec.inputs.blend)
    weights: VGGWeights = WARM.get("weights", spec.model.weights,
                                   lambda: load_weights(spec.model.weights))
    blend = list(spec.inputs.blend)
    precision = compute_precision(spec.precision)
    network_key = (weights.sha256, tuple(spec.loss.layers), spec.model.pooling, precision)
    network = WARM.get("network", network_key,
                       lambda: build_network(weights, spec.loss, spec.model.pooling, precision))
    quality_key = (weights.sha256, pixels_digest(inputs.content, *inputs.styles), tuple(blend))
    quality = WARM.get("quality", quality_key,
                       lambda: QualityMeter(weights, inputs.content, inputs.styles, blend))
    sides = tuple(scale.side for scale in spec.scales)
    workspaces = WARM.get("workspaces", (network_key, sides), dict)
    return Job(
        spec=spec, tile=plan.tile, inputs=inputs,
        problem=Problem(content, styles, blend, spec.loss,
                        regions=load_regions(masks, labels[0] if labels else None)
                        if masks else ()),
        init=init, network=network,
        precision=precision, weights_sha256=weights.sha256, quality=quality, clip=clip,
        labels=labels, workspaces=workspaces)


class Warm:
    """The last value built under each name, kept while the next job asks for the same key.

    One per name, so a sweep over sizes or inputs holds one network, one quality meter
    and one set of compiled steps, not one for every job it ran.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Hashable, Any]] = {}

    def get(self, name: str, key: Hashable, build: Callable[[], Any]) -> Any:
        kept = self._kept.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        self._kept.pop(name, None)  # free the old value before building its successor
        value = build()
        self._kept[name] = (key, value)
        return value


WARM = Warm()


def load_inputs(spec: RunSpec, clip: Clip | None = None) -> LoadedInputs:
    """Content and style images at the output's working sizes (a clip's first frame)."""
    side = spec.style_side
    if spec.inputs.content is None:
        paintings = demo_paintings(side, spec.inputs.demo_styles)
        return LoadedInputs(demo_photo(spec.size), paintings,
                            ["content_demo", *[f"style_demo_{i}" for i in range(len(paintings))]])
    styles = [load_image(path, side) for path in spec.inputs.styles]
    content = next(clip.frames()) if clip else load_image(spec.inputs.content, spec.size)
    return LoadedInputs(content, styles,
                        ["content", *[f"style_{i}" for i in range(len(styles))]])
