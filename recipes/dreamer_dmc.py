"""Online DreamerV2 from pixels on a DMC task.

    python recipes/dreamer_dmc.py                                  # quick preset, walker_walk
    python recipes/dreamer_dmc.py preset=paper env.name=dmc/walker_walk
    python recipes/dreamer_dmc.py -m train.seed=0,1,2              # seed sweep

Re-running the same command with the same output_dir resumes the run.
"""
from pathlib import Path

from coworld_trl.training import run_online_dreamer
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("dreamer_dmc", Path(__file__).parent / "config", run_online_dreamer, schema="dreamer_schema")

if __name__ == "__main__":
    main()
