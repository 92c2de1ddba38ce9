"""The optimisation loop. Plain values in, an image out; progress through a callback.

It knows nothing of Hydra or MLflow so it can be used as a library and tested alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from style_exp.engine import stopping
from style_exp.engine.images import resize, resize_longest
from style_exp.engine.losses import LossWeights, Targets, gram_matrix, loss_terms
from style_exp.engine.optim import LBFGS, PIXEL_RANGE, Adam, free_pixels
from style_exp.engine.progress import Interrupted, Progress, Reporter, Result
from style_exp.engine.tiles import TiledLoss, tiled_grams
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import VGGWeights
from style_exp.spec.settings import (
    DEFAULT_STOP,
    AdamSettings,
    LBFGSSettings,
    OptimizerSettings,
    StopSettings,
)

ARMIJO = 1e-4  # the fraction of the predicted decrease a step must achieve
KNOB_PREFIX = "optimizer."  # how the optimiser's settings are named on the command line
LoopT = TypeVar("LoopT")


@dataclass(frozen=True)
class Problem:
    """What to make: a content image, style images with blend weights, and the loss."""

    content: np.ndarray
    styles: list[np.ndarray]
    style_blend: list[float]
    loss: LossWeights
    # Video: (previous stylised frame warped onto this one, mask of trusted pixels).
    temporal: tuple[np.ndarray, np.ndarray] | None = None


def build_network(weights: VGGWeights, loss: LossWeights, pooling: str,
                  precision: str = "float32") -> VGG19Features:
    """VGG-19 truncated after the deepest layer any loss term reads."""
    return VGG19Features(weights, [*loss.content_layers, *loss.style_layers], pooling,
                         precision)


def compute_targets(network: VGG19Features, problem: Problem, tile: int = 0) -> Targets:
    """Content activations and style Gram matrices, computed once up front.

    With ``tile`` the styles' Grams are computed by tiles (a print-size painting does
    not fit through the network whole) and the content's are left to ``TiledLoss``.
    """
    layers = list(problem.loss.style_layers)

    def grams(image: np.ndarray) -> dict[str, tf.Tensor]:
        if tile:
            return tiled_grams(network, image, tile, layers)
        features = network(tf.constant(image[None], tf.float32))
        return {layer: gram_matrix(features[layer]) for layer in layers}

    style_grams = [(blend, grams(style))
                   for style, blend in zip(problem.styles, problem.style_blend, strict=True)]
    content = {}
    if not tile:
        features = network(tf.constant(problem.content[None], tf.float32))
        content = {layer: features[layer] for layer in problem.loss.content_layers}
    temporal = None
    if problem.temporal is not None:
        warped, mask = problem.temporal
        temporal = (tf.constant(warped[None], tf.float32),
                    tf.constant(mask[None, ..., None], tf.float32))
    return Targets(content, style_grams, temporal)


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
              jit_compile: bool = False) -> Objective:
    """Untiled, a step is one compiled graph. Tiled, the step runs eagerly around
    compiled tile passes, one tile at a time: one graph for all tiles would let
    TensorFlow run them at once and hold all their activations."""
    targets = compute_targets(network, problem, tile)
    if tile:
        tiled = TiledLoss(network, problem.loss, problem.content, tile)
        return Objective(tiled, targets, lambda step: step, key=(tiled,), tiled=True)

    def evaluate(image: tf.Tensor, targets: Targets) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        return loss_and_gradient(network, image, targets, problem.loss)

    return Objective(evaluate, targets,
                     lambda step: tf.function(step, jit_compile=jit_compile, autograph=False),
                     key=(network, repr(problem.loss), jit_compile))


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


def stylize(
    problem: Problem,
    network: VGG19Features,
    init: np.ndarray,
    optimizer: OptimizerSettings,
    iterations: int,
    *,
    log_every: int = 10,
    checkpoint_every: int = 0,
    callback: Callable[[Progress], None] | None = None,
    jit_compile: bool = False,
    tile: int = 0,
    require_progress: bool = True,
    stop: StopSettings = DEFAULT_STOP,
    workspace: Workspace | None = None,
) -> Result:
    """Optimise ``init`` towards the problem's content and styles.

    Reported steps are step 1, every ``log_every`` and ``checkpoint_every`` step,
    and the last; checkpoint steps carry the current image. ``jit_compile`` compiles
    the step with XLA. ``tile`` (px) evaluates the loss tile by tile, exactly, with
    memory bounded by the tile instead of the image (see ``tiles.py``). A loss that
    becomes non-finite raises :class:`NoProgress`, and so, with ``require_progress``,
    does one that never falls below its start or ends far above it; an image started
    near its optimum (a warm-started video frame or a later scale) may rightly stay
    where it is, so its caller turns that off. ``iterations`` is a cap: the run ends
    earlier once ``stop`` says the loss has stopped falling (``Result.stop_reason``).
    Calls given one ``workspace`` reuse its compiled step for images of the same size.
    """
    reporter = Reporter(iterations, log_every, checkpoint_every, callback,
                         optimizer.remedy(KNOB_PREFIX), stop)
    result = optimise(optimizer, objective(problem, network, tile, jit_compile), init,
                      iterations, reporter, workspace or Workspace())
    if require_progress:
        reporter.check_progress(result, np.clip(init, *PIXEL_RANGE))
    return result


@functools.singledispatch
def optimise(settings: OptimizerSettings, objective: Objective, init: np.ndarray,
             iterations: int, reporter: Reporter, workspace: Workspace) -> Result:
    """The loop of the optimiser ``settings`` belong to; each loop registers itself below."""
    raise TypeError(f"no optimisation loop is registered for {type(settings).__name__}")


class _AdamLoop:
    """Adam's variables and its compiled step for one image size."""

    def __init__(self, settings: AdamSettings, objective: Objective, shape: tuple[int, ...]):
        image = self.image = tf.Variable(tf.zeros(shape), name="image")
        best_image = self.best_image = tf.Variable(image)
        best_loss = self.best_loss = tf.Variable(math.inf)
        adam = self.adam = Adam(image, settings)

        # No data-dependent Python control flow inside: AutoGraph has nothing to convert.
        @objective.compile
        def step(targets: Targets) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
            terms, gradient = objective.evaluate(image, targets)
            improved = terms["total"] < best_loss
            best_loss.assign(tf.where(improved, terms["total"], best_loss))
            best_image.assign(tf.where(improved, image, best_image))
            lr = adam.apply(image, gradient)
            image.assign(tf.clip_by_value(image, *PIXEL_RANGE))
            return terms, lr

        self.step = step

    def start(self, init: np.ndarray) -> None:
        """Start afresh from ``init``, as a newly built loop would."""
        self.image.assign(init[None].astype(np.float32))
        self.best_image.assign(self.image)
        self.best_loss.assign(math.inf)
        self.adam.reset()


