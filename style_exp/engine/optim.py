"""Optimisers for the image: Adam with learning-rate schedules, and L-BFGS.

Both live in TensorFlow, so their updates run in the same compiled step as the loss,
on whatever device the network runs on, without copying the image to the host.

L-BFGS is the optimiser Gatys et al. used. This one keeps every pixel in 0..255 by
projection (pixels at a bound whose gradient pushes outwards are held there), and
starts its inverse-Hessian estimate from a low-pass filter instead of the identity:
the curvature of the style loss is highest at the finest scales, so a plain
gradient step is dominated by pixel noise while broad changes of colour and form
move slowly; the filter evens that out, which cut the iterations to a given loss
by about a quarter on the benchmark (README, "Benchmarks").
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from style_exp.spec.settings import SCHEDULES, AdamSettings, LBFGSSettings


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

    def reset(self) -> None:
        """Forget the moments and the step count: the next update is a first one."""
        for state in (self.m, self.v, self.t):
            state.assign(tf.zeros_like(state))


PIXEL_RANGE = (0.0, 255.0)


def free_pixels(image: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
    """Pixels L-BFGS may move: all but those at a bound whose gradient points outwards."""
    low, high = PIXEL_RANGE
    held = tf.logical_or(tf.logical_and(image <= low, gradient > 0.0),
                         tf.logical_and(image >= high, gradient < 0.0))
    return tf.logical_not(held)


def smooth(vector: tf.Tensor, spectrum_filter: tf.Tensor | None) -> tf.Tensor:
    """Multiply each colour channel's spectrum by ``spectrum_filter`` (None: identity)."""
    if spectrum_filter is None:
        return vector
    height, width = vector.shape[1], vector.shape[2]
    spectrum = tf.signal.rfft2d(tf.transpose(vector, (0, 3, 1, 2))) * spectrum_filter
    return tf.transpose(tf.signal.irfft2d(spectrum, fft_length=[height, width]), (0, 2, 3, 1))


def recursion(image: tf.Tensor, gradient: tf.Tensor, s: tf.Tensor, y: tf.Tensor,
              rho: tf.Tensor, stored: tf.Tensor, gamma: tf.Tensor,
              spectrum_filter: tf.Tensor | None) -> tf.Tensor:
    """Nocedal's two-loop recursion: the step -H g over the free pixels.

    ``s``, ``y`` and ``rho`` form a ring buffer of which ``stored`` pairs were
    written (slots with rho = 0 are empty and contribute nothing); H's initial guess
    is ``gamma`` times the smoothing filter. With no pairs yet, the step is scaled
    to one grey level RMS, since there is no curvature to size it by.

    Each use reads its slot afresh (and widens it to float32), so run eagerly it holds
    one slot at a time, never a float32 copy of the whole history.
    """
    free = free_pixels(image, gradient)
    q = tf.reshape(tf.where(free, gradient, 0.0), (-1,))
    memory = s.shape[0]

    def slot(pairs: tf.Tensor, j: int) -> tf.Tensor:
        # The j-th newest slot. Gathered, not sliced: XLA would compile a slice anew
        # for every value of a variable index.
        return tf.cast(tf.gather(pairs, (stored - 1 - j) % memory), tf.float32)

    alphas = []
    for j in range(memory):
        alpha = slot(rho, j) * tf.tensordot(slot(s, j), q, 1)
        q -= alpha * slot(y, j)
        alphas.append(alpha)
    r = tf.reshape(gamma * smooth(tf.reshape(q, image.shape), spectrum_filter), (-1,))
    del q  # eagerly, one image-sized tensor fewer during the second loop
    for j in reversed(range(memory)):
        beta = slot(rho, j) * tf.tensordot(slot(y, j), r, 1)
        r += (alphas[j] - beta) * slot(s, j)
    step = tf.where(free, -tf.reshape(r, image.shape), 0.0)
    rms = tf.sqrt(tf.reduce_mean(tf.square(step))) + 1e-12
    return step / tf.where(stored > 0, 1.0, rms)


# Compiled with XLA, which fuses the two loops' ~4 x history_size small vector
# operations (at 256 px: 12 ms instead of 58, a sixth of a loss-and-gradient
# evaluation); one compilation serves every run with the same image size and memory.
two_loop = tf.function(recursion, jit_compile=True, autograph=False)


