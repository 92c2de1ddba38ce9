"""The configuration schema: the structured configs Hydra composes and checks against.

Hydra rejects unknown keys and wrong types from these dataclasses; ``parse.py`` then
checks the values and turns the config into a ``RunSpec``. The groups' schemas are
built from the frozen settings classes in ``spec/`` (:func:`hydra_schema`), so each
default is written once, there; the keys only the command line has are defined here.
"""

from __future__ import annotations

import functools
import operator
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

from style_exp.spec.loss import STYLE_STATISTICS, LossSettings
from style_exp.spec.masks import MaskSpec
from style_exp.spec.runspec import Tracking
from style_exp.spec.search import SearchSettings
from style_exp.spec.settings import (
    OPTIMIZERS,
    ClipSettings,
    InitSettings,
    LoopSettings,
    ModelSettings,
    StopSettings,
    ThreadSettings,
    VideoSettings,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Keys that change no pixel of the result: where it is recorded, what the terminal shows,
# threading, and the demo's sizes (already copied into size/iterations when they apply).
NO_EFFECT_KEYS = ("tracking", "progress", "threads", "resources", "demo")
Settings = TypeVar("Settings")


def hydra_schema(name: str, *settings: type,
                 extra: tuple[tuple[str, type, Any], ...] = ()) -> type:
    """A mutable dataclass ``name`` with the fields and defaults of frozen ``settings``
    classes, for Hydra to check keys and types against (tuples become lists); ``extra``
    adds ``(name, type, default)`` fields first. The defaults stay written once, in the
    settings classes.

    The class is made importable as ``style_exp.app.schema.<name>``: a launcher's workers
    (joblib's) unpickle the composed config's classes by reference, and one pickled by
    value loses its dataclass fields.
    """
    specs = [(key, kind, field(default=default)) for key, kind, default in extra]
    for cls in settings:
        hints = get_type_hints(cls)
        for item in fields(cls):
            kind, default = _as_listed(hints[item.name]), item.default
            if isinstance(default, tuple):
                specs.append((item.name, kind, field(default_factory=lambda d=default: list(d))))
            else:
                specs.append((item.name, kind, field(default=default)))
    schema = make_dataclass(name, specs)
    schema.__module__ = __name__
    globals()[name] = schema
    return schema


def _as_listed(kind: Any) -> Any:
    """``tuple[X, ...]`` as ``list[X]`` (also inside ``| None``), which OmegaConf takes."""
    if get_origin(kind) is tuple:
        return list[get_args(kind)[0]]
    if isinstance(kind, types.UnionType):
        return functools.reduce(operator.or_, (_as_listed(arg) for arg in get_args(kind)))
    return kind


ModelConfig = hydra_schema("ModelConfig", ModelSettings)
# The loss/style group fills ``style`` with one of STATISTIC_SCHEMAS.
LossConfig = hydra_schema("LossConfig", LossSettings, extra=(("style", Any, MISSING),))
InitConfig = hydra_schema("InitConfig", InitSettings)
StopConfig = hydra_schema("StopConfig", StopSettings)
ThreadsConfig = hydra_schema("ThreadsConfig", ThreadSettings)
# Used when ``content`` is a video file or a directory of frames: the frame loop's
# settings plus which frames to read, the output's frame rate and resuming.
VideoConfig = hydra_schema("VideoConfig", VideoSettings, ClipSettings)
# An Optuna search (hydra/sweeper=optuna): where its study lives, seeds per trial.
SearchConfig = hydra_schema("SearchConfig", SearchSettings)


def optimizer_schema(settings: type) -> type:
    """The optimiser's (or style statistic's) settings plus the ``name`` that says which
    they are for."""
    name = f"{settings.__name__.removesuffix('Settings')}Config"
    return hydra_schema(name, settings, extra=(("name", str, settings.name),))


# The optimizer group's schemas (AdamConfig, LBFGSConfig), made when this module loads.
OPTIMIZER_SCHEMAS = {name: optimizer_schema(settings) for name, settings in OPTIMIZERS.items()}
# The loss/style group's (GramConfig, MeanStdConfig, WassersteinConfig).
STATISTIC_SCHEMAS = {name: optimizer_schema(settings)
                     for name, settings in STYLE_STATISTICS.items()}


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: sqlite:///<cwd>/runs/mlflow.db
    experiment: str = "style_exp"
    log_every: int = LoopSettings.log_every
    checkpoint_every: int = 100  # 0 = no intermediate images
    outage_wait_min: float = Tracking.outage_wait_min  # a server away at the run's end


@dataclass
class ResourcesConfig:
    """What each job asks a cluster scheduler (Ray, SLURM) for; its threads follow the CPUs."""

    cpus: int = 1
    gpus: int = 0


@dataclass
class MemoryConfig:
    """What a run does when the memory estimate says it does not fit."""

    retry: str = "tiles"  # tiles: a still runs tile by tile where that fits | none: refuse


@dataclass
class SweepConfig:
    """How a sweep (``-m``) treats the runs an earlier one left."""

    # true: the latest sweep of the same command goes on; or a sweep id: that one does.
    # Its jobs that already have a FINISHED run are skipped, the others run.
    resume: Any = False


@dataclass
class MasksConfig:
    """Spatial control: a label image and a style, blend and weight per colour
    (``style_exp/spec/masks.py``)."""

    content: str | None = None  # label image, or a clip's folder of one per frame; none: no masks
    regions: list[Any] = field(default_factory=list)  # [{color:[R,G,B],style:...,weight:...}]
    feather: float = MaskSpec.feather  # px


@dataclass
class DemoConfig:
    """Used when no content/style is given: keeps `python run.py` to a couple of minutes."""

    size: int = 256
    iterations: int = 300
    styles: int = 1  # how many demo paintings (2 for blend sweeps)


@dataclass
class Config:
    content: str | None = None  # path; none = the embedded demo photo
    style: Any = None  # path or list of paths; none = the embedded demo painting
    style_weights: list[float] | None = None  # blend weights, default equal
    size: int = 512  # longest side of the output, px
    style_scale: float = 1.0  # style images' longest side = style_scale * size
    iterations: int = 1000  # a cap: the run stops earlier once converged (see stop)
    seed: int = 0
    progress: bool = True  # progress bar on the terminal
    color: str = "none"  # none | luminance | histogram
    # auto: bfloat16 where the hardware computes it natively, else float32 | float32 |
    # bfloat16 | float16 (the convolutions; the losses stay float32)
    precision: str = "auto"
    xla: bool = False  # compile the step with XLA
    determinism: bool = False  # deterministic TF ops: reruns give pixel-identical images
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)
    scales: list[int] = field(default_factory=list)  # coarse-to-fine sizes, last = size
    scale_iterations: list[int] | None = None  # per scale; default: iterations each
    # px: scales larger than this are optimised tile by tile (0: never); auto: tiles as
    # large as the memory allows, and none when the whole image fits
    tiles: Any = 0
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: Any = MISSING  # AdamConfig or LBFGSConfig, chosen by the optimizer group
    init: InitConfig = MISSING
    stop: StopConfig = field(default_factory=StopConfig)
    video: VideoConfig = MISSING
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


