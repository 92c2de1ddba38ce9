"""Stylising a clip frame by frame, each frame started as the video mode says.

- ``independent``: every frame from the configured start image (noise by default);
  the baseline, which flickers.
- ``previous``: from the previous stylised frame, the seed paper's warm start.
- ``flow``: from the previous stylised frame warped along the input's optical flow,
  with a temporal loss towards it wherever the flow can be trusted (Ruder et al.).

Like the still-image loop this knows nothing of Hydra or MLflow. Finished frames go
to a :class:`FrameStore` as they are made, so an interrupted clip resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from style_exp.engine.flow import consistency_mask, optical_flow, temporal_error, warp
from style_exp.engine.images import load_image, save_image
from style_exp.engine.objective import Problem, Workspace
from style_exp.engine.stylize import stylize
from style_exp.engine.vgg import VGG19Features
from style_exp.spec.settings import NEVER_STOP, LoopSettings, VideoSettings

# Steps between reads of a frame's loss (each a host round trip): what the stopping rule sees.
STOP_CHECK_EVERY = 10


class FrameMaker(Protocol):
    """What a clip's frames are made of and into: the caller's side of ``stylize_video``."""

    def problem_for(self, index: int, frame: np.ndarray) -> Problem:
        """The input frame ``index``'s problem (content, styles, loss, its regions' masks)."""
        ...

    def output_image(self, image: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """The output frame made of an optimised image (colour finishing)."""
        ...

    def start_image(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Where the frame ``index`` starts when it is not started from the previous one."""
        ...


@dataclass(frozen=True)
class Frame:
    """One finished frame: what is shown, what the optimiser made, and its numbers."""

    index: int
    image: np.ndarray  # the output frame (after colour finishing)
    working: np.ndarray  # the optimised image the next frame starts from
    metrics: dict[str, float]


