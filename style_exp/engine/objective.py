"""What every optimiser minimises, and the dispatch to the optimiser's loop.

A :class:`Problem` (content, styles, loss weights) and the network become an
:class:`Objective`: the loss terms and their gradient at an image, the targets they are
measured against, and how to compile a step around them (whole, or tile by tile).
Each optimiser's module (``adam.py``, ``lbfgs.py``) builds its loop on an objective,
keeps it in a :class:`Workspace` so a video's frames reuse its compiled step, and
registers its run function with :func:`optimise` for its settings class; ``stylize.py``
calls ``optimise`` and never names an optimiser. No Hydra or MLflow here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from style_exp.engine.images import pixels_digest
from style_exp.engine.losses import (
    Moments,
    StyleTarget,
    Targets,
    blend_moments,
    loss_terms,
    moments,
    style_statistic,
)
from style_exp.engine.masks import Region, layer_masks
from style_exp.engine.progress import Reporter, Result
from style_exp.engine.tiles import TiledLoss, tiled_moments
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import VGGWeights
from style_exp.spec.loss import LossWeights
from style_exp.spec.settings import OptimizerSettings

PIXEL_RANGE = (0.0, 255.0)  # every optimiser keeps the image's pixels in it
LoopT = TypeVar("LoopT")


@dataclass(frozen=True)
class Problem:
    """What to make: a content image, style images with blend weights, and the loss.

    With ``regions`` (spatial control) each region has its own styles (indices into
    ``styles``), blend and weight, and ``style_blend`` is not used.
    """

    content: np.ndarray
    styles: list[np.ndarray]
    style_blend: list[float]
    loss: LossWeights
    # Video: (previous stylised frame warped onto this one, mask of trusted pixels).
    temporal: tuple[np.ndarray, np.ndarray] | None = None
    regions: tuple[Region, ...] = ()


def build_network(weights: VGGWeights, loss: LossWeights, pooling: str,
                  precision: str = "float32") -> VGG19Features:
    """VGG-19 truncated after the deepest layer any loss term reads."""
    return VGG19Features(weights, [*loss.content_layers, *loss.style_layers], pooling,
                         precision)


def compute_targets(network: VGG19Features, problem: Problem, tile: int = 0) -> Targets:
    """Content activations and each region's target style statistics, computed once up front.

    With ``tile`` the styles' moments are computed by tiles (a print-size painting does
    not fit through the network whole) and the content's are left to ``TiledLoss``.
    """
    return _per_problem(_reference_targets(network, problem, tile), problem)


def _reference_targets(network: VGG19Features, problem: Problem, tile: int) -> Targets:
    """The content's activations and the styles' statistics: what depends on the images,
    the layers, the statistic and the network, not on the term weights or a video frame's
    warped predecessor."""
    layers = list(problem.loss.style_layers)

    def style_moments(image: np.ndarray) -> dict[str, Moments]:
        if tile:
            return tiled_moments(network, image, tile, layers)
        features = network(tf.constant(image[None], tf.float32))
        return {layer: moments(features[layer]) for layer in layers}

    per_style = [style_moments(style) for style in problem.styles]
    statistic = style_statistic(problem.loss.statistic)

    def target(indices: tuple[int, ...], blend: tuple[float, ...]) -> dict[str, dict]:
        return {layer: statistic.of_target(blend_moments(
                    [(b, per_style[i][layer]) for i, b in zip(indices, blend, strict=True)]))
                for layer in layers}

    if problem.regions:
        height, width = problem.content.shape[:2]
        style = [StyleTarget(region.weight,
                             {layer: tf.constant(mask[None, ..., None])
                              for layer, mask in layer_masks(region.mask, (height, width),
                                                             layers).items()},
                             target(region.styles, region.blend))
                 for region in problem.regions if region.weight > 0]
    else:
        style = [StyleTarget(1.0, None, target(tuple(range(len(problem.styles))),
                                               tuple(problem.style_blend)))]
    content = {}
    if not tile:
        features = network(tf.constant(problem.content[None], tf.float32))
        content = {layer: features[layer] for layer in problem.loss.content_layers}
    return Targets(content, style)


def _per_problem(reference: Targets, problem: Problem) -> Targets:
    """``reference`` with this problem's term weights and temporal target."""
    temporal = None
    if problem.temporal is not None:
        warped, mask = problem.temporal
        temporal = (tf.constant(warped[None], tf.float32),
                    tf.constant(mask[None, ..., None], tf.float32))
    term_weights = {name: tf.constant(value, tf.float32)
                    for name, value in problem.loss.term_weights.items()}
    return reference._replace(temporal=temporal, term_weights=term_weights)


