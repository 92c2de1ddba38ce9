"""Optimisers for the image: Adam with learning-rate schedules, and L-BFGS.

Both live in TensorFlow, so their updates run in the same compiled step as the loss,
on whatever device the network runs on, without copying the image to the host.

L-BFGS is the optimiser Gatys et al. used. This one keeps every pixel in 0..255 by
projection (pixels at a bound whose gradient pushes outwards are held there), and
starts its inverse-Hessian estimate from a low-pass filter instead of the identity:
the curvature of the style loss is highest at the finest scales, so a plain
gradient step is dominated by pixel noise while broad changes of colour and form
move slowly; the filter evens that out, which cut the iterations to a given loss
by about a third on the benchmark (README, "Optimisers").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    """L-BFGS options: memory, preconditioner, line search and convergence tolerances."""

    history_size: int = 20  # (step, gradient change) pairs kept
    smoothing: float = 2.0  # lambda of the preconditioner (1 - lambda * Laplacian)^-1; 0: none
    max_line_search: int = 20  # step halvings before an iteration gives up
    ftol: float = 0.0  # relative loss change that counts as converged (0: never)
    gtol: float = 0.0  # largest projected-gradient entry that counts as converged (0: never)


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


PIXEL_RANGE = (0.0, 255.0)


def free_pixels(image: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
    """Pixels L-BFGS may move: all but those at a bound whose gradient points outwards."""
    low, high = PIXEL_RANGE
    held = tf.logical_or(tf.logical_and(image <= low, gradient > 0.0),
                         tf.logical_and(image >= high, gradient < 0.0))
    return tf.logical_not(held)


class LBFGS(tf.Module):
    """Limited-memory BFGS on one image, with a smoothing preconditioner.

    Keeps the last ``history_size`` pairs s = x' - x, y = g' - g in a ring buffer
    and turns a gradient into a step with Nocedal's two-loop recursion, whose
    initial inverse Hessian is gamma * P with P = (1 - lambda * Laplacian)^-1, applied
    per colour channel in the Fourier domain (symmetric and positive definite, so
    the step is always a descent direction).
    """

    def __init__(self, shape: tuple[int, ...], settings: LBFGSSettings):
        super().__init__(name="lbfgs")
        self.shape, self.settings = shape, settings
        size = math.prod(shape)
        memory = settings.history_size
        self.s = tf.Variable(tf.zeros((memory, size)), trainable=False)
        self.y = tf.Variable(tf.zeros((memory, size)), trainable=False)
        self.rho = tf.Variable(tf.zeros((memory,)), trainable=False)  # 1 / (s . y); 0: empty
        self.stored = tf.Variable(0, trainable=False)  # pairs stored so far
        self.gamma = tf.Variable(1.0, trainable=False)
        height, width = shape[1], shape[2]
        frequency_y = tf.constant(np.fft.fftfreq(height)[:, None], tf.float32)
        frequency_x = tf.constant(np.fft.rfftfreq(width)[None, :], tf.float32)
        # Eigenvalues of the negative 5-point Laplacian with periodic borders.
        laplacian = 4.0 * (tf.sin(math.pi * frequency_y) ** 2 + tf.sin(math.pi * frequency_x) ** 2)
        self.filter = tf.cast(1.0 / (1.0 + settings.smoothing * laplacian), tf.complex64)

    def precondition(self, vector: tf.Tensor) -> tf.Tensor:
        """P v: low-pass filter each colour channel of an image-shaped tensor."""
        if self.settings.smoothing == 0.0:
            return vector
        height, width = self.shape[1], self.shape[2]
        channels_first = tf.transpose(vector, (0, 3, 1, 2))
        spectrum = tf.signal.rfft2d(channels_first) * self.filter
        filtered = tf.signal.irfft2d(spectrum, fft_length=[height, width])
        return tf.transpose(filtered, (0, 2, 3, 1))

    def direction(self, image: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
        """The step -H g over the free pixels; with no memory yet, scaled to 1 grey level RMS."""
        free = free_pixels(image, gradient)
        q = tf.reshape(tf.where(free, gradient, 0.0), (-1,))
        memory = self.settings.history_size
        # Newest pair first; empty slots have rho = 0 and so contribute nothing.
        order = [(self.stored - 1 - j) % memory for j in range(memory)]
        alphas = []
        for i in order:
            alpha = self.rho[i] * tf.tensordot(self.s[i], q, 1)
            q -= alpha * self.y[i]
            alphas.append(alpha)
        r = tf.reshape(self.gamma * self.precondition(tf.reshape(q, self.shape)), (-1,))
        for i, alpha in zip(reversed(order), reversed(alphas), strict=True):
            beta = self.rho[i] * tf.tensordot(self.y[i], r, 1)
            r += (alpha - beta) * self.s[i]
        step = tf.where(free, -tf.reshape(r, self.shape), 0.0)
        rms = tf.sqrt(tf.reduce_mean(tf.square(step))) + 1e-12
        return step / tf.where(self.stored > 0, 1.0, rms)

    def remember(self, step: tf.Tensor, gradient_change: tf.Tensor) -> None:
        """Store a pair if it has positive curvature (the loss is not convex everywhere)."""
        curvature = tf.reduce_sum(step * gradient_change)
        scaled_change = tf.reduce_sum(gradient_change * self.precondition(gradient_change))
        i = self.stored % self.settings.history_size

        def store() -> tf.Tensor:
            self.s[i].assign(tf.reshape(step, (-1,)))
            self.y[i].assign(tf.reshape(gradient_change, (-1,)))
            self.rho[i].assign(1.0 / curvature)
            self.gamma.assign(curvature / scaled_change)
            return self.stored.assign_add(1)

        tf.cond(curvature > 1e-10 * scaled_change, store, lambda: tf.identity(self.stored))

    def forget(self) -> None:
        """Drop the memory (after a failed line search): the next step is a gradient step."""
        self.rho.assign(tf.zeros_like(self.rho))
        self.stored.assign(0)
        self.gamma.assign(1.0)
