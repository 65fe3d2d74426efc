"""CoWorld on DMC: offline target dmc/walker_downhill, online source dmc/walker_walk.

    python recipes/coworld_dmc.py                                       # quick preset
    python recipes/coworld_dmc.py preset=paper dataset=datasets/dmc/walker_downhill/medium-replay
    python recipes/coworld_dmc.py coupling.value_constraint=linear      # "w/o Max" ablation
    python recipes/coworld_dmc.py 'sources=[dmc/walker_walk,dmc/walker_uphill]'   # multi-source
    python recipes/coworld_dmc.py -m train.seed=0,1,2                   # seeds

Re-running the same command with the same output_dir resumes the run.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from coworld_trl.training.config import COWORLD_PRESETS, CoWorldConfig, from_dict, register_hydra_configs
from coworld_trl.training.coworld_experiment import run_coworld

register_hydra_configs(CoWorldConfig, COWORLD_PRESETS)


@hydra.main(config_path="config", config_name="coworld_dmc", version_base=None)
def main(cfg: DictConfig) -> None:
    run_coworld(from_dict(CoWorldConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
