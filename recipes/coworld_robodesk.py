"""CoWorld from Meta-World to RoboDesk: offline target robodesk/push_green (5-d actions),
online source metaworld/button-press (4-d, padded to 5-d; the extra entry is ignored).

    python recipes/coworld_robodesk.py                                   # quick preset
    python recipes/coworld_robodesk.py target.name=robodesk/open_slide 'sources=[metaworld/drawer-close]'

Needs the RoboDesk extra: pip install 'coworld_trl[robodesk]'.
"""
from pathlib import Path

from coworld_trl.training import run_coworld
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("coworld_robodesk", Path(__file__).parent / "config", run_coworld, schema="coworld_schema")

if __name__ == "__main__":
    main()
