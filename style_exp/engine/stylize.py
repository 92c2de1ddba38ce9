"""The optimisation loop: a problem and a start image in, the stylised image out.

``stylize`` runs one image at one size with the optimiser the loop settings name;
``stylize_scales`` runs coarse to fine, each size started from the last one's result.
Progress goes through a callback. What is minimised lives in ``objective.py`` and each
optimiser's loop in its own module (``adam.py``, ``lbfgs.py``, imported here so their
loops are registered); like them, this knows nothing of Hydra or MLflow, so it can be
used as a library and tested alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from style_exp.engine import adam, lbfgs  # noqa: F401  (importing them registers their loops)
from style_exp.engine.images import resize, resize_longest
from style_exp.engine.objective import PIXEL_RANGE, Problem, Workspace, objective, optimise
from style_exp.engine.progress import (
    Interrupted,
    Progress,
    ProgressCallback,
    Reporter,
    Result,
    stop_asked,
)
from style_exp.engine.vgg import VGG19Features
from style_exp.spec.runspec import Scale
from style_exp.spec.settings import LoopSettings

KNOB_PREFIX = "optimizer."  # how the optimiser's settings are named on the command line


def stylize(
    problem: Problem,
    network: VGG19Features,
    init: np.ndarray,
    loop: LoopSettings,
    iterations: int,
    *,
    callback: ProgressCallback | None = None,
    tile: int = 0,
    require_progress: bool = True,
    workspace: Workspace | None = None,
) -> Result:
    """Optimise ``init`` towards the problem's content and styles with ``loop.optimizer``.

    Reported steps are step 1, every ``loop.log_every`` and ``loop.checkpoint_every``
    step, and the last; checkpoint steps carry the current image. ``loop.xla`` compiles
    the step with XLA. ``tile`` (px) evaluates the loss tile by tile, exactly, with
    memory bounded by the tile instead of the image (see ``tiles.py``). A loss that
    becomes non-finite raises :class:`NoProgress`, and so, with ``require_progress``,
    does one that never falls below its start or ends far above it; an image started
    near its optimum (a warm-started video frame or a later scale) may rightly stay
    where it is, so its caller turns that off. ``iterations`` is a cap: the run ends
    earlier once ``loop.stop`` says the loss has stopped falling (``Result.stop_reason``).
    Calls given one ``workspace`` reuse its compiled step for images of the same size,
    and its targets for the same inputs and loss structure.
    """
    reporter = Reporter(iterations, loop.log_every, loop.checkpoint_every, callback,
                        loop.optimizer.remedy(KNOB_PREFIX), loop.stop)
    # Only a kept workspace keeps targets: a throwaway one would only hash the images.
    result = optimise(loop.optimizer, objective(problem, network, tile, loop.xla, workspace),
                      init, iterations, reporter, workspace or Workspace())
    if require_progress:
        reporter.check_progress(result, np.clip(init, *PIXEL_RANGE))
    return result


def rescaled(problem: Problem, side: int) -> Problem:
    """The problem with the content's longest side ``side``; styles shrink in proportion."""
    ratio = side / max(problem.content.shape[:2])
    styles = [resize_longest(s, max(1, round(max(s.shape[:2]) * ratio))) for s in problem.styles]
    return dataclasses.replace(problem, content=resize_longest(problem.content, side),
                               styles=styles)


def stylize_scales(
    problem_at: Callable[[int], Problem],
    scales: Sequence[Scale],
    network: VGG19Features,
    init: np.ndarray,
    loop: LoopSettings,
    *,
    callback: ProgressCallback | None = None,
    tile: int = 0,
    workspaces: dict[int, Workspace] | None = None,
) -> Result:
    """Coarse-to-fine: optimise at each scale in turn, starting from the previous result.

    ``problem_at(side)`` gives the problem with the longest side ``side``; ``init`` is
    resized to the first scale. Steps are numbered across scales and every reported
    step carries ``scale/size``, so one run shows all scales on one axis. Scales
    larger than ``tile`` (px; 0: none) are optimised tile by tile. Each scale ends after
    its ``iterations`` or, earlier, when ``loop.stop`` finds it converged; when the
    callback asks to stop, the run ends there, the later scales left out. Given
    ``workspaces`` (per side), the untiled scales keep their compiled steps there for
    the next call: a sweep's next job then starts without tracing.
    """
    total = sum(scale.iterations for scale in scales)
    offset, image, results = 0, init, []
    asked: list[str] = []
    for scale in scales:
        problem = problem_at(scale.side)
        height, width = problem.content.shape[:2]
        start = resize(image, (width, height))

        def shifted(progress: Progress, offset: int = offset,
                    side: int = scale.side) -> str | None:
            if callback is None:
                return None
            reason = stop_asked(callback(dataclasses.replace(
                progress, step=progress.step + offset, iterations=total,
                metrics={**progress.metrics, "scale/size": float(side)})))
            if reason is not None:
                asked.append(reason)
            return reason

        scale_tile = tile if 0 < tile < scale.side else 0
        workspace = None
        if workspaces is not None and not scale_tile:
            workspace = workspaces.setdefault(scale.side, Workspace())
        try:
            result = stylize(problem, network, start, loop, scale.iterations, callback=shifted,
                             tile=scale_tile, require_progress=not results,
                             workspace=workspace)
        except Interrupted as interrupt:
            results.append(_shift(interrupt.result, offset))
            raise Interrupted(_combine(results)) from interrupt
        results.append(_shift(result, offset))
        offset += result.steps
        image = result.image
        if asked:
            break
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