@optimise.register(AdamSettings)
def _run_adam(settings: AdamSettings, objective: Objective, init: np.ndarray, iterations: int,
              reporter: Reporter, workspace: Workspace) -> Result:
    loop = workspace.loop(_AdamLoop, settings, objective, init)
    stop_reason = "iterations"
    try:
        for i in range(1, iterations + 1):
            stopping.raise_if_requested()
            terms, lr = loop.step(objective.targets)
            if reporter.wants(i):
                metrics = {f"loss/{name}": float(value) for name, value in terms.items()}
                metrics["lr"] = float(lr)
                reporter.report(i, metrics, lambda: loop.image.numpy()[0])
                if converged := reporter.converged():
                    stop_reason = converged
                    break
    except KeyboardInterrupt as interrupt:
        raise Interrupted(reporter.result(loop.best_image.numpy()[0], True)) from interrupt
    return reporter.result(loop.best_image.numpy()[0], False, stop_reason)


def loss_and_gradient(network: VGG19Features, image: tf.Tensor, targets: Targets,
                       loss: LossWeights) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """The loss terms at ``image`` and the gradient of their total.

    The loss is scaled by ``network.gradient_scale`` while differentiating so
    float16 gradients stay in range.
    """
    with tf.GradientTape() as tape:
        tape.watch(image)
        terms = loss_terms(network(image), image, targets, loss)
        scaled = terms["total"] * network.gradient_scale
    return terms, tape.gradient(scaled, image) / network.gradient_scale


