"""Checks made before TensorFlow loads and before an MLflow run exists, and the run's plan.

A mistake should cost seconds and leave nothing behind, not load TensorFlow, open a
run and fail it half a minute later. The config's values were checked when it was
parsed (``parse.py``); here every input file (it exists and its header reads), the
tracking store and the memory the run will need are checked, importing neither
TensorFlow nor MLflow, and what is decided from them (the tile) becomes the
:class:`Plan` the run follows.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from style_exp.app.parse import config_key
from style_exp.engine import memory
from style_exp.engine.device import host_precision
from style_exp.engine.images import file_sha256, fitted_size, image_size
from style_exp.engine.masks import check_labels
from style_exp.engine.videoio import Clip, open_clip
from style_exp.engine.weights import WEIGHT_SOURCES, weights_file
from style_exp.spec.errors import RunFailure, UserError
from style_exp.spec.runspec import AUTO, RunSpec, style_side
from style_exp.spec.settings import VGG19_LAYERS

SERVER_TIMEOUT_S = 10.0  # one request, no retries: an unreachable server fails in this time
SQLITE_HEADER = b"SQLite format 3\x00"
LOCAL_STORE_HINT = "or use a local store: tracking.uri=sqlite:///runs/mlflow.db"


@dataclass(frozen=True)
class InputSizes:
    """The inputs' own (width, height), read from their headers, and a clip as checked:
    the job reads the frames and label images found here, not a second listing of them."""

    content: tuple[int, int]
    styles: tuple[tuple[int, int], ...]
    clip: Clip | None = None  # content is a clip: its frames at the working size
    labels: tuple[Path, ...] = ()  # the label image of each of its frames (masks.content=DIR)

    @property
    def video(self) -> bool:
        """Whether content is a clip (the memory estimate adds its frame buffers)."""
        return self.clip is not None


@dataclass(frozen=True)
class Plan:
    """A run that passed its preflight: its spec, its inputs' sizes (a clip's frames and
    label images as checked) and the tile it uses.

    ``tile`` (px; 0: none) is decided here once, ``tiles=auto`` from one reading of the
    free memory: the tile the memory check approved is the tile the run uses.
    """

    spec: RunSpec
    sizes: InputSizes
    tile: int
    peak_bytes: int  # the host memory estimate at that tile
    input_hashes: Mapping[str, str] = field(default_factory=dict)  # sha256 by input name
    # Why the plan tiles a run that was asked to run whole (``memory.retry=tiles``), or "".
    retried: str = ""

    @property
    def key(self) -> str:
        """The run's config key: runs with equal keys make the same result."""
        return config_key(self.spec.record, self.input_hashes, ("resume",))

    @property
    def tiled(self) -> bool:
        """Whether any scale is optimised by tiles."""
        return 0 < self.tile < self.spec.size


def check(spec: RunSpec) -> Plan:
    """Everything that can be known wrong before the run starts, each naming its key, file
    or URI, and the plan for the run."""
    sizes = input_sizes(spec)
    check_tracking(spec.tracking.uri)
    host = memory.host_budget()
    tile, retried = tile_side(spec, sizes, host), ""
    try:
        peak = check_memory(spec, sizes, tile, host)
    except NotEnoughMemory as refused:
        tile = _tile_instead(spec, sizes, host, refused)
        peak = check_memory(spec, sizes, tile, host)
        retried = f"{refused.what}; in tiles of {tile} px it fits (memory.retry=tiles)"
    return Plan(spec, sizes, tile, peak,
                {name: file_sha256(path) for name, path in spec.files().items()}, retried)


class NotEnoughMemory(RunFailure):
    """The run's estimated peak exceeds what the process may use."""


def _tile_instead(spec: RunSpec, sizes: InputSizes, host: memory.Budget,
                  refused: NotEnoughMemory) -> int:
    """The tile that lets a still asked to run whole fit (``memory.retry=tiles``); else the
    refusal stands."""
    if not spec.retry_with_tiles or spec.tiles != 0 or sizes.video:
        raise refused
    tile = memory.largest_tile(workload(spec, sizes, spec.size, 0), host.bytes)
    if tile <= 0:
        raise refused
    return tile


