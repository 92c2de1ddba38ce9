"""One tracked run: a plan in, ``output.png`` (or a video) and an MLflow run out.

The run is recorded here: config and overrides, the inputs' thumbnails and hashes,
progress, the result and its outcome. Making the plan's job ready is ``job.py``'s
work; the optimisation is the engine's. :func:`execute` serves ``run.py``'s jobs and
``style_exp.reproduce`` alike (both through ``cli.execute_checked``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from style_exp.app.console import ProgressBar, run_summary
from style_exp.app.job import Job, prepare
from style_exp.app.labels import quality_text, run_name, run_note
from style_exp.app.outbox import QUEUE_DIR, unless_unreachable
from style_exp.app.parse import overridden_keys
from style_exp.app.preflight import Plan
from style_exp.app.resources import configure_threads
from style_exp.app.runs import liveness_tags, reap
from style_exp.app.sweeps import swept_values
from style_exp.app.tracking import (
    NOTE_TAG,
    OUTPUT_IMAGES,
    PROGRESS_IMAGES,
    RUN_KEY_TAG,
    MetricsLogger,
    active,
    environment_tags,
    library_versions,
    log_image,
    plot_losses,
    run_params,
    tracked_run,
    ui_command,
)
from style_exp.app.video_run import run_clip
from style_exp.app.views import experiment_view, run_image_url
from style_exp.engine import stopping
from style_exp.engine.images import resize_longest, save_image
from style_exp.engine.progress import Interrupted, Progress, Result
from style_exp.engine.stylize import stylize_scales
from style_exp.engine.video import Frame
from style_exp.spec.runspec import Provenance

THUMBNAIL_SIDE = 256
log = logging.getLogger(__name__)


def output_path(output_dir: Path) -> Path:
    """The run's result: its video when it made one, else its image."""
    video = output_dir / "output.mp4"
    return video if video.is_file() else output_dir / "output.png"


# Told each checkpoint's step and metrics (quality included); a returned text stops the
# run there, best image kept, saying why (a search's pruner: ``study.TrialJudge``).
Checkpoint = Callable[[int, dict[str, float]], "str | None"]


def execute(plan: Plan, output_dir: Path, provenance: Provenance,
            on_checkpoint: Checkpoint | None = None) -> Result | list[Frame]:
    """Run the planned stylisation, tracked in MLflow: an image, or a clip's frames.

    The plan has passed its preflight, so its values and inputs are known to be good
    before a run is created for it. Every run is tagged with its config key (``Plan.key``),
    by which a resumed sweep finds the jobs it has finished (``cli.execute_checked``).
    """
    started = time.perf_counter()
    spec = plan.spec
    uri = spec.tracking.uri
    hashes = dict(plan.input_hashes)
    output_dir.mkdir(parents=True, exist_ok=True)
    tags = {**configure_threads(spec.threads), **provenance.tags, RUN_KEY_TAG: plan.key}
    if plan.retried:
        tags["memory.retry"] = plan.retried
    name = run_name(spec.inputs, swept_values(tags))
    with tracked_run(uri, spec.tracking.experiment, run_name=name,
                     tags={**environment_tags(), **liveness_tags(), **tags},
                     queue=output_dir / QUEUE_DIR,
                     outage_wait_s=60 * spec.tracking.outage_wait_min) as run:
        with unless_unreachable():
            reap(uri)  # runs of this store whose process died are marked FAILED
        log.info("Run '%s' (MLflow run %s) writes to %s", name, run.info.run_id, output_dir)
        run.log_params(run_params(spec.record, overridden_keys(provenance.overrides)))
        run.log_text(yaml.safe_dump(dict(spec.record), sort_keys=False, allow_unicode=True),
                     "config.yaml")
        run.log_text("\n".join(provenance.overrides) + "\n", "overrides.txt")
        job = prepare(plan)
        reproduction_record(job, provenance.overrides, hashes)
        _log_inputs(job, output_dir)
        if job.clip is not None:
            outcome = run_clip(job, output_dir, hashes)
        else:
            outcome = _run_still(job, output_dir, MetricsLogger(run), started, on_checkpoint)
    info = run.info
    quality = quality_text(outcome.metrics) if isinstance(outcome, Result) else ""
    shown = output_path(output_dir)
    log.info(run_summary(name, info.run_id, shown, quality,
                         run_image_url(uri, info.experiment_id, info.run_id, shown.name),
                         ui_command(uri), experiment_view(uri, info.experiment_id)))
    return outcome


