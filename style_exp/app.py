"""One tracked job: config in, ``output.png`` and an MLflow run out.

This is where Hydra's config meets the library: it validates, loads the inputs,
wires the loop's callback to MLflow and a progress bar, and records the outcome.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from style_exp import cluster, color
from style_exp.config import blend_weights, layer_weights, scale_plan, style_paths, validate
from style_exp.demo import demo_paintings, demo_photo
from style_exp.images import file_sha256, load_image, resize, resize_longest, save_image
from style_exp.losses import LossWeights
from style_exp.optim import AdamSettings, LBFGSSettings
from style_exp.stylize import (
    Interrupted,
    Optimizer,
    Problem,
    Progress,
    Result,
    build_network,
    stylize_scales,
)
from style_exp.tracking import (
    MetricsLogger,
    default_tracking_uri,
    environment_tags,
    flatten,
    library_versions,
    plot_losses,
    sweep_tags,
    tracked_run,
)
from style_exp.video import Frame
from style_exp.video_run import run_clip
from style_exp.videoio import Clip, is_clip, open_clip
from style_exp.weights import IMAGENET_MEAN_RGB, load_weights

THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class Inputs:
    content: np.ndarray  # at `size`
    styles: list[np.ndarray]  # at `style_scale * size`
    labels: list[str]  # content first, then styles: what to call the input copies


def apply_demo_defaults(cfg: DictConfig, overridden: Iterable[str]) -> DictConfig:
    """With no content/style given, run the demo at its small size unless the user chose one."""
    if cfg.content is not None:
        return cfg
    cfg = cfg.copy()
    overridden = set(overridden)
    for key in ("size", "iterations"):
        if key not in overridden:
            cfg[key] = cfg.demo[key]
    return cfg


def load_inputs(cfg: DictConfig, clip: Clip | None = None) -> Inputs:
    """Content and style images at the output's working sizes (a clip's first frame)."""
    style_side = max(1, round(cfg.size * cfg.style_scale))
    if cfg.content is None:
        paintings = demo_paintings(style_side, cfg.demo.styles)
        return Inputs(demo_photo(cfg.size), paintings,
                      ["content_demo", *[f"style_demo_{i}" for i in range(len(paintings))]])
    styles = [load_image(path, style_side) for path in style_paths(cfg.style)]
    content = next(clip.frames()) if clip else load_image(cfg.content, cfg.size)
    return Inputs(content, styles,
                  ["content", *[f"style_{i}" for i in range(len(styles))]])


def initial_image(cfg: DictConfig, content: np.ndarray, styles: list[np.ndarray],
                  rng: np.random.Generator) -> np.ndarray:
    """Where optimisation starts: noise around the mean pixel, the content, the first
    style or a file, blended with ``init.noise_ratio`` of noise."""
    size = (content.shape[1], content.shape[0])
    noise = np.clip(IMAGENET_MEAN_RGB + rng.normal(0.0, cfg.init.noise_scale, content.shape),
                    0.0, 255.0).astype(np.float32)
    start = {
        "noise": lambda: noise,
        "content": lambda: content,
        "style": lambda: resize(styles[0], size),
        "image": lambda: resize(load_image(cfg.init.path), size),
    }[cfg.init.kind]()
    ratio = cfg.init.noise_ratio
    return ((1.0 - ratio) * start + ratio * noise).astype(np.float32)


def frame_start(cfg: DictConfig,
                styles: list[np.ndarray]) -> Callable[[int, np.ndarray], np.ndarray]:
    """Where an independent video frame starts: the configured init, seeded per frame."""

    def start(index: int, frame: np.ndarray) -> np.ndarray:
        content = color.prepare(frame, [], cfg.color)[0]
        return initial_image(cfg, content, styles, np.random.default_rng([cfg.seed, index]))

    return start


def loss_weights(cfg: DictConfig) -> LossWeights:
    return LossWeights(
        content=cfg.loss.content_weight,
        style=cfg.loss.style_weight,
        tv=cfg.loss.tv_weight,
        content_layers=layer_weights("loss.content_layers", list(cfg.loss.content_layers),
                                     cfg.loss.content_layer_weights),
        style_layers=layer_weights("loss.style_layers", list(cfg.loss.style_layers),
                                   cfg.loss.style_layer_weights, cfg.loss.style_layer_exponent),
    )


def optimizer_settings(cfg: DictConfig) -> Optimizer:
    """The optimiser group's values as the loop's settings object."""
    values = {key: value for key, value in cfg.optimizer.items() if key != "name"}
    return LBFGSSettings(**values) if cfg.optimizer.name == "lbfgs" else AdamSettings(**values)


def problem_factory(content: np.ndarray, styles: list[np.ndarray], blend: list[float],
                    loss: LossWeights) -> Callable[[int], Problem]:
    """The problem at any longest side, resized down from the full-size inputs."""
    full_side = max(content.shape[:2])

    def problem_at(side: int) -> Problem:
        ratio = side / full_side
        return Problem(
            resize_longest(content, side),
            [resize_longest(s, max(1, round(max(s.shape[:2]) * ratio))) for s in styles],
            blend, loss)

    return problem_at


class ProgressBar:
    """A terminal progress bar showing the latest losses."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, disable=not enabled, unit="it", dynamic_ncols=True)
        self.position = 0

    def __call__(self, progress: Progress) -> None:
        self.bar.update(progress.step - self.position)
        self.position = progress.step
        m = progress.metrics
        self.bar.set_postfix_str(
            f"total {m['loss/total']:.3g} content {m['loss/content']:.3g} "
            f"style {m['loss/style']:.3g} tv {m['loss/tv']:.3g}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_hydra_job(cfg: DictConfig) -> Path:
    """The job `run.py` starts: where Hydra put it, what it overrode, which sweep it is in."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    tags = {}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        tags = sweep_tags(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, overrides)
    run(cfg, output_dir, overrides, tags)
    video = output_dir / "output.mp4"
    return video if video.is_file() else output_dir / "output.png"


def input_files(cfg: DictConfig) -> dict[str, str]:
    """Every file the result depends on besides the code and the weights."""
    files = {}
    if cfg.content is not None:
        files["content"] = cfg.content
        files.update({f"style_{i}": path for i, path in enumerate(style_paths(cfg.style))})
    if cfg.init.kind == "image":
        files["init"] = cfg.init.path
    return files


def run(cfg: DictConfig, output_dir: Path, overrides: list[str],
        tags: dict[str, str] | None = None) -> Result | list[Frame]:
    """Run one configured stylisation, tracked in MLflow: an image, or a clip's frames."""
    started = time.perf_counter()
    overridden = [item.split("=", 1)[0].lstrip("+~") for item in overrides]
    cfg = apply_demo_defaults(cfg, overridden)
    uri = cluster.without_credentials(cfg.tracking.uri) or default_tracking_uri()
    output_dir.mkdir(parents=True, exist_ok=True)
    thread_tags = cluster.configure_threads(cfg.threads)
    with tracked_run(uri, cfg.tracking.experiment,
                     tags={**environment_tags(), **thread_tags, **(tags or {})}) as active:
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        mlflow.log_text("\n".join(overrides) + "\n", "overrides.txt")
        validate(cfg)
        scales, scale_iterations = scale_plan(cfg)
        clip = None
        if cfg.content is not None and is_clip(cfg.content):
            video = cfg.video
            clip = open_clip(cfg.content, cfg.size, video.stride, video.max_frames, video.fps)
        if cfg.determinism:
            tf.config.experimental.enable_op_determinism()
        rng = np.random.default_rng(cfg.seed)
        tf.random.set_seed(cfg.seed)
        inputs = load_inputs(cfg, clip)
        record = reproduction_record(cfg, overrides)
        for label, image in zip(inputs.labels, [inputs.content, *inputs.styles], strict=True):
            thumbnail = save_image(_thumbnail(image), output_dir / "inputs" / f"{label}.jpg")
            mlflow.log_artifact(str(thumbnail), "inputs")
        content, styles = color.prepare(inputs.content, inputs.styles, cfg.color)
        init = initial_image(cfg, content, styles, rng)
        weights = load_weights(cfg.model.weights)
        mlflow.set_tag("weights_sha256", weights.sha256)
        mlflow.log_dict({**record, "weights_sha256": weights.sha256}, "reproduce.json")
        loss = loss_weights(cfg)
        blend = blend_weights(cfg.style_weights, len(styles))
        problem_at = problem_factory(content, styles, blend, loss)
        network = build_network(weights, loss, cfg.model.pooling, cfg.precision)
        if clip is not None:
            hashes = {name: entry["sha256"] for name, entry in record["inputs"].items()}
            return run_clip(cfg, clip, inputs.styles,
                            blend, loss, network,
                            optimizer_settings(cfg), frame_start(cfg, styles), output_dir, uri,
                            hashes)
        logger = MetricsLogger(active.info.run_id, uri)
        bar = ProgressBar(sum(scale_iterations), cfg.progress)
        first_step: list[float] = []

        def report(progress: Progress) -> None:
            if not first_step:
                first_step.append(time.perf_counter() - started)
            bar(progress)
            logger(progress)
            if progress.image is not None:
                save_image(progress.image, output_dir / "checkpoints" / f"{progress.step:06d}.png")

        def finish(result: Result) -> None:
            final = color.finish(result.image, resize(inputs.content, result.image.shape[1::-1]),
                                 cfg.color)
            mlflow.set_tag("stop_reason", result.stop_reason)
            _finish(dataclasses.replace(result, image=final), output_dir, started, first_step)

        try:
            result = stylize_scales(problem_at, scales, scale_iterations, network, init,
                                    optimizer_settings(cfg), log_every=cfg.tracking.log_every,
                                    checkpoint_every=cfg.tracking.checkpoint_every,
                                    callback=report, jit_compile=cfg.xla)
        except Interrupted as interrupt:
            finish(interrupt.result)
            raise
        finally:
            bar.close()
        finish(result)
    return result


def reproduction_record(cfg: DictConfig, overrides: list[str]) -> dict[str, object]:
    """What reproducing this run needs beyond its config: input hashes and versions.

    The hashes are also tags (``input_sha256.<name>``) so the UI can show them.
    """
    files = input_files(cfg)
    hashes = {name: file_sha256(path) for name, path in files.items()}
    versions = library_versions()
    mlflow.set_tags({f"input_sha256.{name}": digest for name, digest in hashes.items()})
    mlflow.set_tags({f"version.{name}": value for name, value in versions.items()})
    return {
        "overrides": overrides,
        "inputs": {name: {"path": str(Path(files[name]).resolve()), "sha256": digest}
                   for name, digest in hashes.items()},
        "versions": versions,
        "seed": cfg.seed,
        "determinism": cfg.determinism,
    }


def _finish(result: Result, output_dir: Path, started: float, first_step: list[float]) -> None:
    """Write and log the final image, the loss curve and the timings."""
    output = save_image(result.image, output_dir / "output.png")
    mlflow.log_artifact(str(output))
    if result.history:
        mlflow.log_artifact(str(plot_losses(result.history, output_dir / "loss_curve.png")))
    hydra_dir = output_dir / ".hydra"
    if hydra_dir.is_dir():
        mlflow.log_artifacts(str(hydra_dir), "hydra")
    timings = {"time/total_s": time.perf_counter() - started, "time/steps": result.steps}
    if first_step:
        timings["time/setup_s"] = first_step[0]
    if np.isfinite(result.ms_per_iteration):
        timings["time/per_iteration_ms"] = result.ms_per_iteration
    mlflow.log_metrics(timings)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    if max(image.shape[:2]) <= THUMBNAIL_SIDE:
        return image
    return resize_longest(image, THUMBNAIL_SIDE)
