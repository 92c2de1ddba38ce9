"""What the optimisation loops report, and the reporter that decides when: no TensorFlow.

The console, the tracking code and a sweep's launching process take these values
without loading TensorFlow; the optimisers' loops (``adam.py``, ``lbfgs.py``) feed the
reporter plain floats and a way to fetch the image, only at the steps it asks for.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from style_exp.spec.errors import RunFailure
from style_exp.spec.settings import StopSettings

RISE_LIMIT = 2.0  # a loss ending above this multiple of its start has diverged


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


class NoProgress(RunFailure):
    """The loss became non-finite, never fell below its start or ended far above it: the
    image is no result, whatever the step count says."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during optimisation; carries the result so far (with the best image)."""

    def __init__(self, result: Result):
        super().__init__("interrupted")
        self.result = result


# Called at each reported step; a returned text asks the run to stop there, saying why
# (a search's pruner, ``app/study.py``): the loop ends as if converged, best image kept.
ProgressCallback = Callable[[Progress], "str | None"]


def stop_asked(returned: object) -> str | None:
    """The reason to stop a progress callback gave: only a str asks (a lambda that
    returns an image, say, asks nothing)."""
    return returned if isinstance(returned, str) else None


class Reporter:
    """Decides which steps are reported, times them and calls the callback.

    Only reported steps fetch values from the device, so between them the loop
    never waits on the host.
    """

    def __init__(self, iterations: int, log_every: int, checkpoint_every: int,
                 callback: ProgressCallback | None, remedy: tuple[str, str],
                 stop: StopSettings):
        self.iterations, self.log_every, self.checkpoint_every = iterations, log_every, \
            checkpoint_every
        self.callback = callback
        self.stop = stop
        self.remedy = remedy  # the knob to name when the loss misbehaves, and what to do
        self.started = self.last_time = time.perf_counter()
        self.last_step = 0
        self.setup_s = 0.0
        self.intervals: list[float] = []
        self.history: list[tuple[int, dict[str, float]]] = []
        self.asked: str | None = None  # the callback's reason to stop, once it gave one

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
            self.fail(f"the loss became {metrics['loss/total']} at step {step}, from "
                      f"{self._start()}")
        if self.callback is not None:
            image = current_image() if self.is_checkpoint(step) else None
            reason = stop_asked(self.callback(Progress(step, self.iterations, metrics, image)))
            if reason is not None and not self.asked:
                self.asked = reason

    def converged(self) -> str | None:
        """Why the run should stop now (the callback asked, or the loss no longer falls)."""
        losses = [(step, metrics["loss/total"]) for step, metrics in self.history]
        return self.asked or self.stop.reason(losses)

    def fail(self, what: str) -> None:
        """Raise NoProgress saying ``what`` happened, naming the knob to change."""
        raise NoProgress(what, *self.remedy)

    def _start(self) -> str:
        step, metrics = self.history[0]
        return f"{metrics['loss/total']:.3g} at step {step}"

    def check_progress(self, result: Result, start_image: np.ndarray) -> None:
        """Fail a run whose best image is its start, or whose loss ended far above it."""
        if not self.history:  # not one step taken (L-BFGS found none that lowers the loss)
            self.fail(f"no step lowered the loss from its start: {result.stop_reason}")
        if result.steps < 2:  # the image after the first update was never evaluated
            return
        step, metrics = self.history[-1]
        last = f"{metrics['loss/total']:.3g} at step {step}"
        if np.array_equal(result.image, start_image):
            self.fail(f"the loss never fell below its start, {self._start()}; {last}")
        if metrics["loss/total"] > RISE_LIMIT * self.history[0][1]["loss/total"]:
            self.fail(f"the loss rose from {self._start()} to {last}")

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
