# The job runner the experiment scripts share (sourced, not run). A script sets RUNS and
#   jobs=("name|inputs|output|command" ...)
# and calls run_lanes: LANES lanes (default 2) each take the first job that is neither finished
# nor taken and whose inputs (space-separated outputs of other jobs) are finished, and run it.
# A job's output is finished when it is a run whose status.json says so, or a written dataset.
# Each job logs to $RUNS/logs/<name>.log. Re-running a script resumes its stopped runs (every
# recipe resumes from its output folder) and skips the finished ones. DRY_RUN=1 prints the
# schedule, marking each output finished instead of running its command.

finished() { [[ -f $1/metadata.json ]] || grep -q '"phase": "finished"' "$1/status.json" 2>/dev/null; }
all_finished() { local path; for path in "$@"; do finished "$path" || return 1; done; }

execute() {  # name output command
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    echo "run $1"
    mkdir -p "$2" && echo '{"phase": "finished"}' > "$2/status.json.tmp" && mv "$2/status.json.tmp" "$2/status.json"
  else
    OMP_NUM_THREADS=1 $3 >> "$RUNS/logs/${1//\//_}.log" 2>&1
  fi
}

lane() {
  # A stop (TERM from stop_runs, a Ctrl-C) reaches the running job too; the lane waits for it to
  # write its checkpoint and exit, then ends, so that the script ends after its runs.
  local stopping=0
  trap 'stopping=1' TERM INT
  while true; do
    (( stopping )) && return
    local pending=0 started=0 active=0 failed="" job name inputs output cmd
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
      mkdir "$claim" 2>/dev/null || { active=1; continue; }  # the other lane was faster: it runs it
      echo "$(date -Is) lane $1: $name"
      execute "$name" "$output" "$cmd" || {
        local rc=$?; (( stopping )) && return
        echo "$(date -Is) lane $1: $name failed (exit $rc), see $RUNS/logs"; touch "$claim.failed"; }
      started=1
      break
    done
    (( pending )) || { echo "$(date -Is) lane $1: nothing left"; return; }
    (( started || active )) || { echo "$(date -Is) lane $1: the rest waits on failed jobs:$failed"; return 1; }
    (( started )) || sleep "${POLL_SECONDS:-60}"
  done
}

stop_runs() {  # signal
  # Stopping the script stops its runs: each writes a checkpoint (after an evaluation in
  # progress), and the script ends after them. The script ignores the TERM it sends its own
  # group. A Ctrl-C in the terminal has reached the runs already (the script's group is the
  # terminal's foreground group); a second signal would stop them without a checkpoint.
  trap '' TERM INT
  [[ $1 == INT && $(ps -o tpgid= -p $$ | tr -d ' ') == "$$" ]] || kill -TERM 0
  wait
}

run_lanes() {
  # The runs use AVX2 kernels (torch's own, oneDNN's convolutions, MKL's matmuls) on every x86
  # CPU: AVX-512 kernels round differently, and a run on an AVX-512 machine gives other numbers
  # than the same command elsewhere (docs/results.md, "Reproducing a run on another machine").
  # CPU_KERNELS=native takes the machine's best (updates about 20% faster on AVX-512) instead.
  case ${CPU_KERNELS:=avx2} in
    avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
    native) ;;
    *) echo "error: CPU_KERNELS=$CPU_KERNELS is neither avx2 (the default: the same numbers on every x86 machine) nor native (the machine's fastest kernels)" >&2; exit 2 ;;
  esac
  # Its own process group, so that stopping it (kill -TERM 0 below) reaches its lanes and runs
  # and nothing of whoever started it (a launcher without job control shares its group).
  [[ $(ps -o pgid= -p $$ | tr -d ' ') == "$$" ]] || exec setsid bash "$0"
  set -f  # the overrides hold [ ]: no globbing
  # The runs import the library of this checkout (ROOT, set by the script), not whichever
  # coworld_trl is installed: a row's runs keep one version of the code while others are edited.
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  CLAIMS=$RUNS/.claims
  mkdir -p "$RUNS/logs"
  # One runner per RUNS: two would put four runs on two cores. The runs inherit the lock, so a
  # runner stopped while its runs write their checkpoints keeps it until they are done.
  exec 9> "$RUNS/.lock"
  flock -n 9 || { echo "error: another experiment script is running on RUNS=$RUNS (or its runs are still stopping); wait for it" >&2; exit 2; }
  rm -rf "$CLAIMS" && mkdir "$CLAIMS"  # claims of an earlier invocation: its processes are gone
  trap 'stop_runs TERM' TERM
  trap 'stop_runs INT' INT
  local i
  for i in $(seq 1 "${LANES:-2}"); do lane "$i" & done
  wait
}