def _run_still(job: Job, output_dir: Path, logger: MetricsLogger, started: float,
               on_checkpoint: Checkpoint | None = None) -> Result:
    """Optimise the image (coarse to fine if asked), reporting every logged step."""
    spec = job.spec
    bar = ProgressBar(sum(scale.iterations for scale in spec.scales), spec.progress)
    first_step: list[float] = []
    start = job.output_image(job.init)
    log_image(start, PROGRESS_IMAGES, 0)

    def report(progress: Progress) -> str | None:
        if not first_step:
            first_step.append(time.perf_counter() - started)
        with stopping.deferred():  # a stop waits for the step's writes to the store
            if progress.image is not None:  # a checkpoint: its image as it would be output
                image = job.output_image(progress.image)
                progress = dataclasses.replace(
                    progress, image=image, metrics={**progress.metrics, **job.quality(image)})
                save_image(image, output_dir / "checkpoints" / f"{progress.step:06d}.png")
            bar(progress)
            logger(progress)
            if progress.image is None or on_checkpoint is None:
                return None
            return on_checkpoint(progress.step, progress.metrics)

    @stopping.deferred()
    def conclude(result: Result) -> Result:
        """The result as output (colours restored), measured, written and described."""
        # The start's distances too, measured now so the first step does not wait for the
        # meter (init=content: once a sweep)
        active().log_metrics(job.quality(start), step=0)
        image = job.output_image(result.image)
        quality = job.quality(image)
        log_image(image, OUTPUT_IMAGES, 0)
        timings = _write_result(dataclasses.replace(result, image=image), output_dir, started,
                                first_step)
        seconds = timings["time/total_s"]
        note = run_note(spec, image.shape[1::-1], result.steps, quality, seconds)
        active().log_batch(quality, step=result.steps,
                           tags={"stop_reason": result.stop_reason, NOTE_TAG: note})
        active().log_metrics(timings)
        return dataclasses.replace(result, metrics={**result.metrics, **quality,
                                                    "time/total_s": seconds})

    try:
        result = stylize_scales(job.problem_at, spec.scales, job.network, job.init, spec.loop,
                                callback=report, tile=job.tile, workspaces=job.workspaces)
    except Interrupted as interrupt:
        conclude(interrupt.result)
        raise
    finally:
        bar.close()
    return conclude(result)


def _log_inputs(job: Job, output_dir: Path) -> None:
    """Small copies of the inputs."""
    for label, image in zip(job.inputs.labels, [job.inputs.content, *job.inputs.styles],
                            strict=True):
        thumbnail = save_image(_thumbnail(image), output_dir / "inputs" / f"{label}.jpg")
        active().log_artifact(str(thumbnail), "inputs")


def reproduction_record(job: Job, overrides: tuple[str, ...],
                        hashes: dict[str, str]) -> dict[str, object]:
    """What reproducing this run needs beyond its config: input and weight hashes, versions.

    Logged as ``reproduce.json``; the hashes, versions and weights' digest are also tags
    (``input_sha256.<name>``, ``version.<name>``) so the UI can show them, all in one call
    with what precision=auto chose (a param to compare runs by, a tag to filter them by).
    """
    files = job.spec.files()
    versions = dict(library_versions())
    active().log_batch(params={"compute_precision": job.precision}, tags={
        "compute_precision": job.precision, "weights_sha256": job.weights_sha256,
        **{f"input_sha256.{name}": digest for name, digest in hashes.items()},
        **{f"version.{name}": value for name, value in versions.items()}})
    record = {
        "overrides": list(overrides),
        "inputs": {name: {"path": str(Path(files[name]).resolve()), "sha256": digest}
                   for name, digest in hashes.items()},
        "versions": versions,
        "seed": job.spec.seed,
        "determinism": job.spec.determinism,
        "compute_precision": job.precision,  # what precision=auto chose on this machine
        "weights_sha256": job.weights_sha256,
    }
    active().log_dict(record, "reproduce.json")
    return record


def _write_result(result: Result, output_dir: Path, started: float,
                  first_step: list[float]) -> dict[str, float]:
    """Write and log the final image and the loss curve; the run's timings (to log)."""
    output = save_image(result.image, output_dir / "output.png")
    active().log_artifact(str(output))
    if result.history:
        active().log_artifact(str(plot_losses(result.history, output_dir / "loss_curve.png")))
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        active().log_artifacts(str(hydra_dir), "hydra")
    timings = {"time/total_s": time.perf_counter() - started, "time/steps": result.steps}
    if first_step:
        timings["time/setup_s"] = first_step[0]
    if np.isfinite(result.ms_per_iteration):
        timings["time/per_iteration_ms"] = result.ms_per_iteration
    return timings


def _thumbnail(image: np.ndarray) -> np.ndarray:
    if max(image.shape[:2]) <= THUMBNAIL_SIDE:
        return image
    return resize_longest(image, THUMBNAIL_SIDE)
