#!/usr/bin/env bash
# The Table 3 row cheetah_run -> cheetah_downhill at CPU scale (docs/results.md), end to end:
# the online source, the target's medium-replay dataset, then Offline DV2, DV2 Finetune and
# CoWorld with 3 seeds each. Two lanes run one job each at one thread; a lane takes the first
# job that is neither finished nor taken and whose inputs are ready. Re-running the command
# resumes every stopped run and skips the finished ones (about 30 core-hours in all).
#
#   RUNS=/data/runs bash experiments/table3_cheetah_downhill_cpu.sh      # defaults: ./runs, ./datasets/...
#   LANES=1 bash experiments/table3_cheetah_downhill_cpu.sh              # one job at a time
set -uo pipefail
set -f  # the overrides hold [ ]: no globbing
ROOT=$(cd "$(dirname "$0")/.." && pwd)  # paths in RUNS and DATA are the caller's, as for any command
RUNS=${RUNS:-runs}
DATA=${DATA:-datasets/dmc/cheetah_downhill/medium-replay-27k}
LANES=${LANES:-2}
SRC=$RUNS/online_quick/cheetah_run/seed0
CLAIMS=$RUNS/t3_27k/.claims
mkdir -p "$RUNS/logs" "$RUNS/t3_27k"
exec 9> "$RUNS/t3_27k/.lock"
flock -n 9 || { echo "error: another invocation is running on $RUNS (or its runs are still stopping); wait for it" >&2; exit 2; }
rm -rf "$CLAIMS" && mkdir "$CLAIMS"  # claims of an earlier invocation: its processes are gone

# A job is finished when its output is: a run that says so, or a written dataset.
finished() { [[ -f $1/metadata.json ]] || grep -q '"phase": "finished"' "$1/status.json" 2>/dev/null; }
all_finished() { local path; for path in "$@"; do finished "$path" || return 1; done; }

# name | inputs | output | command
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

# DRY_RUN=1: print each job as a lane starts it and mark its output finished instead of running it.
execute() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "run $1"
    mkdir -p "$2" && if [[ $2 == "$DATA" ]]; then echo '{}' > "$2/metadata.json"; else echo '{"phase": "finished"}' > "$2/status.json"; fi
  else
    OMP_NUM_THREADS=1 $3 >> "$RUNS/logs/${1//\//_}.log" 2>&1
  fi
}

lane() {
  while true; do
    local pending=0 started=0 active=0 failed=""
    for job in "${jobs[@]}"; do
      IFS='|' read -r name inputs output cmd <<< "$job"
      local claim=$CLAIMS/${name//\//_}
      finished "$output" && continue
      pending=1
      if [[ -d $claim ]]; then  # taken by a lane
        if [[ -f $claim.failed ]]; then failed+=" $name"; else active=1; fi
        continue
      fi
      all_finished $inputs || continue
      mkdir "$claim" 2>/dev/null || continue  # the other lane was faster
      echo "$(date -Is) lane $1: $name"
      execute "$name" "$output" "$cmd" || { local rc=$?; echo "$(date -Is) lane $1: $name failed (exit $rc), see $RUNS/logs"; touch "$claim.failed"; }
      started=1
      break
    done
    (( pending )) || { echo "$(date -Is) lane $1: nothing left"; return; }
    (( started || active )) || { echo "$(date -Is) lane $1: the rest waits on failed jobs:$failed"; return 1; }
    (( started )) || sleep "${POLL_SECONDS:-60}"
  done
}

# Stopping the pipeline stops its runs: each writes a checkpoint (after an evaluation in progress).
trap 'trap - TERM INT; kill -TERM 0; wait' TERM INT
for i in $(seq 1 "$LANES"); do lane "$i" & done
wait
