"""What a job on a cluster needs from the driver, and how it uses what the scheduler gave it.

Ray runs each job in a worker process that does not inherit the driver's shell, so
the Ray launcher preset (``style_exp/launchers/ray.yaml``) hands the workers the
tracking credentials and the sweep's identity as ``runtime_env`` environment
variables, through the resolver ``style_exp.worker_env``; the launcher logs that
config, so the password is blanked out of its log. Nothing here imports Ray or
TensorFlow at module level: every ``run.py`` loads this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.config_source import ConfigLoadError
from omegaconf import OmegaConf

from style_exp.settings import ConfigError
from style_exp.sweeps import SWEEP_ENV, sweep_id, swept_keys

# Driver environment variables a worker needs: where and as whom to log, the weights
# cache, and how much TensorFlow may print.
FORWARDED = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
             "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_SERVER_CERT_PATH", "STYLE_EXP_CACHE",
             "TF_CPP_MIN_LOG_LEVEL")
SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
RAY_LAUNCHER_LOGGER = "hydra_plugins.hydra_ray_launcher._launcher_util"  # logs ray.init's config
PRESETS = Path(__file__).resolve().parent / "launchers"  # <plugin preset name>.yaml


def register_launchers(store: ConfigStore) -> None:
    """The resolver our launcher presets use, and the presets merged into the plugins' own.

    ``hydra/launcher=ray`` (or ``submitit_slurm``) then selects the plugin's schema with
    this project's values (``style_exp/launchers/``). The plugins are discovered first
    (Hydra would do it later anyway) so that their presets exist to be extended; a
    plugin that is not installed is skipped.
    """
    from hydra.core.plugins import Plugins

    if not OmegaConf.has_resolver("style_exp.worker_env"):
        OmegaConf.register_new_resolver("style_exp.worker_env", worker_env)
    Plugins.instance()
    launcher_log = logging.getLogger(RAY_LAUNCHER_LOGGER)
    if not any(isinstance(f, RedactSecrets) for f in launcher_log.filters):
        launcher_log.addFilter(RedactSecrets())
    for preset in sorted(PRESETS.glob("*.yaml")):
        path = f"hydra/launcher/{preset.name}"
        with contextlib.suppress(ConfigLoadError):
            plugin = store.load(path)
            node = OmegaConf.merge(plugin.node, OmegaConf.load(preset))
            store.store(group="hydra/launcher", name=preset.stem, node=node,
                        provider=plugin.provider)


def worker_env(sweep_dir: str, command_line: list[str],
               sweeper_params: dict[str, Any] | None) -> dict[str, str]:
    """The driver's tracking settings and the sweep's identity, for the workers' environment.

    The workers may not see the driver's sweep directory (no shared disk, or Ray
    running them in another directory), so its id and swept keys travel with them.
    """
    env = {name: os.environ[name] for name in FORWARDED if os.environ.get(name)}
    swept = swept_keys(list(command_line), sweeper_params)
    env[SWEEP_ENV] = json.dumps({"id": sweep_id(Path(sweep_dir)), "swept": sorted(swept)})
    return env


class RedactSecrets(logging.Filter):
    """Blanks the forwarded secrets out of log records.

    Hydra resolves the launcher's config when it creates the launcher, and the Ray
    launcher then logs its ``ray.init`` arguments, ``runtime_env`` included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for name in SECRETS:
            if os.environ.get(name):
                message = message.replace(os.environ[name], "***")
        record.msg, record.args = message, ()
        return True


def allotted_cpus() -> int | None:
    """The CPUs the scheduler gave this job: Ray's assignment, or SLURM's cpus-per-task."""
    ray = sys.modules.get("ray")  # only a Ray worker has it loaded; never import it here
    if ray is not None and ray.is_initialized():
        with contextlib.suppress(Exception):  # a driver, not a task: no assignment
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, math.floor(cpus))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(slurm) if slurm.isdigit() else None


def configure_threads(threads: Any) -> dict[str, str]:
    """Size TensorFlow's thread pools to the job's CPUs, and return tags saying so.

    ``threads.*`` set explicitly win; otherwise a job the scheduler gave n CPUs uses n
    threads (not one per core of a machine it shares), and a job on its own machine
    leaves the choice to TensorFlow.
    """
    from style_exp import device

    cpus = allotted_cpus()
    device.configure(threads.intra_op or cpus or 0, threads.inter_op or cpus or 0)
    return {"threads.allotted_cpus": str(cpus)} if cpus else {}


def without_credentials(uri: str | None) -> str | None:
    """Refuse a tracking URI with a password in it: it would be logged as a param.

    Credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD (``DIR/client.env``).
    """
    from urllib.parse import urlsplit

    if uri and urlsplit(uri).password is not None:
        raise ConfigError("tracking.uri must not contain a password: set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    return uri


def export_project_path() -> None:
    """Let jobs that start a fresh interpreter (submitit, SLURM) import this project.

    They inherit the driver's environment but not ``run.py``'s directory on the path.
    """
    paths = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
