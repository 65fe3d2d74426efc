"""Online DreamerV2 from pixels on a DMC task.

    python recipes/dreamer_dmc.py                                  # quick preset, walker_walk
    python recipes/dreamer_dmc.py preset=paper env.name=dmc/walker_walk
    python recipes/dreamer_dmc.py -m train.seed=0,1,2              # seed sweep

Re-running the same command with the same output_dir resumes the run.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from coworld_trl.training.config import DreamerConfig, from_dict, register_hydra_configs
from coworld_trl.training.experiment import run_online_dreamer

register_hydra_configs()


@hydra.main(config_path="config", config_name="dreamer_dmc", version_base=None)
def main(cfg: DictConfig) -> None:
    run_online_dreamer(from_dict(DreamerConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
