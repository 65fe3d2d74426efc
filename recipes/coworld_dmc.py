"""CoWorld on DMC: offline target dmc/walker_downhill, online source dmc/walker_walk.

    python recipes/coworld_dmc.py                                       # quick preset
    python recipes/coworld_dmc.py preset=paper dataset=datasets/dmc/walker_downhill/medium-replay
    python recipes/coworld_dmc.py coupling.value_constraint=linear      # "w/o Max" ablation
    python recipes/coworld_dmc.py 'sources=[dmc/walker_walk,dmc/walker_uphill]'   # multi-source
    python recipes/coworld_dmc.py -m train.seed=0,1,2                   # seeds

Re-running the same command with the same output_dir resumes the run.
"""
from pathlib import Path

from coworld_trl.training import run_coworld
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("coworld_dmc", Path(__file__).parent / "config", run_coworld, schema="coworld_schema")

if __name__ == "__main__":
    main()
