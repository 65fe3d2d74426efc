"""Make an offline dataset: medium-replay (the paper's), random, expert or scripted.

    python recipes/collect_dataset.py collect.kind=random env.name=dmc/walker_downhill collect.episodes=20
    python recipes/collect_dataset.py collect.kind=medium-replay env.name=dmc/cheetah_downhill \\
        train.total_frames=50000      # the replay until 1/3 of the run's own best evaluation
    python recipes/collect_dataset.py collect.kind=medium-replay env.name=dmc/cheetah_run \\
        collect.reference_score=117   # stops at the first evaluation >= 1/3 of a known score
    python recipes/collect_dataset.py collect.kind=expert collect.checkpoint=runs/dmc/walker_walk/dreamer_paper/seed0
    python recipes/collect_dataset.py collect.kind=scripted env.name=metaworld/door-close collect.episodes=50

The dataset goes to collect.output (default datasets/<env>/<kind>); re-running the same
command resumes an interrupted collection, and a finished one says so and exits.
"""
from pathlib import Path

from coworld_trl.training.collect import collect_dataset
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("collect_dataset", Path(__file__).parent / "config", collect_dataset, schema="collect_schema")

if __name__ == "__main__":
    main()
