"""DV2 Finetune and DV2 Finetune + EWC, the paper's transfer baselines. Meta-World to RoboDesk: offline target robodesk/push_green (5-d actions), online source metaworld/button-press (4-d, padded).

    python recipes/finetune_robodesk.py                                  # quick preset, DV2 Finetune
    python recipes/finetune_robodesk.py ewc.lmbda=10000                  # DV2 Finetune + EWC
    python recipes/finetune_robodesk.py preset=paper dataset=datasets/robodesk/push_green/medium-replay

Re-running the same command with the same output_dir resumes the run.

Needs the RoboDesk extra: pip install 'coworld_trl[robodesk]'.
"""
from pathlib import Path

from coworld_trl.training import run_finetune
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("finetune_robodesk", Path(__file__).parent / "config", run_finetune, schema="finetune_schema")

if __name__ == "__main__":
    main()
