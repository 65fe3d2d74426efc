"""DV2 Finetune and DV2 Finetune + EWC, the paper's transfer baselines. DMC: offline target dmc/walker_downhill, online source dmc/walker_walk.

    python recipes/finetune_dmc.py                                  # quick preset, DV2 Finetune
    python recipes/finetune_dmc.py ewc.lmbda=10000                  # DV2 Finetune + EWC
    python recipes/finetune_dmc.py preset=paper dataset=datasets/dmc/walker_downhill/medium-replay

Re-running the same command with the same output_dir resumes the run.
"""
from pathlib import Path

from coworld_trl.training import run_finetune
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("finetune_dmc", Path(__file__).parent / "config", run_finetune, schema="finetune_schema")

if __name__ == "__main__":
    main()
