"""Optimisers for the image: Adam with learning-rate schedules, and L-BFGS-B.

Adam runs entirely inside the compiled step (its update and schedule are TF ops).
L-BFGS uses SciPy's L-BFGS-B, driven by a compiled loss-and-gradient function:
it is the optimiser Gatys et al. used, it converges in far fewer iterations than
Adam, and its box constraints keep every pixel in 0..255 without clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

SCHEDULES = ("constant", "exponential", "step", "cosine")


@dataclass(frozen=True)
class AdamSettings:
    """Adam's hyper-parameters (defaults as the seed's implementation) and its schedule.

    Schedules, with t the step and T = ``decay_steps``:
    constant: lr; exponential: lr * decay_rate^(t/T); step: lr * decay_rate^floor(t/T);
    cosine: from lr down to lr * decay_rate along half a cosine over T steps, then flat.
    """

    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    schedule: str = "constant"
    decay_rate: float = 0.5
    decay_steps: int = 500


@dataclass(frozen=True)
class LBFGSSettings:
    """SciPy L-BFGS-B options: history of corrections, line search and tolerances."""

    history_size: int = 20
    max_line_search: int = 20
    # Budget: this many loss/gradient evaluations per iteration, plus one line search.
    max_evaluations_per_iteration: float = 1.5
    ftol: float = 0.0  # relative loss change that counts as converged (0: never)
    gtol: float = 0.0  # projected-gradient size that counts as converged (0: never)


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
    """Adam on a single image variable.

    Written out rather than taken from Keras so the update is plain TF ops that
    live in the same ``tf.function`` as the loss, with the scheduled learning rate
    computed from the step counter in the graph (no retracing, no host round-trip).
    """

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
