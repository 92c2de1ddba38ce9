"""Adam on the image, with learning-rate schedules: the seed code's optimiser.

Written out rather than taken from Keras, so the update is plain TensorFlow ops in the
same compiled step as the loss, on whatever device the network runs on, with the
scheduled learning rate computed from the step counter in the graph (no retracing, no
copy of the image to the host). The loop here registers itself with
``objective.optimise`` for :class:`AdamSettings`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from style_exp.engine import stopping
from style_exp.engine.averaging import iterate_average
from style_exp.engine.losses import Targets
from style_exp.engine.objective import PIXEL_RANGE, Objective, Workspace, optimise
from style_exp.engine.progress import Interrupted, Reporter, Result
from style_exp.spec.settings import SCHEDULES, AdamSettings


def learning_rate(settings: AdamSettings, step: tf.Tensor) -> tf.Tensor:
    """The scheduled learning rate at ``step`` (1-based), as a TF op."""
    lr, rate = settings.lr, settings.decay_rate
    progress = tf.cast(step, tf.float32) / float(settings.decay_steps)
    if settings.schedule == "constant":
        return tf.constant(lr, tf.float32)
    if settings.schedule == "exponential":
        return lr * tf.pow(rate, progress)
    if settings.schedule == "step":
        return lr * tf.pow(rate, tf.floor(progress))
    if settings.schedule == "cosine":
        cosine = 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(progress, 1.0)))
        return lr * (rate + (1.0 - rate) * cosine)
    raise ValueError(f"unknown schedule {settings.schedule!r}; choose from {SCHEDULES}")


class Adam(tf.Module):
    """Adam on a single image variable: its moments and step count."""

    def __init__(self, variable: tf.Variable, settings: AdamSettings):
        super().__init__(name="adam")
        self.settings = settings
        self.m = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.v = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, variable: tf.Variable, gradient: tf.Tensor) -> tf.Tensor:
        """One bias-corrected Adam update; returns the learning rate used."""
        s = self.settings
        t = self.t.assign_add(1.0)
        lr = learning_rate(s, t)
        self.m.assign(s.beta1 * self.m + (1.0 - s.beta1) * gradient)
        self.v.assign(s.beta2 * self.v + (1.0 - s.beta2) * tf.square(gradient))
        step_size = lr * tf.sqrt(1.0 - s.beta2**t) / (1.0 - s.beta1**t)
        variable.assign_sub(step_size * self.m / (tf.sqrt(self.v) + s.epsilon))
        return lr

    def reset(self) -> None:
        """Forget the moments and the step count: the next update is a first one."""
        for state in (self.m, self.v, self.t):
            state.assign(tf.zeros_like(state))


class AdamLoop:
    """Adam's variables and its compiled step for one image size."""

    def __init__(self, settings: AdamSettings, objective: Objective, shape: tuple[int, ...]):
        image = self.image = tf.Variable(tf.zeros(shape), name="image")
        best_image = self.best_image = tf.Variable(image)
        best_loss = self.best_loss = tf.Variable(math.inf)
        adam = self.adam = Adam(image, settings)
        self.average = iterate_average(settings, objective, shape)

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
        self.average.start(init)


@optimise.register(AdamSettings)
def run_adam(settings: AdamSettings, objective: Objective, init: np.ndarray, iterations: int,
             reporter: Reporter, workspace: Workspace) -> Result:
    """Adam's steps, each one evaluation; the result is the lowest-loss image seen (or
    average measured, with ``average=ema``)."""
    loop = workspace.loop(AdamLoop, settings, objective, init)
    average = loop.average
    stop_reason = "iterations"
    try:
        for i in range(1, iterations + 1):
            stopping.raise_if_requested()
            terms, lr = loop.step(objective.targets)
            average.add(loop.image)
            if reporter.wants(i):
                metrics = {f"loss/{name}": float(value) for name, value in terms.items()}
                metrics["lr"] = float(lr)
                average.report(reporter, i, metrics, objective.targets, loop.image)
                if converged := reporter.converged():
                    stop_reason = converged
                    break
    except BaseException as error:
        stop = stopping.as_stop(error)
        if stop is None:
            raise
        raise Interrupted(reporter.result(average.output(loop.best_image), True)) from stop
    return reporter.result(average.output(loop.best_image), False, stop_reason)
