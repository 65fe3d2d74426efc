"""CoWorld on Meta-World: offline target metaworld/door-close, online source metaworld/drawer-close.

    python recipes/coworld_metaworld.py                                  # quick preset
    python recipes/coworld_metaworld.py preset=paper target.name=metaworld/button-press \\
        'sources=[metaworld/handle-press]' dataset=datasets/metaworld/button-press/medium-replay

Table 7's Meta-World couplings: beta2 = 1, k = 0.3, alpha = 2, K1 = 2e4, K2 = 5e4.
"""
from pathlib import Path

from coworld_trl.training import run_coworld
from coworld_trl.training.recipe import hydra_recipe

main = hydra_recipe("coworld_metaworld", Path(__file__).parent / "config", run_coworld, schema="coworld_schema")

if __name__ == "__main__":
    main()