class LBFGS(tf.Module):
    """Limited-memory BFGS memory for one image, with a smoothing preconditioner.

    Keeps the last ``history_size`` pairs s = x' - x, y = g' - g in a ring buffer.
    The initial inverse Hessian is gamma * P with P = (1 - lambda * Laplacian)^-1,
    applied per colour channel in the Fourier domain: symmetric and positive
    definite, so every step is a descent direction.

    With ``bounded_memory`` (tiled runs, where the history is the largest thing left
    that grows with the image) the pairs are stored in bfloat16, half the bytes, and
    the recursion runs eagerly slot by slot instead of as one XLA program that holds
    float32 copies of every slot at once. The curvature and scaling are computed from
    the pairs as stored, so the recursion is exact for what it keeps: the direction
    differs from the float32 one by bfloat16's rounding (README, "Print sizes").
    """

    def __init__(self, shape: tuple[int, ...], settings: LBFGSSettings,
                 bounded_memory: bool = False):
        super().__init__(name="lbfgs")
        self.settings = settings
        size = math.prod(shape)
        memory = settings.history_size
        dtype = tf.bfloat16 if bounded_memory else tf.float32
        self.recursion = recursion if bounded_memory else two_loop
        self.s = tf.Variable(tf.zeros((memory, size), dtype), trainable=False)
        self.y = tf.Variable(tf.zeros((memory, size), dtype), trainable=False)
        self.rho = tf.Variable(tf.zeros((memory,)), trainable=False)  # 1 / (s . y); 0: empty
        self.stored = tf.Variable(0, trainable=False)  # pairs stored so far
        self.gamma = tf.Variable(1.0, trainable=False)
        self.filter = None
        if settings.smoothing > 0.0:
            frequency_y = np.fft.fftfreq(shape[1])[:, None]
            frequency_x = np.fft.rfftfreq(shape[2])[None, :]
            # Eigenvalues of the negative 5-point Laplacian with periodic borders.
            laplacian = 4.0 * (np.sin(np.pi * frequency_y) ** 2 + np.sin(np.pi * frequency_x) ** 2)
            self.filter = tf.constant(1.0 / (1.0 + settings.smoothing * laplacian), tf.complex64)

    def precondition(self, vector: tf.Tensor) -> tf.Tensor:
        """P v: the low-pass filter on each colour channel of an image-shaped tensor."""
        return smooth(vector, self.filter)

    def direction(self, image: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
        """The step -H g over the free pixels (see ``recursion``)."""
        memory = (tf.convert_to_tensor(v) for v in (self.s, self.y, self.rho, self.stored,
                                                    self.gamma))
        return self.recursion(image, gradient, *memory, self.filter)

    def remember(self, step: tf.Tensor, gradient_change: tf.Tensor) -> None:
        """Store a pair if it has positive curvature (the loss is not convex everywhere)."""
        step, gradient_change = (tf.cast(tf.cast(t, self.s.dtype), tf.float32)
                                 for t in (step, gradient_change))  # the pair as stored
        curvature = tf.reduce_sum(step * gradient_change)
        scaled_change = tf.reduce_sum(gradient_change * self.precondition(gradient_change))
        i = self.stored % self.settings.history_size

        def store() -> tf.Tensor:
            # Scatter updates: XLA (xla=true) compiles them at a run-time slot, which a
            # sliced assignment (``self.s[i].assign``) it refuses.
            slot = tf.reshape(i, (1,))
            for memory, pair in ((self.s, step), (self.y, gradient_change)):
                memory.scatter_update(tf.IndexedSlices(
                    tf.cast(tf.reshape(pair, (1, -1)), memory.dtype), slot))
            self.rho.scatter_update(tf.IndexedSlices(tf.reshape(1.0 / curvature, (1,)), slot))
            self.gamma.assign(curvature / scaled_change)
            return self.stored.assign_add(1)

        tf.cond(curvature > 1e-10 * scaled_change, store, lambda: tf.identity(self.stored))

    def forget(self) -> None:
        """Drop the memory (after a failed line search): the next step is a gradient step."""
        self.rho.assign(tf.zeros_like(self.rho))
        self.stored.assign(0)
        self.gamma.assign(1.0)
