"""Iterate averaging (``optimizer.average=ema``), for every optimiser's loop.

Each step moves every pixel a little back and forth around where the loss wants it
(Adam's steps are about ``lr`` grey levels whatever the gradient), which shows as fine
noise in the image; an exponential moving average of the iterates smooths it out
(Polyak averaging; crowsonkb's style-transfer-pytorch outputs one). With decay d
and x_k the image after step k, the bias-corrected average after step t is

    a_t = sum_k (1 - d) d^(t-k) x_k / (1 - d^t),   k = 1..t

(as Adam corrects its moments: a_1 = x_1, not (1 - d) x_1). The start is no iterate and
is left out. The output is the average, so the best image is chosen among averages:
the average's loss is measured at each reported step (one evaluation per
``tracking.log_every`` steps, besides the optimiser's own) and the lowest one kept.
A new ``start`` (each scale of a coarse-to-fine run, each video frame) begins a new
average, since the image just changed size or frame.

:class:`Iterates` is the loops' view when nothing is averaged: the optimiser's own image
is shown and kept. No Hydra or MLflow here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from style_exp.engine.losses import Targets
from style_exp.engine.objective import Objective
from style_exp.engine.progress import Reporter
from style_exp.spec.settings import AverageSettings

ITERATE_TOTAL = "average/iterate_total"  # the optimiser's own image's loss, when averaging


class Iterates:
    """No averaging: what a loop shows and returns is its own image."""

    def start(self, init: np.ndarray) -> None:
        """Forget earlier iterates: a new image starts at ``init``."""

    def add(self, image: tf.Variable) -> None:
        """Take in the image after a step."""

    def report(self, reporter: Reporter, step: int, metrics: dict[str, float],
               targets: Targets, image: tf.Variable) -> None:
        """Report ``step`` given the iterate's metrics and image: what the run outputs."""
        reporter.report(step, self.metrics(metrics, targets), lambda: self.current(image))

    def metrics(self, metrics: dict[str, float], targets: Targets) -> dict[str, float]:
        """What to report at a reported step, given the iterate's metrics."""
        return metrics

    def current(self, image: tf.Variable) -> np.ndarray:
        """The image a checkpoint shows, given the iterate."""
        return image.numpy()[0]

    def output(self, best: tf.Variable) -> np.ndarray:
        """The run's result, given the loop's own best image."""
        return best.numpy()[0]


class ExponentialAverage(Iterates):
    """The bias-corrected exponential moving average of the iterates, and the lowest-loss
    average measured so far (see the module's docstring)."""

    def __init__(self, decay: float, objective: Objective, shape: tuple[int, ...]):
        total = self.total = tf.Variable(tf.zeros(shape), trainable=False)  # sum of (1-d) d^.. x
        weight = self.weight = tf.Variable(0.0, trainable=False)  # 1 - d^t
        best_image = self.best_image = tf.Variable(tf.zeros(shape), trainable=False)
        best_loss = self.best_loss = tf.Variable(math.inf, trainable=False)

        @tf.function(autograph=False)
        def add(image: tf.Tensor) -> None:
            total.assign(decay * total + (1.0 - decay) * image)
            weight.assign(decay * weight + (1.0 - decay))

        @objective.compile
        def measure(targets: Targets) -> dict[str, tf.Tensor]:
            average = total / weight
            terms, _ = objective.evaluate(average, targets)
            improved = terms["total"] < best_loss
            best_loss.assign(tf.where(improved, terms["total"], best_loss))
            best_image.assign(tf.where(improved, average, best_image))
            return terms

        self._add, self._measure = add, measure

    def start(self, init: np.ndarray) -> None:
        self.total.assign(tf.zeros_like(self.total))
        self.weight.assign(0.0)
        self.best_image.assign(init[None].astype(np.float32))
        self.best_loss.assign(math.inf)

    def add(self, image: tf.Variable) -> None:
        self._add(tf.convert_to_tensor(image))

    def metrics(self, metrics: dict[str, float], targets: Targets) -> dict[str, float]:
        """The average's loss terms (what the stop rule and the console see), and the
        iterate's total as ``average/iterate_total``."""
        terms = self._measure(targets)
        return {**metrics, **{f"loss/{name}": float(value) for name, value in terms.items()},
                ITERATE_TOTAL: metrics["loss/total"]}

    def current(self, image: tf.Variable) -> np.ndarray:
        if float(self.weight) == 0.0:  # no step taken yet
            return image.numpy()[0]
        return (self.total / self.weight).numpy()[0]

    def output(self, best: tf.Variable) -> np.ndarray:
        """The lowest-loss average measured; before any was, the latest average."""
        if math.isfinite(float(self.best_loss)) or float(self.weight) == 0.0:
            return self.best_image.numpy()[0]
        return (self.total / self.weight).numpy()[0]


def iterate_average(settings: AverageSettings, objective: Objective,
                    shape: tuple[int, ...]) -> Iterates:
    """What the loop of an optimiser with ``settings`` shows and returns."""
    if settings.average == "ema":
        return ExponentialAverage(settings.average_decay, objective, shape)
    return Iterates()