def tile_side(spec: RunSpec, sizes: InputSizes, budget: memory.Budget) -> int:
    """``tiles`` as a side in px: ``auto`` asks the memory estimate (0: the image fits whole)."""
    if spec.tiles != AUTO:
        return int(spec.tiles)
    return max(0, memory.largest_tile(workload(spec, sizes, spec.size, 0), budget.bytes))


def input_sizes(spec: RunSpec) -> InputSizes:
    """Every input file checked (it exists, its header reads) and its size."""
    if spec.model.weights not in WEIGHT_SOURCES:
        weights_file(spec.model.weights)
    if spec.init.kind == "image":
        image_size(spec.init.path)
    inputs = spec.inputs
    if inputs.content is None:
        from style_exp.engine.demo import demo_photo_file

        side = spec.style_side
        return InputSizes(image_size(demo_photo_file()), ((side, side),) * inputs.demo_styles)
    styles = tuple(image_size(path) for path in inputs.styles)
    clip = None if inputs.clip is None else open_clip(
        inputs.content, spec.size, inputs.clip.stride, inputs.clip.max_frames, inputs.clip.fps)
    labels = () if inputs.masks is None else check_labels(inputs.masks, clip)
    if clip is not None:
        return InputSizes(clip.size, styles, clip, labels)
    return InputSizes(image_size(inputs.content), styles)


def workload(spec: RunSpec, sizes: InputSizes, size: int, tile: int,
             precision: str | None = None) -> memory.Workload:
    """What the run asks of memory at output size ``size`` with tiles of ``tile`` px (and
    at another ``precision`` than the spec's, to say what would fit)."""
    side = style_side(size, spec.style_scale)
    optimizer = spec.loop.optimizer
    return memory.Workload(
        content=fitted_size(sizes.content, size),
        styles=tuple(fitted_size(style, side) for style in sizes.styles),
        deepest_layer=max(spec.loss.layers, key=VGG19_LAYERS.index),
        precision=host_precision(precision or spec.precision),
        optimizer_images=optimizer.state_images(),
        history_images=optimizer.history_images(),
        sources=(sizes.content, *sizes.styles),
        video=sizes.video,
        tile=tile,
    )


def check_memory(spec: RunSpec, sizes: InputSizes, tile: int, host: memory.Budget) -> int:
    """Refuse a run whose estimated peak exceeds what the process may use (host, and the GPU
    when there is one), saying what would fit; the host estimate."""
    checks = [(memory.estimate_bytes, host)]
    gpu = memory.gpu_budget()
    if gpu is not None:
        checks.append((memory.device_bytes, gpu))
    for need_of, budget in checks:
        need = need_of(workload(spec, sizes, spec.size, tile))
        if need > budget.bytes:
            raise NotEnoughMemory(f"not enough memory: the run needs about {_gb(need)} at its "
                             f"peak, {_gb(budget.bytes)} is available ({budget.source})",
                             f"size={spec.size}", _what_fits(spec, sizes, tile, need_of, budget))
    return memory.estimate_bytes(workload(spec, sizes, spec.size, tile))


def _what_fits(spec: RunSpec, sizes: InputSizes, tile: int,
               need_of: Callable[[memory.Workload], int], budget: memory.Budget) -> str:
    """The largest size that fits, and the larger one bfloat16 would allow."""

    def largest(precision: str) -> int:
        return memory.largest_fitting(
            lambda size: need_of(workload(spec, sizes, size, tile, precision)),
            budget.bytes, spec.size)

    fits = largest(spec.precision)
    if spec.tiles == 0 and memory.largest_tile(workload(spec, sizes, spec.size, 0),
                                               budget.bytes) > 0:
        return f"tiles=auto fits at size={spec.size}, or size={fits} untiled"
    if not fits:
        return "no size fits; free some memory"
    if host_precision(spec.precision) != "float32":
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
