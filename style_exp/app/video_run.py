"""The tracked video job: a clip in, ``output.mp4``, frames and a preview out, one MLflow run.

Per-frame metrics use the frame index as the step. Every finished frame is on disk
at once; with ``video.resume=true`` a new run of the same config and inputs copies
the finished frames of the latest earlier run (found through MLflow by a key of
both) and goes on from there.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from style_exp.app.console import ProgressBar
from style_exp.app.job import Job
from style_exp.app.parse import config_key
from style_exp.app.tracking import MetricsLogger, active
from style_exp.engine import stopping
from style_exp.engine.images import save_image
from style_exp.engine.progress import Progress
from style_exp.engine.video import Frame, FrameStore, clip_summary, stylize_video
from style_exp.engine.videoio import Clip, write_preview, write_video

# Video keys that change neither which frames are made nor how: left out of the resume key.
NOT_IN_VIDEO_KEY = ("resume", "max_frames", "fps")
FRAME_FOLDERS = ("frames", "working", "metrics")  # a FrameStore's layout, mirrored in artifacts


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


def run_clip(job: Job, output_dir: Path, input_hashes: dict[str, str]) -> list[Frame]:
    """Stylise the job's clip in the active MLflow run; write the video once every frame exists."""
    spec, run = job.spec, active()
    tracking_uri = spec.tracking.uri
    key = config_key(spec.record, input_hashes, NOT_IN_VIDEO_KEY)
    store = FrameStore(output_dir)
    run.set_tags({"style_exp.kind": "video", "video.key": key,
                  "video.store": str(output_dir.resolve())})
    if spec.inputs.clip.resume:
        with tempfile.TemporaryDirectory() as download_dir:
            earlier = earlier_frames(tracking_uri, run.info.experiment_id, key,
                                     run.info.run_id, Path(download_dir))
            if earlier is not None:
                reused = store.copy_from(earlier[1])
                run.set_tags({"video.resumed_from": earlier[0], "video.reused_frames": reused})

    logger = MetricsLogger(run)
    bar = ProgressBar(job.clip.count, spec.progress, unit="frame")

    @stopping.deferred()  # a stop waits for the frame's writes to the store
    def on_frame(frame: Frame, _reused: bool) -> None:
        progress = Progress(frame.index, job.clip.count, frame.metrics)
        logger(progress)
        for path in store.files(frame.index):  # resumable from any machine
            run.log_artifact(str(path), path.parent.name)
        bar(dataclasses.replace(progress, step=frame.index + 1))

    try:
        frames = stylize_video(job.clip.frames(), job, job.network, spec.loop, spec.video, store,
                               spec.iterations, on_frame)
    finally:
        bar.close()
    run.log_metrics(clip_summary(frames))
    _write_outputs(frames, store, job.clip, output_dir)
    return frames


def _write_outputs(frames: list[Frame], store: FrameStore, clip: Clip, output_dir: Path) -> None:
    """The video (with the input's sound), a GIF preview and a poster frame, all logged."""
    video = write_video(store.images(len(frames)), output_dir / "output.mp4", clip.fps,
                        clip.source if clip.has_audio else None)
    preview = write_preview(store.images(len(frames)), output_dir / "preview.gif", clip.fps)
    poster = save_image(frames[-1].image, output_dir / "output.png")
    for path in (video, preview, poster):
        active().log_artifact(str(path))
