"""Make an offline dataset: medium-replay (the paper's), random, expert or scripted.

    python recipes/collect_dataset.py collect.kind=random env.name=dmc/walker_downhill collect.episodes=20
    python recipes/collect_dataset.py collect.kind=medium-replay env.name=dmc/cheetah_run \\
        collect.reference_score=117 preset=quick          # stops at 1/3 of the reference
    python recipes/collect_dataset.py collect.kind=expert collect.checkpoint=runs/dmc/walker_walk/dreamer_paper/seed0
    python recipes/collect_dataset.py collect.kind=scripted env.name=metaworld/door-close collect.episodes=50

The dataset goes to collect.output (default datasets/<env>/<kind>); re-running the same
command resumes an interrupted collection, and a finished one says so and exits.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from coworld_trl.training.collect import collect_dataset
from coworld_trl.training.config import CollectDatasetConfig, from_dict, register_hydra_configs

register_hydra_configs(CollectDatasetConfig)


@hydra.main(config_path="config", config_name="collect_dataset", version_base=None)
def main(cfg: DictConfig) -> None:
    collect_dataset(from_dict(CollectDatasetConfig, OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