def register_schemas() -> None:
    """Make the schemas available to the YAML files in ``conf/`` via their defaults lists,
    and the list of config groups to ``--help``. (The launcher presets are registered
    by ``run.py``: ``cluster.register_launchers``.)"""
    OmegaConf.register_new_resolver("style_exp.groups", config_groups, replace=True)
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="loss", name="loss_schema", node=LossConfig)
    for name, schema in STATISTIC_SCHEMAS.items():
        store.store(group="loss/style", name=f"{name}_schema", node=schema)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="optimizer", name=f"{name}_schema", node=schema)
    store.store(group="init", name="init_schema", node=InitConfig)
    store.store(group="video", name="video_schema", node=VideoConfig)


def config_groups(chosen: Mapping[str, Any]) -> str:
    """``group: option, option*`` per group in ``conf/``, ``*`` marking ``chosen``'s option.

    Read from the YAML files, so the schemas Hydra's own list shows are left out.
    """
    lines = []
    for group in sorted(path for path in CONF_DIR.iterdir()
                        if path.is_dir() and path.name != "hydra"):
        options = sorted(path.stem for path in group.glob("*.yaml"))
        marked = [f"{o}*" if o == chosen.get(group.name) else o for o in options]
        lines.append(f"  {group.name + ':':<12}{', '.join(marked)}")
    return "\n".join(lines)


def settings_from(node: Any, settings: type[Settings]) -> Settings:
    """The library's settings object holding a config node's values for its fields (lists
    as tuples, as the frozen settings keep them)."""
    return settings(**{f.name: _tupled(node[f.name]) for f in fields(settings)})


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, ListConfig)) else value


# MLflow's own defaults retry a dead server for minutes (247 s measured); a run queues its
# records after these instead, and goes on (app/outbox.py).
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` (a team server), else a SQLite store in ``runs/`` here."""
    local = f"sqlite:///{Path('runs').resolve() / 'mlflow.db'}"
    return os.environ.get("MLFLOW_TRACKING_URI") or local
