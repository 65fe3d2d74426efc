#!/usr/bin/env bash
# The Table 3 row cheetah_run -> cheetah_downhill at CPU scale (docs/results.md), end to end:
# the online source, the target's medium-replay dataset, then Offline DV2, DV2 Finetune and
# CoWorld with 3 seeds each. Two lanes run one job each at one thread; a lane takes the first
# job that is neither finished nor taken and whose inputs are ready. Re-running the command
# resumes every stopped run and skips the finished ones (about 30 core-hours in all).
#
#   RUNS=/data/runs bash experiments/table3_cheetah_downhill_cpu.sh      # defaults: runs, datasets
#   LANES=1 bash experiments/table3_cheetah_downhill_cpu.sh              # one job at a time
set -uo pipefail
set -f  # the overrides hold [ ]: no globbing
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
DATA=${DATA:-datasets/dmc/cheetah_downhill/medium-replay-27k}
LANES=${LANES:-2}
SRC=$RUNS/online_quick/cheetah_run/seed0
CLAIMS=$RUNS/t3_27k/.claims
mkdir -p "$RUNS/logs" "$RUNS/t3_27k"
exec 9> "$RUNS/t3_27k/.lock"
flock -n 9 || { echo "error: another invocation is running on $RUNS (or its runs are still stopping); wait for it" >&2; exit 2; }
rm -rf "$CLAIMS" && mkdir "$CLAIMS"  # claims of an earlier invocation: its processes are gone

run_ok() { grep -q '"phase": "finished"' "$1/status.json" 2>/dev/null; }
data_ok() { [[ -f $DATA/metadata.json ]]; }

# name | ready when | finished when | command
jobs=(
  "source|true|run_ok $SRC|python recipes/dreamer_dmc.py preset=quick env.name=dmc/cheetah_run train.total_frames=50000 train.threads=1 train.seed=0 eval.episodes=5 output_dir=$SRC"
  "collect|true|data_ok|python recipes/collect_dataset.py collect.kind=medium-replay collect.whole_replay=true env.name=dmc/cheetah_downhill preset=quick train.total_frames=27000 train.threads=1 train.seed=0 eval.episodes=5 collect.output=$DATA output_dir=$RUNS/collect/cheetah_downhill/seed0"
)
for seed in 0 1 2; do
  common="preset=quick target.name=dmc/cheetah_downhill dataset=$DATA make_dataset_episodes=0 eval.every_updates=250 eval.episodes=10 train.threads=1 train.seed=$seed"
  out=$RUNS/t3_27k
  jobs+=(
    "offline_dv2/seed$seed|data_ok|run_ok $out/offline_dv2/seed$seed|python recipes/offline_dv2_dmc.py $common schedule.updates=2000 output_dir=$out/offline_dv2/seed$seed"
    "finetune/seed$seed|data_ok && run_ok $SRC|run_ok $out/finetune/seed$seed|python recipes/finetune_dmc.py $common source=dmc/cheetah_run source_checkpoint=$SRC schedule.finetune_updates=2000 output_dir=$out/finetune/seed$seed"
    "coworld/seed$seed|data_ok && run_ok $SRC|run_ok $out/coworld/seed$seed|python recipes/coworld_dmc.py $common sources=[dmc/cheetah_run] source_checkpoints=[$SRC] schedule.rounds=20 output_dir=$out/coworld/seed$seed"
  )
done

lane() {
  while true; do
    local pending=0 started=0 active=0 failed=""
    for job in "${jobs[@]}"; do
      IFS='|' read -r name ready done cmd <<< "$job"
      local claim=$CLAIMS/${name//\//_}
      eval "$done" && continue
      pending=1
      if [[ -d $claim ]]; then  # taken by a lane
        if [[ -f $claim.failed ]]; then failed+=" $name"; else active=1; fi
        continue
      fi
      eval "$ready" || continue
      mkdir "$claim" 2>/dev/null || continue  # the other lane was faster
      echo "$(date -Is) lane $1: $name"
      OMP_NUM_THREADS=1 $cmd >> "$RUNS/logs/${name//\//_}.log" 2>&1 \
        || { echo "$(date -Is) lane $1: $name failed (exit $?), see $RUNS/logs"; touch "$claim.failed"; }
      started=1
      break
    done
    (( pending )) || { echo "$(date -Is) lane $1: nothing left"; return; }
    (( started || active )) || { echo "$(date -Is) lane $1: the rest waits on failed jobs:$failed"; return 1; }
    (( started )) || sleep 60
  done
}

# Stopping the pipeline stops its runs: each writes a checkpoint (after an evaluation in progress).
trap 'trap - TERM INT; kill -TERM 0; wait' TERM INT
for i in $(seq 1 "$LANES"); do lane "$i" & done
wait
