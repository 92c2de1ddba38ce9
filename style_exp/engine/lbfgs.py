"""L-BFGS on the image, every tensor on the device: the optimiser Gatys et al. used.

This one keeps every pixel in 0..255 by projection (pixels at a bound whose gradient
pushes outwards are held there), and starts its inverse-Hessian estimate from a low-pass
filter instead of the identity: the curvature of the style loss is highest at the finest
scales, so a plain gradient step is dominated by pixel noise while broad changes of
colour and form move slowly; the filter evens that out, which cut the iterations to a
given loss by about a quarter on the benchmark (README, "Benchmarks").

The memory (:class:`LBFGS`, with the two-loop recursion), the loop's variables and
compiled step (:class:`LBFGSLoop`) and the line search around it (:func:`run_lbfgs`,
registered with ``objective.optimise`` for :class:`LBFGSSettings`) live here together.
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
from style_exp.spec.settings import LBFGSSettings

ARMIJO = 1e-4  # the fraction of the predicted decrease a step must achieve


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


class LBFGSLoop:
    """L-BFGS's variables and its compiled evaluation of a step, for one image size."""

    def __init__(self, settings: LBFGSSettings, objective: Objective, shape: tuple[int, ...]):
        image = self.image = tf.Variable(tf.zeros(shape), name="image")
        lbfgs = self.lbfgs = LBFGS(shape, settings, bounded_memory=objective.tiled)
        gradient = self.gradient = tf.Variable(tf.zeros(shape))
        direction = self.direction = tf.Variable(tf.zeros(shape))
        loss = self.loss = tf.Variable(math.inf)
        self.average = iterate_average(settings, objective, shape)

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
        self.average.start(init)


@optimise.register(LBFGSSettings)
def run_lbfgs(settings: LBFGSSettings, objective: Objective, init: np.ndarray,
              iterations: int, reporter: Reporter, workspace: Workspace) -> Result:
    """L-BFGS with a backtracking (Armijo) line search, every tensor kept on the device.

    Each iteration tries the full step first (almost always accepted) and halves it
    until the loss falls enough; the host reads one flag per evaluation. A line search
    that fails clears the memory and retries along the preconditioned gradient; if
    that fails too, the loss cannot fall any further in float32 and the run stops.
    Accepted steps only ever lower the loss, so the current image is the best one (with
    ``average=ema``, the lowest-loss average measured).
    """
    loop = workspace.loop(LBFGSLoop, settings, objective, init)
    image, lbfgs, loss, average = loop.image, loop.lbfgs, loop.loss, loop.average

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
            average.add(image)
            change = (last_loss - metrics["loss/total"]) / max(abs(last_loss), 1.0)
            last_loss, last = metrics["loss/total"], (i, metrics)
            if change <= settings.ftol and settings.ftol > 0:
                stop_reason = f"convergence: relative loss change {change:.3g} <= ftol"
            elif largest_gradient <= settings.gtol and settings.gtol > 0:
                stop_reason = f"convergence: projected gradient {largest_gradient:.3g} <= gtol"
            if reporter.wants(i) or stop_reason != "iterations":
                average.report(reporter, i, metrics, objective.targets, image)
                stop_reason = reporter.converged() or stop_reason
            if stop_reason != "iterations":
                break
    except BaseException as error:
        stop = stopping.as_stop(error)
        if stop is None:
            raise
        raise Interrupted(reporter.result(average.output(image), True)) from stop
    if last is not None and reporter.last_step < last[0]:  # stopped after an unreported step
        average.report(reporter, *last, objective.targets, image)
    return reporter.result(average.output(image), False, stop_reason)
