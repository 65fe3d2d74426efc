"""Offline DV2 (Lu et al. 2023, V-D4RL), the paper's offline baseline, on robodesk/push_green.

    python recipes/offline_dv2_robodesk.py                                  # quick preset
    python recipes/offline_dv2_robodesk.py preset=paper dataset=datasets/robodesk/push_green/medium-replay
    python recipes/offline_dv2_robodesk.py preset=reference                 # V-D4RL's two-stage schedule, horizon 5
    python recipes/offline_dv2_robodesk.py uncertainty.lmbda=0 model.ensemble=0   # plain offline DreamerV2

Re-running the same command with the same output_dir resumes the run.

Needs the RoboDesk extra: pip install 'coworld_trl[robodesk]'.
"""
from pathlib import Path

from coworld_trl.training import run_offline_dv2
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("offline_dv2_robodesk", Path(__file__).parent / "config", run_offline_dv2, schema="offline_dv2_schema")

if __name__ == "__main__":
    main()
