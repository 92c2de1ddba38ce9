"""Entry point: `python run.py [key=value ...]` (see README.md; exit codes: style_exp/cli.py).

A resident worker (`python -m style_exp.worker start`) is asked first, before anything
heavy loads: if it takes the command, this process only relays signals and exits with
the job's code (style_exp/app/handoff.py)."""

import sys

from style_exp.app import handoff

if __name__ == "__main__" and (handed := handoff.hand_over(sys.argv)) is not None:
    sys.exit(handed)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from style_exp.app import cli
from style_exp.app.schema import register_schemas
from style_exp.cluster.launchers import export_project_path, register_launchers

register_schemas()
register_launchers(ConfigStore.instance())
export_project_path()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    return cli.run_job(cfg)  # a sweep's job's outcome, for a search's sweeper


if __name__ == "__main__":
    cli.main(main)