class _LBFGSLoop:
    """L-BFGS's variables and its compiled evaluation of a step, for one image size."""

    def __init__(self, settings: LBFGSSettings, objective: Objective,
                 shape: tuple[int, ...]):
        image = self.image = tf.Variable(tf.zeros(shape), name="image")
        lbfgs = self.lbfgs = LBFGS(shape, settings, bounded_memory=objective.tiled)
        gradient = self.gradient = tf.Variable(tf.zeros(shape))
        direction = self.direction = tf.Variable(tf.zeros(shape))
        loss = self.loss = tf.Variable(math.inf)

        @tf.function(autograph=False)
        def restart() -> None:
            lbfgs.forget()
            direction.assign(lbfgs.direction(image, gradient))

        @objective.compile
        def try_step(step_size: tf.Tensor, targets: Targets
                     ) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
            """Evaluate the step of ``step_size`` along the direction; take it if the
            loss falls enough. Returns the terms, whether it was taken and the largest
            projected gradient."""
            candidate = tf.clip_by_value(image + step_size * direction, *PIXEL_RANGE)
            terms, new_gradient = objective.evaluate(candidate, targets)
            sufficient = terms["total"] <= loss + ARMIJO * tf.reduce_sum(
                gradient * (candidate - image))

            def accept() -> tf.Tensor:
                lbfgs.remember(candidate - image, new_gradient - gradient)
                image.assign(candidate)
                gradient.assign(new_gradient)
                loss.assign(terms["total"])
                direction.assign(lbfgs.direction(candidate, new_gradient))
                return tf.constant(True)

            accepted = tf.cond(sufficient, accept, lambda: tf.constant(False))
            projected = tf.where(free_pixels(image, gradient), gradient, 0.0)
            return terms, accepted, tf.reduce_max(tf.abs(projected))

        self.restart, self.try_step = restart, try_step

    def start(self, init: np.ndarray) -> None:
        """Start afresh from ``init`` with an empty memory, as a newly built loop would."""
        self.image.assign(np.clip(init, *PIXEL_RANGE)[None].astype(np.float32))
        for zeroed in (self.gradient, self.direction):
            zeroed.assign(tf.zeros_like(zeroed))
        self.loss.assign(math.inf)
        self.lbfgs.forget()


@optimise.register(LBFGSSettings)
def _run_lbfgs(settings: LBFGSSettings, objective: Objective, init: np.ndarray,
               iterations: int, reporter: Reporter, workspace: Workspace) -> Result:
    """L-BFGS with a backtracking (Armijo) line search, every tensor kept on the device.

    Each iteration tries the full step first (almost always accepted) and halves it
    until the loss falls enough; the host reads one flag per evaluation. A line search
    that fails clears the memory and retries along the preconditioned gradient; if
    that fails too, the loss cannot fall any further in float32 and the run stops.
    Accepted steps only ever lower the loss, so the current image is the best one.
    """
    loop = workspace.loop(_LBFGSLoop, settings, objective, init)
    image, lbfgs, loss = loop.image, loop.lbfgs, loop.loss

    def try_step(step_size: float) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
        return loop.try_step(tf.constant(step_size), objective.targets)

    # From a loss of +inf a step of size 0 is accepted: this evaluates the start.
    try_step(0.0)
    evaluations, last_loss, last = 1, float(loss), None

    def line_search() -> tuple[dict[str, float], float] | None:
        """Metrics and the largest projected gradient after a step, or None if none helps."""
        nonlocal evaluations
        step_size = 1.0
        for _ in range(settings.max_line_search):
            terms, accepted, largest_gradient = try_step(step_size)
            evaluations += 1
            if bool(accepted):
                metrics = {f"loss/{name}": float(value) for name, value in terms.items()}
                return {**metrics, "lbfgs/evaluations": float(evaluations)}, float(
                    largest_gradient)
            step_size /= 2.0
        return None

    stop_reason = "iterations"
    try:
        for i in range(1, iterations + 1):
            stopping.raise_if_requested()
            outcome = line_search()
            if outcome is None and int(lbfgs.stored) > 0:
                loop.restart()
                outcome = line_search()
            if outcome is None:
                stop_reason = "convergence: no step lowers the loss (float32 precision reached)"
                break
            metrics, largest_gradient = outcome
            change = (last_loss - metrics["loss/total"]) / max(abs(last_loss), 1.0)
            last_loss, last = metrics["loss/total"], (i, metrics)
            if change <= settings.ftol and settings.ftol > 0:
                stop_reason = f"convergence: relative loss change {change:.3g} <= ftol"
            elif largest_gradient <= settings.gtol and settings.gtol > 0:
                stop_reason = f"convergence: projected gradient {largest_gradient:.3g} <= gtol"
            if reporter.wants(i) or stop_reason != "iterations":
                reporter.report(i, metrics, lambda: image.numpy()[0])
                stop_reason = reporter.converged() or stop_reason
            if stop_reason != "iterations":
                break
    except KeyboardInterrupt as interrupt:
        raise Interrupted(reporter.result(image.numpy()[0], True)) from interrupt
    if last is not None and reporter.last_step < last[0]:  # stopped after an unreported step
        reporter.report(*last, lambda: image.numpy()[0])
    return reporter.result(image.numpy()[0], False, stop_reason)


