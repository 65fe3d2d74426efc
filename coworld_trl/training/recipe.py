"""The Hydra entry point every recipe shares.

A recipe is a YAML file in ``recipes/config`` whose defaults list starts with a schema of
:data:`~coworld_trl.training.config.SCHEMAS` and selects presets from
``coworld_trl/training/presets`` (on Hydra's search path through the recipe's
``hydra.searchpath``); :func:`hydra_recipe` turns the composed config into the schema's
dataclass and runs it. The library's user-facing errors (:class:`~coworld_trl.errors.CoWorldError`)
end the process with their one-line message and a non-zero exit (``HYDRA_FULL_ERROR=1``
re-raises them with the traceback).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from coworld_trl.errors import CoWorldError
from coworld_trl.training.config import SCHEMAS, from_dict, register_hydra_schemas
from coworld_trl.training.sweep import sweep_key


def register_resolvers() -> None:
    """The resolvers recipes' ``output_dir`` uses."""
    from omegaconf import OmegaConf

    # DV2 Finetune and DV2 Finetune + EWC get separate run folders by default.
    OmegaConf.register_new_resolver("ewc_suffix", lambda lmbda: f"_ewc{float(lmbda):g}" if float(lmbda) > 0 else "",
                                    replace=True)
    OmegaConf.register_new_resolver("sweep_key", sweep_key, replace=True)


def hydra_recipe(config_name: str, config_dir: str | Path, run: Callable, schema: str):
    """``main()`` of a recipe: ``config_dir/<config_name>.yaml`` composed by Hydra (command-line
    overrides included), converted to ``SCHEMAS[schema]`` and passed to ``run``."""
    import hydra
    from omegaconf import OmegaConf

    register_hydra_schemas()
    register_resolvers()

    @hydra.main(config_path=str(Path(config_dir).resolve()), config_name=config_name, version_base=None)
    def main(cfg) -> None:
        register_resolvers()  # again: a submitit launcher runs the job in a fresh process
        try:
            run(from_dict(SCHEMAS[schema], OmegaConf.to_container(cfg, resolve=True)))
        except CoWorldError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)  # one line, no traceback
            sys.exit(err.exit_code)

    return main
