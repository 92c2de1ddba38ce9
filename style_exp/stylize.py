"""The optimisation loop. Plain values in, an image out; progress through a callback.

It knows nothing of Hydra or MLflow so it can be used as a library and tested alone.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from scipy.optimize import Bounds, minimize

from style_exp.images import resize
from style_exp.losses import LossWeights, Targets, gram_matrix, loss_terms
from style_exp.optim import Adam, AdamSettings, LBFGSSettings
from style_exp.vgg import VGG19Features
from style_exp.weights import VGGWeights

Optimizer = AdamSettings | LBFGSSettings


@dataclass(frozen=True)
class Problem:
    """What to make: a content image, style images with blend weights, and the loss."""

    content: np.ndarray
    styles: list[np.ndarray]
    style_blend: list[float]
    loss: LossWeights
    # Video: (previous stylised frame warped onto this one, mask of trusted pixels).
    temporal: tuple[np.ndarray, np.ndarray] | None = None


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
    stop_reason: str = "iterations"
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during optimisation; carries the result so far (with the best image)."""

    def __init__(self, result: Result):
        super().__init__("interrupted")
        self.result = result


def build_network(weights: VGGWeights, loss: LossWeights, pooling: str,
                  precision: str = "float32") -> VGG19Features:
    """VGG-19 truncated after the deepest layer any loss term reads."""
    return VGG19Features(weights, [*loss.content_layers, *loss.style_layers], pooling,
                         precision)


def compute_targets(network: VGG19Features, problem: Problem) -> Targets:
    """Content activations and style Gram matrices, computed once up front."""
    content = network(tf.constant(problem.content[None], tf.float32))
    style_grams = []
    for style, blend in zip(problem.styles, problem.style_blend, strict=True):
        features = network(tf.constant(style[None], tf.float32))
        style_grams.append((blend, {layer: gram_matrix(features[layer])
                                    for layer in problem.loss.style_layers}))
    temporal = None
    if problem.temporal is not None:
        warped, mask = problem.temporal
        temporal = (tf.constant(warped[None], tf.float32),
                    tf.constant(mask[None, ..., None], tf.float32))
    return Targets({layer: tf.cast(content[layer], tf.float32)
                    for layer in problem.loss.content_layers}, style_grams, temporal)


class _Reporter:
    """Decides which steps are reported, times them and calls the callback.

    Only reported steps fetch values from the device, so between them the loop
    never waits on the host.
    """

    def __init__(self, iterations: int, log_every: int, checkpoint_every: int,
                 callback: Callable[[Progress], None] | None):
        self.iterations, self.log_every, self.checkpoint_every = iterations, log_every, \
            checkpoint_every
        self.callback = callback
        self.started = self.last_time = time.perf_counter()
        self.last_step = 0
        self.setup_s = 0.0
        self.intervals: list[float] = []
        self.history: list[tuple[int, dict[str, float]]] = []

    def is_checkpoint(self, step: int) -> bool:
        return self.checkpoint_every > 0 and step % self.checkpoint_every == 0

    def wants(self, step: int) -> bool:
        return (step == 1 or step % self.log_every == 0 or step == self.iterations
                or self.is_checkpoint(step))

    def report(self, step: int, metrics: dict[str, float],
               current_image: Callable[[], np.ndarray]) -> None:
        now = time.perf_counter()
        if self.last_step == 0:
            self.setup_s = now - self.started
        else:
            self.intervals.append(1000.0 * (now - self.last_time) / (step - self.last_step))
        self.last_time, self.last_step = now, step
        self.history.append((step, metrics))
        if not math.isfinite(metrics["loss/total"]):
            raise FloatingPointError(
                f"the loss became {metrics['loss/total']} at step {step}; "
                "try a lower optimizer.lr or smaller loss weights"
            )
        if self.callback is not None:
            image = current_image() if self.is_checkpoint(step) else None
            self.callback(Progress(step, self.iterations, metrics, image))

    def result(self, best_image: np.ndarray, interrupted: bool,
               stop_reason: str = "iterations") -> Result:
        return Result(
            image=best_image,
            metrics=self.history[-1][1] if self.history else {},
            steps=self.last_step,
            setup_s=self.setup_s,
            ms_per_iteration=statistics.median(self.intervals) if self.intervals else math.nan,
            total_s=time.perf_counter() - self.started,
            interrupted=interrupted,
            stop_reason="interrupted" if interrupted else stop_reason,
            history=self.history,
        )


def stylize(
    problem: Problem,
    network: VGG19Features,
    init: np.ndarray,
    optimizer: Optimizer,
    iterations: int,
    *,
    log_every: int = 10,
    checkpoint_every: int = 0,
    callback: Callable[[Progress], None] | None = None,
    jit_compile: bool = False,
) -> Result:
    """Optimise ``init`` towards the problem's content and styles.

    Reported steps are step 1, every ``log_every`` and ``checkpoint_every`` step,
    and the last; checkpoint steps carry the current image. ``jit_compile`` compiles
    the step with XLA.
    """
    reporter = _Reporter(iterations, log_every, checkpoint_every, callback)
    targets = compute_targets(network, problem)
    if isinstance(optimizer, LBFGSSettings):
        return _run_lbfgs(problem, network, targets, init, optimizer, iterations, reporter,
                          jit_compile)
    return _run_adam(problem, network, targets, init, optimizer, iterations, reporter,
                     jit_compile)


