"""What a job on a cluster needs from the driver, and how it uses what the scheduler gave it.

Ray runs each job in a worker process that does not inherit the driver's shell, so
the Ray launcher preset (``style_exp/cluster/presets/ray.yaml``) hands the workers the
tracking credentials and the sweep's identity as ``runtime_env`` environment
variables, through the resolver ``style_exp.worker_env``; the launcher logs that
config, so the password is blanked out of its log. Nothing here imports Ray or
TensorFlow at module level: every ``run.py`` loads this.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.config_store import ConfigStore
from hydra.plugins.config_source import ConfigLoadError
from omegaconf import OmegaConf

from style_exp.app.sweeps import SWEEP_ENV, identify
from style_exp.spec.search import STUDY_STORAGE_ENV

# Driver environment variables a worker needs: where and as whom to log, the weights
# cache, how much TensorFlow may print, and where a search's study is kept.
FORWARDED = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
             "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_SERVER_CERT_PATH", "STYLE_EXP_CACHE",
             "TF_CPP_MIN_LOG_LEVEL", STUDY_STORAGE_ENV)
SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SECRET_URIS = (STUDY_STORAGE_ENV,)  # the password inside the URI is the secret
RAY_LAUNCHER_LOGGER = "hydra_plugins.hydra_ray_launcher._launcher_util"  # logs ray.init's config
PRESETS = Path(__file__).resolve().parent / "presets"  # <plugin preset name>.yaml


def register_launchers(store: ConfigStore) -> None:
    """The resolver our launcher presets use, and the presets merged into the plugins' own.

    ``hydra/launcher=ray`` (or ``submitit_slurm``) then selects the plugin's schema with
    this project's values (``style_exp/cluster/presets/``). The plugins are discovered first
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
    # The driver's callback has set it (a resumed sweep's id included); else it is computed.
    env[SWEEP_ENV] = os.environ.get(SWEEP_ENV) or identify(
        Path(sweep_dir), list(command_line), sweeper_params).to_env()
    return env


class RedactSecrets(logging.Filter):
    """Blanks the forwarded secrets out of log records.

    Hydra resolves the launcher's config when it creates the launcher, and the Ray
    launcher then logs its ``ray.init`` arguments, ``runtime_env`` included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        secrets = [os.environ.get(name) for name in SECRETS] + [
            urlsplit(os.environ.get(name, "")).password for name in SECRET_URIS]
        for secret in (value for value in secrets if value):
            message = message.replace(secret, "***")
        record.msg, record.args = message, ()
        return True


def export_project_path() -> None:
    """Let jobs that start a fresh interpreter (submitit, SLURM) import this project.

    They inherit the driver's environment but not ``run.py``'s directory on the path.
    """
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
