"""experiments/: the scripts' schedules (experiments/lanes.sh), dry-run (no training)."""
from __future__ import annotations

import os
import platform
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
ROW = [f"{method}/seed{seed}" for seed in range(3) for method in ("offline_dv2", "finetune", "coworld")]


def dry_run(tmp_path: Path, *, lanes: int, script: str = "table3_cheetah_downhill_cpu.sh") -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "RUNS": str(tmp_path / "runs"), "DATA": str(tmp_path / "data"),
           "LANES": str(lanes), "POLL_SECONDS": "0.1"}
    return subprocess.run(["bash", str(EXPERIMENTS / script)], env=env, capture_output=True, text=True, timeout=120)


def started(stdout: str) -> list[str]:
    return re.findall(r"lane \d: (\S+)$", stdout, flags=re.M)


def test_one_lane_runs_the_inputs_first_then_the_row_seed_by_seed(tmp_path):
    proc = dry_run(tmp_path, lanes=1)
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stdout) == ["source", "collect", *ROW]
    assert "run coworld/seed2" in proc.stdout and "nothing left" in proc.stdout
    again = dry_run(tmp_path, lanes=1)  # everything finished: nothing is started again
    assert started(again.stdout) == [] and "nothing left" in again.stdout


def test_two_lanes_run_each_job_once_and_wait_for_its_inputs(tmp_path):
    proc = dry_run(tmp_path, lanes=2)
    assert proc.returncode == 0, proc.stderr
    order = started(proc.stdout)
    assert sorted(order) == sorted(["source", "collect", *ROW])
    assert set(order[:2]) == {"source", "collect"}  # nothing else has its inputs at the start
    assert proc.stdout.count("nothing left") == 2


def test_a_failed_source_stops_only_the_jobs_that_need_it(tmp_path):
    """The source's output cannot be made (a file stands where its folder goes): it fails,
    Offline DV2 still runs on the dataset, and the lanes end naming the jobs left waiting."""
    source = tmp_path / "runs" / "online_quick" / "cheetah_run"
    source.mkdir(parents=True)
    (source / "seed0").write_text("")
    proc = dry_run(tmp_path, lanes=2)
    assert proc.returncode == 0  # the lanes report; the script itself ends normally
    assert re.search(r"lane \d: source failed \(exit 1\), see .*/runs/logs", proc.stdout)
    order = started(proc.stdout)
    assert [job for job in order if job.startswith("offline_dv2")] == ["offline_dv2/seed0", "offline_dv2/seed1",
                                                                       "offline_dv2/seed2"]
    assert not any(job.startswith(("finetune", "coworld")) for job in order)
    assert proc.stdout.count("the rest waits on failed jobs: source\n") == 2