def targets_key(network: VGG19Features, problem: Problem, tile: int) -> tuple:
    """Everything :func:`_reference_targets` depends on: the network (its weights, layers,
    pooling and precision), the pixels of the content, styles and masks (so their size,
    colour preparation and files), the blend, the regions and the loss's structure (its
    layers, their weights and the statistic; not the term weights)."""
    pixels = pixels_digest(problem.content, *problem.styles,
                           *(region.mask for region in problem.regions))
    regions = tuple((region.styles, region.blend, region.weight) for region in problem.regions)
    return (network, tile, pixels, tuple(problem.style_blend), regions,
            repr(problem.loss.structure))


def loss_and_gradient(network: VGG19Features, image: tf.Tensor, targets: Targets,
                      loss: LossWeights) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """The loss terms at ``image`` and the gradient of their total.

    The loss is scaled by ``network.gradient_scale`` while differentiating so
    float16 gradients stay in range. The terms' weights are the targets' (tensors), so a
    step compiled around one problem serves another with other term weights.
    """
    if targets.term_weights is not None:
        loss = loss.with_term_weights(targets.term_weights)
    with tf.GradientTape() as tape:
        tape.watch(image)
        terms = loss_terms(network(image), image, targets, loss)
        scaled = terms["total"] * network.gradient_scale
    return terms, tape.gradient(scaled, image) / network.gradient_scale


@dataclass(frozen=True)
class Objective:
    """The loss terms and their gradient at an image, the problem's targets, and how to
    compile a step around them.

    ``tiled``: the loss is evaluated by tiles, so image-sized state is what grows with
    the image and the optimiser should bound its own (``LBFGS(bounded_memory=...)``).
    ``key``: what ``evaluate`` depends on besides its arguments; a step compiled around
    one objective serves any other with the same key.
    """

    evaluate: Callable[[tf.Tensor, Targets], tuple[dict[str, tf.Tensor], tf.Tensor]]
    targets: Targets
    compile: Callable[[Callable], Callable]
    key: tuple
    tiled: bool = False


def objective(problem: Problem, network: VGG19Features, tile: int = 0,
              xla: bool = False, workspace: Workspace | None = None) -> Objective:
    """Untiled, a step is one compiled graph (with ``xla``, compiled by XLA). Tiled, the
    step runs eagerly around compiled tile passes, one tile at a time: one graph for all
    tiles would let TensorFlow run them at once and hold all their activations. A
    ``workspace`` keeps the targets for the next problem with the same ones."""
    targets = (workspace.targets(network, problem, tile) if workspace is not None
               else compute_targets(network, problem, tile))
    if tile:
        tiled = TiledLoss(network, problem.loss, problem.content, tile)
        return Objective(tiled, targets, lambda step: step, key=(tiled,), tiled=True)

    def evaluate(image: tf.Tensor, targets: Targets) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        return loss_and_gradient(network, image, targets, problem.loss)

    return Objective(evaluate, targets,
                     lambda step: tf.function(step, jit_compile=xla, autograph=False),
                     key=(network, repr(problem.loss.structure), xla))


class Workspace:
    """The optimiser's variables and compiled step, kept from one ``stylize`` call to the
    next on an image of the same size and settings (a video's frames).

    Each such call resets the variables and reuses the step's trace (with XLA, its
    program) instead of tracing it again: about a second per frame on this project's
    CPU. It holds one loop, so a clip keeps one set of image-sized state alive.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._loop: Any = None
        self._targets: tuple[tuple, Targets] | None = None

    def targets(self, network: VGG19Features, problem: Problem, tile: int = 0) -> Targets:
        """The problem's targets; the content's features and the styles' statistics are the
        last call's when :func:`targets_key` is the same (a sweep's next job: about 0.3 s
        at 256 px here), the term weights and temporal target always the problem's."""
        key = targets_key(network, problem, tile)
        if self._targets is None or self._targets[0] != key:
            self._targets = None  # free the old targets before computing their successor
            self._targets = (key, _reference_targets(network, problem, tile))
        return _per_problem(self._targets[1], problem)

    def loop(self, kind: Callable[[Any, Objective, tuple[int, ...]], LoopT],
             settings: OptimizerSettings, objective: Objective, init: np.ndarray) -> LoopT:
        """A loop of ``kind`` for ``init``'s size, started at ``init``: the last one if it
        was built for the same settings and objective, else a new one."""
        key = (kind, repr(settings), init.shape, *objective.key)
        if key != self._key:
            self._key, self._loop = None, None  # free the old state before building
            self._key, self._loop = key, kind(settings, objective, (1, *init.shape))
        self._loop.start(init)
        return self._loop


@functools.singledispatch
def optimise(settings: OptimizerSettings, objective: Objective, init: np.ndarray,
             iterations: int, reporter: Reporter, workspace: Workspace) -> Result:
    """Run the loop of the optimiser ``settings`` belong to from ``init`` for at most
    ``iterations`` steps, reporting through ``reporter``.

    Each optimiser's module registers its loop here for its settings class
    (``@optimise.register(AdamSettings)`` in ``adam.py``); ``stylize.py`` imports them.
    """
    raise TypeError(f"no optimisation loop is registered for {type(settings).__name__}")
