"""A sweep's identity: its id, its swept keys and each job's tags, whatever the launcher.

Every job of a sweep must agree on these without talking to the others: the id comes
from Hydra's sweep directory, which all jobs share; a job on a cluster, which may not
see that directory, gets the id and the swept keys from the driver's environment
(``cluster.worker_env`` puts them there). Plain values only: no MLflow, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

SWEEP_ENV = "STYLE_EXP_SWEEP"  # {"id": ..., "swept": [...]}, computed by the driver


def sweep_id(sweep_dir: Path) -> str:
    """The id every job of one sweep shares: its Hydra sweep directory, made readable.

    Hydra's sweep directory is the one thing all jobs of a sweep know whatever the
    launcher (separate processes included); a short hash of its full path keeps two
    sweeps started in the same second in different places apart.
    """
    resolved = sweep_dir.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:6]
    return f"{resolved.parent.name}_{resolved.name}-{digest}"


def driver_sweep() -> tuple[str, set[str]] | None:
    """The sweep's id and swept keys as the driver sent them, if this job came from one."""
    text = os.environ.get(SWEEP_ENV)
    if not text:
        return None
    sent = json.loads(text)
    return sent["id"], set(sent["swept"])


def sweep_tags(sweep_dir: Path, job_number: int, job_overrides: list[str]) -> dict[str, str]:
    """Tags that group one sweep's runs and carry each run's swept values.

    A job on a cluster gets the sweep's identity from the driver (see ``driver_sweep``);
    elsewhere it reads it from the sweep directory.
    """
    sweep, swept = driver_sweep() or sweep_identity(sweep_dir)
    tags = {"sweep_id": sweep, "sweep.job": str(job_number)}
    for override in job_overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in swept:
            tags[f"sweep.{key.lstrip('+~')}"] = value
    return tags


def sweep_identity(sweep_dir: Path) -> tuple[str, set[str]]:
    """The sweep's id and swept keys, read back from the ``multirun.yaml`` Hydra writes in
    the sweep directory before the first job starts."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return sweep_id(sweep_dir), set()
    hydra = OmegaConf.load(multirun).hydra
    return sweep_id(sweep_dir), swept_keys(list(hydra.overrides.task),
                                           hydra.sweeper.get("params"))


def swept_keys(command_line: list[str], sweeper_params: Mapping[str, Any] | None) -> set[str]:
    """The keys the sweep's command line (or the sweeper's params) gave several values."""
    parsed = OverridesParser.create().parse_overrides(command_line)
    return {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params or {})


def swept_values(tags: Mapping[str, str]) -> dict[str, str]:
    """A run's swept values from its ``sweep.<key>`` tags, by key."""
    return {key.removeprefix("sweep."): value for key, value in tags.items()
            if key.startswith("sweep.") and key != "sweep.job"}