def test_the_online_curves_run_seed_by_seed_and_share_the_row_s_source(tmp_path):
    proc = dry_run(tmp_path, lanes=1, script="online_quick_dmc.sh")
    assert started(proc.stdout) == [f"{env}/seed{seed}" for seed in range(3) for env in ("cheetah_run", "walker_walk")]
    row = dry_run(tmp_path, lanes=1)  # the row's source is cheetah_run seed 0, finished above
    assert started(row.stdout) == ["collect", *ROW]


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: records how it was called, then finishes the run or dataset it was given.
echo "$PYTHONPATH $OMP_NUM_THREADS ${ATEN_CPU_CAPABILITY:--} ${ONEDNN_MAX_CPU_ISA:--} ${MKL_ENABLE_INSTRUCTIONS:--} $*" >> "$CALLS"
for arg in "$@"; do
  case $arg in output_dir=*) out=${arg#output_dir=} ;; collect.output=*) dataset=${arg#collect.output=} ;; esac
done
echo "training $out"
if [[ -n ${dataset:-} ]]; then mkdir -p "$dataset" && echo {} > "$dataset/metadata.json"; fi
mkdir -p "$out" && echo '{"phase": "finished"}' > "$out/status.json"
"""


PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def fake_runs(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    """The row script, not dry: each job calls ``python``, here a stand-in that notes its
    environment and arguments and finishes its output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in PINS}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"), RUNS=str(tmp_path / "runs"),
               DATA=str(tmp_path / "data"), LANES="1", POLL_SECONDS="0.1", PYTHONPATH="/elsewhere", **extra)
    return subprocess.run(["bash", str(EXPERIMENTS / "table3_cheetah_downhill_cpu.sh")], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_jobs_run_the_recipes_of_this_checkout_at_one_thread_on_avx2_kernels(tmp_path):
    """Each job runs the recipe of this checkout, with this checkout first on PYTHONPATH, one
    OpenMP thread, the CPU kernels pinned to AVX2 (the same numbers on AVX2 and AVX-512
    machines) and its output in its log."""
    proc = fake_runs(tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    root = EXPERIMENTS.parent
    assert len(calls) == 11
    assert all(call.startswith(f"{root}:/elsewhere 1 avx2 AVX2 AVX2 {root}/recipes/") for call in calls)
    assert "recipes/coworld_dmc.py" in calls[4] and "sources=[dmc/cheetah_run]" in calls[4]
    assert f"source_checkpoints=[{tmp_path}/runs/online_quick/cheetah_run/seed0]" in calls[4]
    log = tmp_path / "runs" / "logs" / "coworld_seed0.log"
    assert log.read_text() == f"training {tmp_path}/runs/t3_27k/coworld/seed0\n"


def test_cpu_kernels_native_leaves_the_kernels_to_the_machine_and_a_typo_is_refused(tmp_path):
    native = fake_runs(tmp_path / "native", CPU_KERNELS="native")
    assert native.returncode == 0, native.stderr
    calls = (tmp_path / "native" / "calls").read_text().splitlines()
    assert len(calls) == 11 and all(call.split()[1:5] == ["1", "-", "-", "-"] for call in calls)
    typo = fake_runs(tmp_path / "typo", CPU_KERNELS="avx512")
    assert typo.returncode == 2 and typo.stdout == "" and not (tmp_path / "typo" / "calls").exists()
    assert typo.stderr == ("error: CPU_KERNELS=avx512 is neither avx2 (the default: the same numbers on every x86 "
                           "machine) nor native (the machine's fastest kernels)\n")


def cpu_has_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return platform.machine() == "x86_64" and cpuinfo.exists() and " avx2" in cpuinfo.read_text()


@pytest.mark.skipif(not cpu_has_avx2(), reason="the kernel pin is for x86 CPUs with AVX2")
def test_torch_takes_the_pinned_kernels():
    """The variable the scripts set is the one torch reads: its ATen kernels report AVX2 (on a
    CPU with AVX-512 they would report AVX512 without it)."""
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "AVX2", out.stderr


SLOW_PYTHON = """#!/usr/bin/env bash
# Stands in for a run that takes long: notes its start, each signal it gets, and when its
# checkpoint (a second here) is written. A recipe stops without a checkpoint on a second signal.
trap 'echo TERM >> "$CALLS"; sleep 1; echo stopped >> "$CALLS"; exit 143' TERM
trap 'echo INT >> "$CALLS"; sleep 1; echo stopped >> "$CALLS"; exit 130' INT
echo started >> "$CALLS"
sleep 60 & wait
"""


def slow_runs_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(SLOW_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
            "RUNS": str(tmp_path / "runs"), "DATA": str(tmp_path / "data"), "LANES": "2"}


def wait_for_calls(calls: Path, word: str, count: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline and (not calls.exists() or calls.read_text().split().count(word) < count):
        time.sleep(0.1)


def test_stopping_the_script_stops_its_runs_and_nothing_else(tmp_path):
    """SIGTERM to the script reaches its runs (which checkpoint on it) through its own process
    group; started without job control, as here, that group is not the caller's: this test's
    own process survives it. The script itself ends only after its runs' checkpoints."""
    env = slow_runs_env(tmp_path)
    log = tmp_path / "script.log"
    with open(log, "w") as out:  # not a pipe: the lanes would hold it open after the script ended
        script = subprocess.Popen(["bash", str(EXPERIMENTS / "table3_cheetah_downhill_cpu.sh")], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
        wait_for_calls(tmp_path / "calls", "started", 2)
        script.send_signal(signal.SIGTERM)
        script.wait(timeout=60)
    assert (tmp_path / "calls").read_text().split() == ["started", "started", "TERM", "TERM", "stopped", "stopped"]
    assert sorted(started(log.read_text())) == ["collect", "source"]


def test_ctrl_c_in_a_terminal_stops_each_run_with_one_signal(tmp_path):
    """Run in the foreground of an interactive shell, Ctrl-C sends SIGINT to the script's whole
    group, runs included; the script does not send them a second signal (which would stop a
    recipe without its checkpoint), and the shell's prompt returns after their checkpoints."""
    env = {**slow_runs_env(tmp_path), "PS1": "$ "}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: an interactive shell on the terminal
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    try:
        os.write(terminal, f"bash {EXPERIMENTS}/table3_cheetah_downhill_cpu.sh; echo ended $?\n".encode())
        wait_for_calls(tmp_path / "calls", "started", 2)
        os.write(terminal, b"\x03")
        output, deadline = "", time.time() + 60
        while "ended 130" not in output and time.time() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                output += os.read(terminal, 4096).decode(errors="replace")
        assert "ended 130" in output, output
        assert (tmp_path / "calls").read_text().split() == ["started", "started", "INT", "INT", "stopped", "stopped"]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(terminal)


def test_a_second_invocation_on_the_same_runs_is_refused(tmp_path):
    """Two scripts on one RUNS would put four runs on two cores: the second is refused."""
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    with open(runs / ".lock", "w") as lock:
        holder = subprocess.Popen(["flock", str(runs / ".lock"), "sleep", "30"], pass_fds=(lock.fileno(),))
        try:
            time.sleep(0.5)
            proc = dry_run(tmp_path, lanes=1, script="online_quick_dmc.sh")
        finally:
            holder.kill()
    assert proc.returncode == 2 and "another experiment script is running on RUNS=" in proc.stderr and proc.stdout == ""


def test_a_lane_that_loses_a_claim_waits_for_the_job_instead_of_ending(tmp_path):
    """The other lane claimed the last job between this lane's look and its own claim: this
    lane waits until that job is finished, then ends with nothing left. (A file at the claim's
    path makes the race deterministic: the look misses it and the claim fails.)"""
    runs, output = tmp_path / "runs", tmp_path / "runs" / "job"
    claims = runs / ".claims"
    claims.mkdir(parents=True)
    (claims / "job").write_text("")
    driver = f"""
        ROOT={EXPERIMENTS.parent}; . {EXPERIMENTS / "lanes.sh"}
        RUNS={runs}; CLAIMS={claims}; POLL_SECONDS=0.1; jobs=("job||{output}|false")
        (sleep 1; mkdir -p {output}; echo '{{"phase": "finished"}}' > {output}/status.json) &
        lane 1"""
    proc = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert started(proc.stdout) == [] and proc.stdout.rstrip().endswith("lane 1: nothing left")
