"""Entry point: `python run.py [key=value ...]` (see README.md)."""

import hydra
from omegaconf import DictConfig

from style_exp.cluster import export_project_path
from style_exp.config import register_schemas

register_schemas()
export_project_path()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from style_exp.app import run_hydra_job  # imported late: TensorFlow loads only for runs

    run_hydra_job(cfg)  # it prints the run's name, output and dashboard link when done


if __name__ == "__main__":
    main()
