#!/usr/bin/env bash
# The quick-preset online learning curves of issue 13 (docs/results.md): DreamerV2 on
# dmc/cheetah_run and dmc/walker_walk, 3 seeds each to 50k frames, 5 evaluation episodes,
# two runs at a time at one thread each (experiments/lanes.sh; about 18 core-hours). Seed 0 of
# cheetah_run is the Table 3 script's source run: whichever script runs it, the other skips it.
#
#   RUNS=/data/runs bash experiments/online_quick_dmc.sh      # default: ./runs
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/experiments/lanes.sh"
RUNS=${RUNS:-runs}

jobs=()
for seed in 0 1 2; do
  for env in cheetah_run walker_walk; do
    out=$RUNS/online_quick/$env/seed$seed
    jobs+=("$env/seed$seed||$out|python $ROOT/recipes/dreamer_dmc.py preset=quick env.name=dmc/$env train.total_frames=50000 train.threads=1 train.seed=$seed eval.episodes=5 output_dir=$out")
  done
done
run_lanes
