"""Checks made before TensorFlow loads and before an MLflow run exists.

A mistake should cost seconds and leave nothing behind, not load TensorFlow, open a
run and fail it half a minute later. So every config value, every input file (it
exists and its header reads), the tracking store and the memory the run will need
are checked here, importing neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig

from style_exp.app.schema import (
    default_tracking_uri,
    optimizer_settings,
    style_paths,
    style_side,
    validate,
)
from style_exp.engine import memory
from style_exp.engine.device import host_precision
from style_exp.engine.images import fitted_size, image_size
from style_exp.engine.videoio import is_clip, open_clip
from style_exp.engine.weights import WEIGHT_SOURCES, weights_file
from style_exp.spec.errors import RunFailure, UserError
from style_exp.spec.settings import VGG19_LAYERS

SERVER_TIMEOUT_S = 10.0  # one request, no retries: an unreachable server fails in this time
SQLITE_HEADER = b"SQLite format 3\x00"
LOCAL_STORE_HINT = "or use a local store: tracking.uri=sqlite:///runs/mlflow.db"


@dataclass(frozen=True)
class InputSizes:
    """The inputs' own (width, height), read from their headers."""

    content: tuple[int, int]
    styles: tuple[tuple[int, int], ...]
    video: bool = False


def check(cfg: DictConfig) -> None:
    """Everything that can be known wrong before the run starts, each naming its key, file or
    URI. ``cfg`` has the demo's defaults applied (``config.with_demo_defaults``)."""
    validate(cfg)
    sizes = input_sizes(cfg)
    check_tracking(cfg.tracking.uri or default_tracking_uri())
    check_memory(cfg, sizes)


def tile_side(cfg: DictConfig, sizes: InputSizes | None = None) -> int:
    """``tiles`` as a side in px: ``auto`` asks the memory estimate (0: the image fits whole)."""
    if cfg.tiles != "auto":
        return int(cfg.tiles)
    sizes = sizes or input_sizes(cfg)
    return max(0, memory.largest_tile(workload(cfg, sizes, cfg.size, 0),
                                      memory.host_budget().bytes))


def input_sizes(cfg: DictConfig) -> InputSizes:
    """Every input file checked (it exists, its header reads) and its size."""
    if cfg.model.weights not in WEIGHT_SOURCES:
        weights_file(cfg.model.weights)
    if cfg.init.kind == "image":
        image_size(cfg.init.path)
    if cfg.content is None:
        from style_exp.engine.demo import demo_photo_file

        side = style_side(cfg.size, cfg.style_scale)
        return InputSizes(image_size(demo_photo_file()), ((side, side),) * cfg.demo.styles)
    styles = tuple(image_size(path) for path in style_paths(cfg.style))
    if is_clip(cfg.content):
        clip = open_clip(cfg.content, cfg.size, cfg.video.stride, cfg.video.max_frames,
                         cfg.video.fps)
        return InputSizes(clip.size, styles, video=True)
    return InputSizes(image_size(cfg.content), styles)


def workload(cfg: DictConfig, sizes: InputSizes, size: int, tile: int) -> memory.Workload:
    """What the run asks of memory at output size ``size`` with tiles of ``tile`` px."""
    layers = [*cfg.loss.content_layers, *cfg.loss.style_layers]
    side = style_side(size, cfg.style_scale)
    optimizer = optimizer_settings(cfg.optimizer)
    return memory.Workload(
        content=fitted_size(sizes.content, size),
        styles=tuple(fitted_size(style, side) for style in sizes.styles),
        deepest_layer=max(layers, key=VGG19_LAYERS.index),
        precision=host_precision(cfg.precision),
        optimizer_images=optimizer.state_images(),
        history_images=optimizer.history_images(),
        sources=(sizes.content, *sizes.styles),
        video=sizes.video,
        tile=tile,
    )


def check_memory(cfg: DictConfig, sizes: InputSizes) -> None:
    """Refuse a run whose estimated peak exceeds what the process may use (host, and the GPU
    when there is one), saying what would fit."""
    checks = [(memory.estimate_bytes, memory.host_budget())]
    gpu = memory.gpu_budget()
    if gpu is not None:
        checks.append((memory.device_bytes, gpu))
    tile = tile_side(cfg, sizes)
    for need_of, budget in checks:
        need = need_of(workload(cfg, sizes, cfg.size, tile))
        if need > budget.bytes:
            raise RunFailure(f"not enough memory: the run needs about {_gb(need)} at its "
                             f"peak, {_gb(budget.bytes)} is available ({budget.source})",
                             f"size={cfg.size}", _what_fits(cfg, sizes, need_of, budget))


def _what_fits(cfg: DictConfig, sizes: InputSizes, need_of: Callable[[memory.Workload], int],
               budget: memory.Budget) -> str:
    """The largest size that fits, and the larger one bfloat16 would allow."""

    def largest(precision: str) -> int:
        changed = cfg.copy()
        changed.precision = precision
        return memory.largest_fitting(
            lambda size: need_of(workload(changed, sizes, size, tile_side(cfg, sizes))),
            budget.bytes, cfg.size)

    fits = largest(cfg.precision)
    if cfg.tiles == 0 and memory.largest_tile(workload(cfg, sizes, cfg.size, 0),
                                              budget.bytes) > 0:
        return f"tiles=auto fits at size={cfg.size}, or size={fits} untiled"
    if not fits:
        return "no size fits; free some memory"
    if host_precision(cfg.precision) != "float32":
        return f"size={fits} fits"
    return f"size={fits} fits, or precision=bfloat16 with size={largest('bfloat16')}"


def _gb(count: int) -> str:
    return f"{count / 2**30:.1f} GB"


def check_tracking(uri: str) -> None:
    """The tracking store can be opened and written: a local SQLite file or folder, or a
    server that answers within SERVER_TIMEOUT_S."""
    scheme = urlparse(uri).scheme
    if uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri.removeprefix("sqlite:///")), uri)
    elif scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in ("", "file"):
        _check_folder(Path(urlparse(uri).path if scheme else uri), uri)


def _check_sqlite(database: Path, uri: str) -> None:
    _check_folder(database.parent, uri)
    if not database.exists():
        return
    if not database.is_file():
        raise UserError("the tracking store is not a file", str(database))
    try:
        with open(database, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise sqlite3.DatabaseError("file is not a database")
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as connection:
            connection.execute("SELECT name FROM sqlite_master").fetchall()
    except (OSError, sqlite3.Error) as error:
        raise RunFailure(f"the tracking store cannot be read: {error}", str(database),
                         "move it aside (a new one is made) or point tracking.uri elsewhere"
                         ) from error
    if not os.access(database, os.W_OK):
        raise RunFailure("the tracking store is read-only", str(database))


def _check_folder(folder: Path, uri: str) -> None:
    """The store's folder is a folder (or can be made one) and writable."""
    for candidate in (folder, *folder.parents):
        if not candidate.exists():
            continue
        if not candidate.is_dir():
            raise UserError(f"the tracking store's folder {candidate} is a file", uri,
                            "point tracking.uri at a path under a directory")
        if not os.access(candidate, os.W_OK):
            raise RunFailure("the tracking store's folder is not writable", str(candidate))
        return


def _check_server(uri: str) -> None:
    """One request to the server's health endpoint; any HTTP answer means it is there."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RunFailure(f"tracking server not reachable within {SERVER_TIMEOUT_S:.0f} s: "
                         f"{reason}", uri, f"start it, {LOCAL_STORE_HINT}") from error
