"""DV2 Finetune and DV2 Finetune + EWC, the paper's transfer baselines. Meta-World: offline target metaworld/door-close, online source metaworld/drawer-close.

    python recipes/finetune_metaworld.py                                  # quick preset, DV2 Finetune
    python recipes/finetune_metaworld.py ewc.lmbda=10000                  # DV2 Finetune + EWC
    python recipes/finetune_metaworld.py preset=paper dataset=datasets/metaworld/door-close/medium-replay

Re-running the same command with the same output_dir resumes the run.
"""
from pathlib import Path

from coworld_trl.training import run_finetune
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("finetune_metaworld", Path(__file__).parent / "config", run_finetune, schema="finetune_schema")

if __name__ == "__main__":
    main()
