#!/usr/bin/env bash
# The Table 3 row cheetah_run -> cheetah_downhill at CPU scale (docs/results.md), end to end:
# the online source, the target's medium-replay dataset, then Offline DV2, DV2 Finetune and
# CoWorld with 3 seeds each, two runs at a time at one thread each (experiments/lanes.sh).
# Re-running the command resumes every stopped run and skips the finished ones (about 30
# core-hours in all).
#
#   RUNS=/data/runs bash experiments/table3_cheetah_downhill_cpu.sh      # defaults: ./runs, ./datasets/...
#   LANES=1 bash experiments/table3_cheetah_downhill_cpu.sh              # one run at a time
#   CPU_KERNELS=native bash experiments/table3_cheetah_downhill_cpu.sh   # AVX-512 where there is (other numbers)
#   DRY_RUN=1 RUNS=/tmp/plan DATA=/tmp/plan/data bash experiments/table3_cheetah_downhill_cpu.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)  # paths in RUNS and DATA are the caller's, as for any command
. "$ROOT/experiments/lanes.sh"
RUNS=${RUNS:-runs}
DATA=${DATA:-datasets/dmc/cheetah_downhill/medium-replay-27k}
SRC=$RUNS/online_quick/cheetah_run/seed0  # also seed 0 of experiments/online_quick_dmc.sh

jobs=(
  "source||$SRC|python $ROOT/recipes/dreamer_dmc.py preset=quick env.name=dmc/cheetah_run train.total_frames=50000 train.threads=1 train.seed=0 eval.episodes=5 output_dir=$SRC"
  "collect||$DATA|python $ROOT/recipes/collect_dataset.py collect.kind=medium-replay collect.whole_replay=true env.name=dmc/cheetah_downhill preset=quick train.total_frames=27000 train.threads=1 train.seed=0 eval.episodes=5 collect.output=$DATA output_dir=$RUNS/collect/cheetah_downhill/seed0"
)
for seed in 0 1 2; do
  common="preset=quick target.name=dmc/cheetah_downhill dataset=$DATA make_dataset_episodes=0 eval.every_updates=250 eval.episodes=10 train.threads=1 train.seed=$seed"
  out=$RUNS/t3_27k
  jobs+=(
    "offline_dv2/seed$seed|$DATA|$out/offline_dv2/seed$seed|python $ROOT/recipes/offline_dv2_dmc.py $common schedule.updates=2000 output_dir=$out/offline_dv2/seed$seed"
    "finetune/seed$seed|$DATA $SRC|$out/finetune/seed$seed|python $ROOT/recipes/finetune_dmc.py $common source=dmc/cheetah_run source_checkpoint=$SRC schedule.finetune_updates=2000 output_dir=$out/finetune/seed$seed"
    "coworld/seed$seed|$DATA $SRC|$out/coworld/seed$seed|python $ROOT/recipes/coworld_dmc.py $common sources=[dmc/cheetah_run] source_checkpoints=[$SRC] schedule.rounds=20 output_dir=$out/coworld/seed$seed"
  )
done
run_lanes