def rescaled(problem: Problem, side: int) -> Problem:
    """The problem with the content's longest side ``side``; styles shrink in proportion."""
    ratio = side / max(problem.content.shape[:2])
    styles = [resize_longest(s, max(1, round(max(s.shape[:2]) * ratio))) for s in problem.styles]
    return dataclasses.replace(problem, content=resize_longest(problem.content, side),
                               styles=styles)


def stylize_scales(
    problem_at: Callable[[int], Problem],
    scales: Sequence[int],
    iterations: Sequence[int],
    network: VGG19Features,
    init: np.ndarray,
    optimizer: OptimizerSettings,
    *,
    log_every: int = 10,
    checkpoint_every: int = 0,
    callback: Callable[[Progress], None] | None = None,
    jit_compile: bool = False,
    tile: int = 0,
    stop: StopSettings = DEFAULT_STOP,
) -> Result:
    """Coarse-to-fine: optimise at each size in turn, starting from the previous result.

    ``problem_at(size)`` gives the problem with the longest side ``size``; ``init`` is
    resized to the first scale. Steps are numbered across scales and every reported
    step carries ``scale/size``, so one run shows all scales on one axis. Scales
    larger than ``tile`` (px; 0: none) are optimised tile by tile. Each scale ends at
    its count or, earlier, when ``stop`` finds it converged.
    """
    total = sum(iterations)
    offset, image, results = 0, init, []
    for size, count in zip(scales, iterations, strict=True):
        problem = problem_at(size)
        height, width = problem.content.shape[:2]
        start = resize(image, (width, height))

        def shifted(progress: Progress, offset: int = offset, size: int = size) -> None:
            if callback is not None:
                callback(dataclasses.replace(
                    progress, step=progress.step + offset, iterations=total,
                    metrics={**progress.metrics, "scale/size": float(size)}))

        try:
            result = stylize(problem, network, start, optimizer, count, log_every=log_every,
                             checkpoint_every=checkpoint_every, callback=shifted,
                             jit_compile=jit_compile, tile=tile if 0 < tile < size else 0,
                             require_progress=not results, stop=stop)
        except Interrupted as interrupt:
            results.append(_shift(interrupt.result, offset))
            raise Interrupted(_combine(results)) from interrupt
        results.append(_shift(result, offset))
        offset += result.steps
        image = result.image
    return _combine(results)


def _shift(result: Result, offset: int) -> Result:
    history = [(step + offset, metrics) for step, metrics in result.history]
    return dataclasses.replace(result, steps=result.steps + offset, history=history)


def _combine(results: list[Result]) -> Result:
    """One result for all scales: the last scale's image, timings summed over scales."""
    last = results[-1]
    return dataclasses.replace(
        last,
        setup_s=results[0].setup_s,
        total_s=sum(r.total_s for r in results),
        history=[entry for r in results for entry in r.history],
    )
