"""The tracked video job: a clip in, ``output.mp4``, frames and a preview out, one MLflow run.

Per-frame metrics use the frame index as the step. Every finished frame is on disk
at once; with ``video.resume=true`` a new run of the same config and inputs copies
the finished frames of the latest earlier run (found through MLflow by a key of
both) and goes on from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from style_exp import color
from style_exp.images import save_image
from style_exp.losses import LossWeights
from style_exp.stylize import Optimizer, Problem
from style_exp.vgg import VGG19Features
from style_exp.video import Frame, FrameStore, VideoSettings, stylize_video
from style_exp.videoio import Clip, write_preview, write_video

# Keys that change neither which frames are made nor how: left out of the resume key.
NOT_IN_KEY = ("tracking", "progress", "threads", "resources", "demo")
NOT_IN_VIDEO_KEY = ("resume", "max_frames", "fps")
FRAME_FOLDERS = ("frames", "working", "metrics")  # a FrameStore's layout, mirrored in artifacts


def resume_key(cfg: DictConfig, input_hashes: dict[str, str]) -> str:
    """Identifies runs whose frames are interchangeable: same settings, same inputs."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_KEY:
        config.pop(key, None)
    for key in NOT_IN_VIDEO_KEY:
        config["video"].pop(key, None)
    text = json.dumps({"config": config, "inputs": input_hashes}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def earlier_frames(tracking_uri: str, experiment_id: str, key: str, run_id: str,
                   download_dir: Path) -> tuple[str, FrameStore] | None:
    """The latest earlier run with ``key`` that has finished frames: its id and its frames.

    Read in place when that run's directory is on this machine, else downloaded from its
    artifacts (each frame is logged as it is finished), so a job resumes on any worker.
    """
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([experiment_id], f"tags.`video.key` = '{key}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.run_id == run_id:
            continue
        local = run.data.tags.get("video.store")
        if local and Path(local).is_dir() and FrameStore(Path(local)).finished():
            return run.info.run_id, FrameStore(Path(local))
        downloaded = _download_frames(client, run.info.run_id, download_dir / run.info.run_id)
        if downloaded.finished():
            return run.info.run_id, downloaded
    return None


def _download_frames(client: MlflowClient, run_id: str, directory: Path) -> FrameStore:
    directory.mkdir(parents=True, exist_ok=True)
    for folder in FRAME_FOLDERS:
        if client.list_artifacts(run_id, folder):
            client.download_artifacts(run_id, folder, str(directory))
    return FrameStore(directory)


def settings_from(cfg: DictConfig) -> VideoSettings:
    video = cfg.video
    return VideoSettings(
        init=video.init, temporal_weight=video.temporal_weight,
        first_frame_iterations=video.first_frame_iterations or cfg.iterations,
        frame_iterations=video.frame_iterations, flow_method=video.flow,
        frame_lr=video.frame_lr)


class FrameLogger:
    """``on_frame`` callback: per-frame metrics to MLflow and a progress bar over frames."""

    def __init__(self, run_id: str, tracking_uri: str, store: FrameStore, count: int,
                 progress: bool):
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.store = store
        self.bar = tqdm(total=count, disable=not progress, unit="frame", dynamic_ncols=True)
        self.frames: list[Frame] = []

    def __call__(self, frame: Frame, reused: bool) -> None:
        timestamp = int(1000 * time.time())
        metrics = [Metric(name, value, timestamp, frame.index)
                   for name, value in frame.metrics.items() if math.isfinite(value)]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        for path in self.store.files(frame.index):  # resumable from any machine
            self.client.log_artifact(self.run_id, str(path), path.parent.name)
        self.frames.append(frame)
        self.bar.update(1)
        error = frame.metrics.get("video/temporal_error")
        self.bar.set_postfix_str(
            ("reused " if reused else "") + f"style {frame.metrics['loss/style']:.3g}"
            + (f" temporal error {error:.1f}" if error is not None else ""), refresh=False)

    def summary(self) -> dict[str, float]:
        """Clip-level metrics: means over the frames (temporal error from frame 1 on)."""
        def mean(name: str, frames: list[Frame]) -> float:
            values = [f.metrics[name] for f in frames if name in f.metrics]
            return float(np.nanmean(values)) if values else math.nan

        made = [f for f in self.frames if "time/frame_s" in f.metrics]
        summary = {
            "video/temporal_error_mean": mean("video/temporal_error", self.frames),
            "video/style_loss_mean": mean("loss/style", self.frames),
            "video/frames": float(len(self.frames)),
            "time/per_frame_s": mean("time/frame_s", made[1:] or made),
        }
        return {name: value for name, value in summary.items() if math.isfinite(value)}


def run_clip(cfg: DictConfig, clip: Clip, styles: list[np.ndarray], blend: list[float],
             loss: LossWeights, network: VGG19Features, optimizer: Optimizer,
             start_image: Callable[[int, np.ndarray], np.ndarray], output_dir: Path,
             tracking_uri: str, input_hashes: dict[str, str]) -> list[Frame]:
    """Stylise ``clip`` in the active MLflow run and write the video when every frame exists."""
    run = mlflow.active_run()
    key = resume_key(cfg, input_hashes)
    store = FrameStore(output_dir)
    mlflow.set_tags({"style_exp.kind": "video", "video.key": key,
                     "video.store": str(output_dir.resolve())})
    if cfg.video.resume:
        with tempfile.TemporaryDirectory() as download_dir:
            earlier = earlier_frames(tracking_uri, run.info.experiment_id, key,
                                     run.info.run_id, Path(download_dir))
            if earlier is not None:
                reused = store.copy_from(earlier[1])
                mlflow.set_tags({"video.resumed_from": earlier[0], "video.reused_frames": reused})

    def problem_for(frame: np.ndarray) -> Problem:
        content, prepared = color.prepare(frame, styles, cfg.color)
        return Problem(content, prepared, blend, loss)

    logger = FrameLogger(run.info.run_id, tracking_uri, store, clip.count, cfg.progress)
    try:
        frames = stylize_video(
            clip.frames(), problem_for, lambda image, frame: color.finish(image, frame, cfg.color),
            start_image, network, optimizer, settings_from(cfg), store, logger,
            jit_compile=cfg.xla)
    finally:
        logger.bar.close()
    mlflow.log_metrics(logger.summary())
    _write_outputs(frames, store, clip, output_dir)
    return frames


def _write_outputs(frames: list[Frame], store: FrameStore, clip: Clip, output_dir: Path) -> None:
    """The video (with the input's sound), a GIF preview and a poster frame, all logged."""
    video = write_video(store.images(len(frames)), output_dir / "output.mp4", clip.fps,
                        clip.source if clip.has_audio else None)
    preview = write_preview(store.images(len(frames)), output_dir / "preview.gif", clip.fps)
    poster = save_image(frames[-1].image, output_dir / "output.png")
    for path in (video, preview, poster):
        mlflow.log_artifact(str(path))
