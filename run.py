"""Entry point: `python run.py [key=value ...]` (see README.md)."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from style_exp.config import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from style_exp.app import run  # imported late: TensorFlow loads only for real runs

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    run(cfg, output_dir=output_dir, overrides=list(hydra_cfg.overrides.task))
    print(f"wrote {output_dir / 'output.png'}")


if __name__ == "__main__":
    main()
