"""A validated config turned into a ready job: inputs, problem, start image, network, settings.

This is the one place where config values become library objects. It reads the
config's shape but knows nothing of MLflow, so the tracked run (``app.py``) only
records and runs, and tests can build a job without a tracking store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from style_exp.app.preflight import tile_side
from style_exp.app.schema import (
    blend_weights,
    input_files,
    layer_weights,
    optimizer_settings,
    scale_plan,
    settings_from,
    style_paths,
    style_side,
)
from style_exp.engine import color
from style_exp.engine.demo import demo_paintings, demo_photo
from style_exp.engine.device import compute_precision
from style_exp.engine.images import load_image, resize
from style_exp.engine.init import InitSettings, initial_image
from style_exp.engine.losses import LossWeights
from style_exp.engine.quality import QualityMeter
from style_exp.engine.stylize import Problem, build_network, rescaled
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.videoio import Clip, is_clip, open_clip
from style_exp.engine.weights import load_weights
from style_exp.spec.settings import OptimizerSettings, StopSettings, VideoSettings


@dataclass(frozen=True)
class Inputs:
    """The images as loaded: content at ``size``, styles at ``style_scale * size``."""

    content: np.ndarray
    styles: list[np.ndarray]
    labels: list[str]  # content first, then styles: what to call the input copies


@dataclass(frozen=True)
class Job:
    """Everything one run needs, ready to optimise."""

    inputs: Inputs
    problem: Problem  # at full size, the images as the optimiser sees them (colour prepared)
    color: str
    init_settings: InitSettings
    init: np.ndarray
    seed: int
    network: VGG19Features
    precision: str  # what the convolutions compute in (``auto`` resolved)
    weights_sha256: str
    optimizer: OptimizerSettings
    stop: StopSettings
    scales: list[int]
    scale_iterations: list[int]
    tile: int  # px: scales larger than this are optimised by tiles (0: never)
    files: dict[str, str]  # every input file the result depends on
    quality: QualityMeter  # distances to the photo and the styles as loaded, for any image
    clip: Clip | None = None
    video: VideoSettings | None = None

    def problem_at(self, side: int) -> Problem:
        """The problem at one scale of a coarse-to-fine run."""
        return rescaled(self.problem, side)

    def finish(self, image: np.ndarray, content: np.ndarray | None = None) -> np.ndarray:
        """The output image: colour preservation puts the colours of the photo (or of a
        video frame, ``content``) back."""
        if content is None:
            content = resize(self.inputs.content, image.shape[1::-1])
        return color.finish(image, content, self.color)

    def frame_problem(self, frame: np.ndarray) -> Problem:
        """A video frame's problem: the frame as content, the styles prepared for it."""
        content, styles = color.prepare(frame, self.inputs.styles, self.color)
        return dataclasses.replace(self.problem, content=content, styles=styles)

    def frame_start(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Where an independent video frame starts: the configured init, seeded per frame."""
        content = color.prepare(frame, [], self.color)[0]
        rng = np.random.default_rng([self.seed, index])
        return initial_image(self.init_settings, content, self.problem.styles, rng)


def prepare(cfg: DictConfig) -> Job:
    """Load and build everything ``cfg`` (already validated) asks for."""
    scales, scale_iterations = scale_plan(cfg)
    clip, video = None, None
    if cfg.content is not None and is_clip(cfg.content):
        clip = open_clip(cfg.content, cfg.size, cfg.video.stride, cfg.video.max_frames,
                         cfg.video.fps)
        video = settings_from(cfg.video, VideoSettings)
    if cfg.determinism:
        tf.config.experimental.enable_op_determinism()
    tf.random.set_seed(cfg.seed)
    inputs = load_inputs(cfg, clip)
    content, styles = color.prepare(inputs.content, inputs.styles, cfg.color)
    init_settings = settings_from(cfg.init, InitSettings)
    init = initial_image(init_settings, content, styles, np.random.default_rng(cfg.seed))
    weights = load_weights(cfg.model.weights)
    loss = loss_weights(cfg)
    blend = blend_weights(cfg.style_weights, len(styles))
    precision = compute_precision(cfg.precision)
    return Job(
        inputs=inputs,
        problem=Problem(content, styles, blend, loss),
        color=cfg.color,
        init_settings=init_settings, init=init, seed=cfg.seed,
        network=build_network(weights, loss, cfg.model.pooling, precision), precision=precision,
        weights_sha256=weights.sha256, optimizer=optimizer_settings(cfg.optimizer),
        stop=settings_from(cfg.stop, StopSettings),
        scales=scales, scale_iterations=scale_iterations, tile=tile_side(cfg),
        files=input_files(cfg),
        quality=QualityMeter(weights, inputs.content, inputs.styles, blend),
        clip=clip, video=video)


def load_inputs(cfg: DictConfig, clip: Clip | None = None) -> Inputs:
    """Content and style images at the output's working sizes (a clip's first frame)."""
    side = style_side(cfg.size, cfg.style_scale)
    if cfg.content is None:
        paintings = demo_paintings(side, cfg.demo.styles)
        return Inputs(demo_photo(cfg.size), paintings,
                      ["content_demo", *[f"style_demo_{i}" for i in range(len(paintings))]])
    styles = [load_image(path, side) for path in style_paths(cfg.style)]
    content = next(clip.frames()) if clip else load_image(cfg.content, cfg.size)
    return Inputs(content, styles, ["content", *[f"style_{i}" for i in range(len(styles))]])


def loss_weights(cfg: DictConfig) -> LossWeights:
    """The loss group's values with every layer weight normalised."""
    loss = cfg.loss
    return LossWeights(
        content=loss.content_weight, style=loss.style_weight, tv=loss.tv_weight,
        content_layers=layer_weights("loss.content_layers", list(loss.content_layers),
                                     loss.content_layer_weights),
        style_layers=layer_weights("loss.style_layers", list(loss.style_layers),
                                   loss.style_layer_weights, loss.style_layer_exponent),
    )