class FrameStore:
    """Finished frames on disk, each written as soon as it is made.

    ``frames/NNNNNN.png`` is the output frame and ``NNNNNN.json`` its metrics; the JSON
    is written last, so a frame counts as finished only when both are complete. When
    the optimised image differs from the output (colour preservation), it is kept in
    ``working/`` for resuming.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.frames = directory / "frames"

    def _paths(self, index: int) -> tuple[Path, Path, Path]:
        name = f"{index:06d}"
        return (self.frames / f"{name}.png", self.directory / "working" / f"{name}.png",
                self.directory / "metrics" / f"{name}.json")

    def save(self, frame: Frame) -> None:
        image_path, working_path, metrics_path = self._paths(frame.index)
        save_image(frame.image, image_path)
        if not np.array_equal(frame.image, frame.working):
            save_image(frame.working, working_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = metrics_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(frame.metrics))
        os.replace(temporary, metrics_path)

    def load(self, index: int) -> Frame | None:
        """The finished frame ``index``, or None if it was not finished."""
        image_path, working_path, metrics_path = self._paths(index)
        if not (metrics_path.is_file() and image_path.is_file()):
            return None
        image = load_image(image_path)
        working = load_image(working_path) if working_path.is_file() else image
        return Frame(index, image, working, json.loads(metrics_path.read_text()))

    def files(self, index: int) -> list[Path]:
        """The files that make frame ``index`` resumable, as far as they exist."""
        return [path for path in self._paths(index) if path.is_file()]

    def finished(self) -> int:
        """How many frames from the start are finished."""
        count = 0
        while self._paths(count)[2].is_file():
            count += 1
        return count

    def copy_from(self, other: FrameStore) -> int:
        """Take over the leading finished frames of another store (an earlier run's)."""
        count = other.finished()
        for index in range(count):
            for source, target in zip(other._paths(index), self._paths(index), strict=True):
                if source.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
        return count

    def images(self, count: int) -> Sequence[np.ndarray]:
        """The first ``count`` output frames, each read from disk only when used."""
        return _StoredFrames(self, count)


class _StoredFrames(Sequence[np.ndarray]):
    def __init__(self, store: FrameStore, count: int):
        self.store, self.count = store, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= index < self.count:
            raise IndexError(index)
        return load_image(self.store._paths(index)[0])


@dataclass(frozen=True)
class Motion:
    """How frame t relates to frame t-1 of the input."""

    backward: np.ndarray  # flow t -> t-1: where each pixel of t was
    mask: np.ndarray  # 1 where that is trustworthy (not occluded, no motion boundary)

    @classmethod
    def between(cls, previous: np.ndarray, current: np.ndarray, method: str) -> Motion:
        backward = optical_flow(current, previous, method)
        forward = optical_flow(previous, current, method)
        return cls(backward, consistency_mask(forward, backward))

    def carry(self, previous_output: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        """The previous stylised frame moved onto the current one.

        With ``fill``, untrusted pixels (newly uncovered, or from outside the frame)
        are taken from it instead: warping would smear edge pixels into them.
        """
        warped = warp(previous_output, self.backward)
        if fill is None:
            return warped
        mask = self.mask[..., None]
        return (mask * warped + (1.0 - mask) * fill).astype(np.float32)


def stylize_video(
    frames: Iterable[np.ndarray],
    maker: FrameMaker,
    network: VGG19Features,
    loop: LoopSettings,
    settings: VideoSettings,
    store: FrameStore,
    iterations: int,
    on_frame: Callable[[Frame, bool], None] | None = None,
) -> list[Frame]:
    """Stylise each frame in turn; frames already in ``store`` are reused, not redone.

    ``maker.problem_for(index, frame)`` is the frame's problem (content, styles, loss);
    ``maker.output_image(image, frame)`` turns an optimised image into the output frame;
    ``maker.start_image(index, frame)`` is where an independent frame starts.
    ``iterations`` is the run's step budget, which the first frame takes unless
    ``settings.first_frame_iterations`` says otherwise; a frame started afresh (the first,
    or any with ``video.init=independent``) ends earlier once ``loop.stop`` finds it
    converged. Each frame takes ``loop``'s optimiser, stop rule and ``xla``; its loss is
    read every ``STOP_CHECK_EVERY`` steps and it keeps no checkpoints.
    ``on_frame(frame, reused)`` is called as each frame is done or reused.
    ``video/temporal_error`` is measured the same way in every mode, along the
    input's flow, so the modes can be compared.
    """
    done: list[Frame] = []
    previous_input: np.ndarray | None = None
    workspace = Workspace()  # the frames after the first share one compiled step
    for index, current in enumerate(frames):
        started = time.perf_counter()
        frame = store.load(index)
        reused = frame is not None
        if frame is None:
            motion = None  # the flow is needed only for frames still to be made
            if previous_input is not None:
                motion = Motion.between(previous_input, current, settings.flow)
            budget = settings.frame_iterations if index else (
                settings.first_frame_iterations or iterations)
            frame = _stylize_frame(index, current, done[-1] if done else None, motion=motion,
                                   maker=maker, network=network, loop=loop,
                                   settings=settings, iterations=budget, workspace=workspace)
            if motion is not None:
                frame.metrics["video/temporal_error"] = temporal_error(
                    frame.image, motion.carry(done[-1].image), motion.mask)
                frame.metrics["video/trusted_fraction"] = float(motion.mask.mean())
            frame.metrics["time/frame_s"] = time.perf_counter() - started
            store.save(frame)
        done.append(frame)
        previous_input = current
        if on_frame is not None:
            on_frame(frame, reused)
    return done


def clip_summary(frames: Sequence[Frame]) -> dict[str, float]:
    """Clip-level metrics: means over the frames (temporal error from frame 1 on), and the
    time per frame made here (not reused), leaving out the first frame's longer one."""

    def mean(name: str, chosen: Sequence[Frame]) -> float:
        values = [f.metrics[name] for f in chosen if name in f.metrics]
        return float(np.nanmean(values)) if values else math.nan

    made = [f for f in frames if "time/frame_s" in f.metrics]
    summary = {
        "video/temporal_error_mean": mean("video/temporal_error", frames),
        "video/style_loss_mean": mean("loss/style", frames),
        "video/frames": float(len(frames)),
        "time/per_frame_s": mean("time/frame_s", made[1:] or made),
    }
    return {name: value for name, value in summary.items() if math.isfinite(value)}


def _stylize_frame(index: int, current: np.ndarray, previous: Frame | None, *,
                   motion: Motion | None, maker: FrameMaker, network: VGG19Features,
                   loop: LoopSettings, settings: VideoSettings, iterations: int,
                   workspace: Workspace) -> Frame:
    problem = maker.problem_for(index, current)
    # The loss is read every STOP_CHECK_EVERY steps, for the stopping rule only.
    loop = dataclasses.replace(loop, log_every=STOP_CHECK_EVERY, checkpoint_every=0)
    warm = previous is not None and motion is not None and settings.init != "independent"
    if not warm:
        init = maker.start_image(index, current)
    else:
        init = previous.working if settings.init == "previous" else motion.carry(
            previous.working, fill=problem.content)
        if settings.init == "flow" and settings.temporal_weight > 0:
            problem = dataclasses.replace(
                problem, temporal=(init, motion.mask),
                loss=dataclasses.replace(problem.loss, temporal=settings.temporal_weight))
        # A warm-started frame runs its set count (``video.frame_iterations``): it starts
        # near its optimum, where the still-image stopping rule was not measured.
        loop = dataclasses.replace(loop, optimizer=loop.optimizer.warm_started(settings.frame_lr),
                                   stop=NEVER_STOP)
    result = stylize(problem, network, init, loop, iterations, require_progress=not warm,
                     workspace=workspace)
    return Frame(index, maker.output_image(result.image, current), result.image,
                 dict(result.metrics))
