"""The Hydra entry point every recipe shares.

A recipe is a YAML file in ``recipes/config`` whose defaults list starts with a schema of
:data:`~coworld_trl.training.config.SCHEMAS` and selects presets from
``coworld_trl/training/presets`` (on Hydra's search path through the recipe's
``hydra.searchpath``); :func:`hydra_recipe` turns the composed config into the schema's
dataclass and runs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from coworld_trl.training.config import SCHEMAS, from_dict, register_hydra_schemas


def hydra_recipe(config_name: str, config_dir: str | Path, run: Callable, schema: str):
    """``main()`` of a recipe: ``config_dir/<config_name>.yaml`` composed by Hydra (command-line
    overrides included), converted to ``SCHEMAS[schema]`` and passed to ``run``."""
    import hydra
    from omegaconf import OmegaConf

    register_hydra_schemas()
    # DV2 Finetune and DV2 Finetune + EWC get separate run folders by default.
    OmegaConf.register_new_resolver("ewc_suffix", lambda lmbda: f"_ewc{float(lmbda):g}" if float(lmbda) > 0 else "",
                                    replace=True)

    @hydra.main(config_path=str(Path(config_dir).resolve()), config_name=config_name, version_base=None)
    def main(cfg) -> None:
        run(from_dict(SCHEMAS[schema], OmegaConf.to_container(cfg, resolve=True)))

    return main
