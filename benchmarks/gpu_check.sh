#!/usr/bin/env bash
# The GPU check (issue 15), one script, about 8 minutes on one H100/H200. On the GPU machine,
# from the project root with the bundle beside it (../shared/gpu/README.md):
#     bash .gpu/with_bundle.sh bash benchmarks/gpu_check.sh --out "$OUT"
# Everything lands in one file, $OUT/gpu_check.json, rewritten after every stage (so a stage cut
# short keeps what the others measured); every stage's output is in $OUT/gpu_check.log, and the
# benchmarks' own JSON (written as they measure) in $OUT/parts/: five files in all.
#   1. pytest -m gpu                 CUDA tests: compiled / CUDA-graph / bf16 updates against eager,
#                                    checkpoints CUDA <-> CPU with the RNG, replays on the device
#   2. coworld_iteration             one CoWorld iteration (target update + relabelled source update)
#                                    at the paper preset, batch 50 x 50: eager, compiled, CUDA graphs,
#                                    bf16 and CUDA graphs + bf16; peak memory of each
#   3. updates                       DreamerV2's world-model and behaviour updates at the quick,
#                                    reference and paper presets, 16 x 16 and 50 x 50: eager and bf16
#   4. online_walker_walk            a 3-minute online DreamerV2 run (paper preset, replay on the GPU):
#                                    env frames/s and updates/s
# Every stage runs under `timeout` (the first checks the imports); a stage that fails or times out is
# recorded and the next runs.
#     --smoke     the same stages on the CPU with tiny shapes (seconds; tests/test_benchmarks.py)
#     --budget S  no stage runs past S seconds from the start (default 480; --smoke: 1500)
set -uo pipefail
out="" smoke=0 budget=480
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --budget) budget="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1; use --out DIR [--smoke] [--budget SECONDS]" >&2; exit 2 ;;
  esac
done
[ "$smoke" = 1 ] && [ "$budget" = 480 ] && budget=1500
[ -n "$out" ] || { echo "gpu_check.sh: --out DIR is required" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
mkdir -p "$out/parts" && out=$(cd "$out" && pwd)
cd "$here/.."  # the project root: the tests' paths
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
start=$(date +%s)
stages=()  # name:status:seconds, passed to the summary

summary() {
  "$py" "$here/gpu_check_summary.py" --out "$out" --smoke "$smoke" --budget "$budget" "${stages[@]}"
}

# stage NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, within what is left of the budget
# minus $reserve (the seconds kept for the stages after it).
reserve=0
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((budget - reserve - ($(date +%s) - start)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then
    stages+=("$name:skipped_budget:0"); summary; return
  fi
  echo "== $name (up to ${limit}s)" | tee -a "$out/gpu_check.log"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$out/parts/$name.log" 2>&1
  local rc=$? status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed_rc$rc"
  stages+=("$name:$status:$(($(date +%s) - t0))")
  cat "$out/parts/$name.log" >> "$out/gpu_check.log" && rm -f "$out/parts/$name.log"
  echo "   $status in $(($(date +%s) - t0))s" | tee -a "$out/gpu_check.log"
  summary
}

bench=("$py" "$here/bench_update.py")
# What the stages import, named in one line when something is missing (the bundle's README).
stage imports 60 "$py" -c "
import importlib, sys
bad = []
for name in ('torch', 'numpy', 'yaml', 'cloudpickle', 'tensordict', 'torchrl', 'hydra', 'mujoco', 'dm_control.suite',
             'pytest', 'coworld_trl.training'):
    try:
        importlib.import_module(name)
    except Exception as err:
        bad.append(f'{name} ({type(err).__name__}: {err})')
print('cannot import: ' + '; '.join(bad) if bad else 'imports ok')
sys.exit(1 if bad else 0)"

if [ "$smoke" = 1 ]; then  # generous limits: a shared CPU can be slow
  common=(--device cpu --threads 1 --repeats 1 --warmup 0)
  stage pytest_gpu 300 "$py" -m pytest -p no:cacheprovider -v -m gpu tests/test_gpu_path.py
  stage coworld_iteration 300 "${bench[@]}" "${common[@]}" --coworld --grid quick:2x4 --variants eager,cuda_graphs \
    --json "$out/parts/coworld_iteration.json"
  stage updates 300 "${bench[@]}" "${common[@]}" --grid quick:2x4,quick:2x3 --variants eager,bf16 \
    --json "$out/parts/updates.json"
  stage online_walker_walk 300 "$py" "$here/bench_online.py" --smoke --preset quick --device cpu --threads 1 \
    --seconds 6 --replay-on-device --json "$out/parts/online_walker_walk.json"
else
  stage pytest_gpu 85 "$py" -m pytest -p no:cacheprovider -v -m gpu tests/test_gpu_path.py tests/test_training.py
  # The goal: a CoWorld iteration at the paper preset, 50 x 50, in <= 50 ms. Compiling takes minutes:
  # this stage gets all the time the last two do not need, and the cheap and likely fastest come first.
  reserve=260
  stage coworld_iteration 400 "${bench[@]}" --device cuda --coworld --grid paper:50x50 --repeats 10 --warmup 3 \
    --variants eager,bf16,cuda_graphs+bf16,compiled,cuda_graphs \
    --json "$out/parts/coworld_iteration.json"
  reserve=0
  stage updates 65 "${bench[@]}" --device cuda --repeats 5 --warmup 2 --variants eager,bf16 \
    --grid quick:16x16,quick:50x50,reference:16x16,reference:50x50,paper:16x16,paper:50x50 \
    --json "$out/parts/updates.json"
  stage online_walker_walk 190 "$py" "$here/bench_online.py" --device cuda --preset paper --seconds 170 \
    --replay-on-device --json "$out/parts/online_walker_walk.json"
fi
summary
echo "gpu_check: $out/gpu_check.json ($(($(date +%s) - start))s)"