def _run_adam(problem: Problem, network: VGG19Features, targets: Targets, init: np.ndarray,
              settings: AdamSettings, iterations: int, reporter: _Reporter,
              jit_compile: bool) -> Result:
    image = tf.Variable(init[None].astype(np.float32), name="image")
    best_image = tf.Variable(image)
    best_loss = tf.Variable(math.inf)
    adam = Adam(image, settings)

    # No data-dependent Python control flow inside: AutoGraph has nothing to convert.
    @tf.function(jit_compile=jit_compile, autograph=False)
    def step() -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            terms = loss_terms(network(image), image, targets, problem.loss)
            scaled = terms["total"] * network.gradient_scale
        gradient = tape.gradient(scaled, image) / network.gradient_scale
        improved = terms["total"] < best_loss
        best_loss.assign(tf.where(improved, terms["total"], best_loss))
        best_image.assign(tf.where(improved, image, best_image))
        lr = adam.apply(image, gradient)
        image.assign(tf.clip_by_value(image, 0.0, 255.0))
        return terms, lr

    try:
        for i in range(1, iterations + 1):
            terms, lr = step()
            if reporter.wants(i):
                metrics = {f"loss/{name}": float(value) for name, value in terms.items()}
                metrics["lr"] = float(lr)
                reporter.report(i, metrics, lambda: image.numpy()[0])
    except KeyboardInterrupt as interrupt:
        raise Interrupted(reporter.result(best_image.numpy()[0], True)) from interrupt
    return reporter.result(best_image.numpy()[0], False)


def _run_lbfgs(problem: Problem, network: VGG19Features, targets: Targets, init: np.ndarray,
               settings: LBFGSSettings, iterations: int, reporter: _Reporter,
               jit_compile: bool) -> Result:
    shape = (1, *init.shape)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], jit_compile=jit_compile,
                 autograph=False)
    def evaluate(image: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(image)
            terms = loss_terms(network(image), image, targets, problem.loss)
            scaled = terms["total"] * network.gradient_scale
        return terms, tape.gradient(scaled, image) / network.gradient_scale

    state = {"evaluations": 0, "iteration": 0, "best_loss": math.inf,
             "best": np.clip(init, 0, 255).astype(np.float32), "last_x": None, "last": {}}

    def loss_and_gradient(x: np.ndarray) -> tuple[float, np.ndarray]:
        terms, gradient = evaluate(tf.constant(x.reshape(shape), tf.float32))
        values = {f"loss/{name}": float(value) for name, value in terms.items()}
        state["evaluations"] += 1
        state["last_x"], state["last"] = x.copy(), values
        if values["loss/total"] < state["best_loss"]:
            state["best_loss"], state["best"] = values["loss/total"], x.reshape(init.shape).astype(
                np.float32)
        return values["loss/total"], gradient.numpy().ravel().astype(np.float64)

    def on_iteration(x: np.ndarray) -> None:
        state["iteration"] += 1
        i = state["iteration"]
        if not reporter.wants(i):
            return
        if not np.array_equal(state["last_x"], x):
            loss_and_gradient(x)  # rare: the accepted point was not the last one evaluated
        metrics = {**state["last"], "lbfgs/evaluations": float(state["evaluations"])}
        reporter.report(i, metrics, lambda: x.reshape(init.shape).astype(np.float32))

    x0 = np.clip(init, 0.0, 255.0).astype(np.float64).ravel()
    try:
        outcome = minimize(
            loss_and_gradient, x0, jac=True, method="L-BFGS-B",
            bounds=Bounds(np.zeros_like(x0), np.full_like(x0, 255.0)),
            callback=on_iteration,
            options={
                "maxiter": iterations,
                # The first iteration's line search alone can take several evaluations.
                "maxfun": round(settings.max_evaluations_per_iteration * iterations)
                + settings.max_line_search,
                "maxcor": settings.history_size,
                "maxls": settings.max_line_search,
                "ftol": settings.ftol,
                "gtol": settings.gtol,
            },
        )
    except KeyboardInterrupt as interrupt:
        raise Interrupted(reporter.result(state["best"], True)) from interrupt
    if reporter.last_step < state["iteration"] or not reporter.history:
        final = {**state["last"], "lbfgs/evaluations": float(state["evaluations"])}
        reporter.report(max(1, state["iteration"]), final, lambda: state["best"])
    return reporter.result(state["best"], False, stop_reason=str(outcome.message))


def stylize_scales(
    problem_at: Callable[[int], Problem],
    scales: Sequence[int],
    iterations: Sequence[int],
    network: VGG19Features,
    init: np.ndarray,
    optimizer: Optimizer,
    *,
    log_every: int = 10,
    checkpoint_every: int = 0,
    callback: Callable[[Progress], None] | None = None,
    jit_compile: bool = False,
) -> Result:
    """Coarse-to-fine: optimise at each size in turn, starting from the previous result.

    ``problem_at(size)`` gives the problem with the longest side ``size``; ``init`` is
    resized to the first scale. Steps are numbered across scales and every reported
    step carries ``scale/size``, so one run shows all scales on one axis.
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
                             jit_compile=jit_compile)
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
