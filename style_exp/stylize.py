"""The optimisation loop. Plain values in, an image out; progress through a callback.

It knows nothing of Hydra or MLflow so it can be used as a library and tested alone.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from style_exp.losses import LossWeights, Targets, gram_matrix, loss_terms
from style_exp.optim import Adam, AdamSettings
from style_exp.vgg import VGG19Features
from style_exp.weights import VGGWeights


@dataclass(frozen=True)
class Problem:
    """What to make: a content image, style images with blend weights, and the loss."""

    content: np.ndarray
    styles: list[np.ndarray]
    style_blend: list[float]
    loss: LossWeights


@dataclass(frozen=True)
class Progress:
    """What the loop reports at each logged step."""

    step: int
    iterations: int
    metrics: dict[str, float]
    image: np.ndarray | None = None  # only on checkpoint steps


@dataclass
class Result:
    image: np.ndarray  # the lowest-loss image seen
    metrics: dict[str, float]  # at the last logged step
    steps: int
    setup_s: float  # from the call to the end of the first step (includes tracing)
    ms_per_iteration: float  # median over logged intervals after the first step
    total_s: float
    interrupted: bool = False
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during optimisation; carries the result so far (with the best image)."""

    def __init__(self, result: Result):
        super().__init__("interrupted")
        self.result = result


def build_network(weights: VGGWeights, loss: LossWeights, pooling: str) -> VGG19Features:
    """VGG-19 truncated after the deepest layer any loss term reads."""
    return VGG19Features(weights, [*loss.content_layers, *loss.style_layers], pooling)


def compute_targets(network: VGG19Features, problem: Problem) -> Targets:
    """Content activations and style Gram matrices, computed once up front."""
    content = network(tf.constant(problem.content[None], tf.float32))
    style_grams = []
    for style, blend in zip(problem.styles, problem.style_blend, strict=True):
        features = network(tf.constant(style[None], tf.float32))
        style_grams.append((blend, {layer: gram_matrix(features[layer])
                                    for layer in problem.loss.style_layers}))
    return Targets({layer: content[layer] for layer in problem.loss.content_layers}, style_grams)


def stylize(
    problem: Problem,
    network: VGG19Features,
    init: np.ndarray,
    optimizer: AdamSettings,
    iterations: int,
    *,
    log_every: int = 10,
    checkpoint_every: int = 0,
    callback: Callable[[Progress], None] | None = None,
) -> Result:
    """Optimise ``init`` towards the problem's content and styles for ``iterations`` steps.

    Losses are fetched from the device only on reported steps (step 1, every
    ``log_every`` and ``checkpoint_every``, the last), so the loop never waits on
    the host in between.
    """
    started = time.perf_counter()
    targets = compute_targets(network, problem)
    image = tf.Variable(init[None].astype(np.float32), name="image")
    best_image = tf.Variable(image)
    best_loss = tf.Variable(math.inf)
    adam = Adam(image, optimizer)

    @tf.function
    def step() -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            terms = loss_terms(network(image), image, targets, problem.loss)
        gradient = tape.gradient(terms["total"], image)
        improved = terms["total"] < best_loss
        best_loss.assign(tf.where(improved, terms["total"], best_loss))
        best_image.assign(tf.where(improved, image, best_image))
        lr = adam.apply(image, gradient)
        image.assign(tf.clip_by_value(image, 0.0, 255.0))
        return terms, lr

    history: list[tuple[int, dict[str, float]]] = []
    intervals: list[float] = []
    setup_s = 0.0
    last_time, last_step = started, 0

    def result(interrupted: bool) -> Result:
        return Result(
            image=best_image.numpy()[0],
            metrics=history[-1][1] if history else {},
            steps=last_step,
            setup_s=setup_s,
            ms_per_iteration=statistics.median(intervals) if intervals else math.nan,
            total_s=time.perf_counter() - started,
            interrupted=interrupted,
            history=history,
        )

    try:
        for i in range(1, iterations + 1):
            terms, lr = step()
            checkpoint = checkpoint_every > 0 and i % checkpoint_every == 0
            if not (i == 1 or i % log_every == 0 or i == iterations or checkpoint):
                continue
            metrics = {f"loss/{name}": float(value) for name, value in terms.items()}
            metrics["lr"] = float(lr)
            now = time.perf_counter()
            if i == 1:
                setup_s = now - started
            else:
                intervals.append(1000.0 * (now - last_time) / (i - last_step))
            last_time, last_step = now, i
            history.append((i, metrics))
            if not math.isfinite(metrics["loss/total"]):
                raise FloatingPointError(
                    f"the loss became {metrics['loss/total']} at step {i}; "
                    "try a lower optimizer.lr or smaller loss weights"
                )
            if callback is not None:
                callback(Progress(i, iterations, metrics, image.numpy()[0] if checkpoint else None))
    except KeyboardInterrupt as interrupt:
        raise Interrupted(result(interrupted=True)) from interrupt
    return result(interrupted=False)
