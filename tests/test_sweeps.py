"""Sweeps as users launch them: ``python recipes/<recipe>.py -m hydra/launcher=local ...`` runs each
job as its own process through submitit's local executor (not mocked); a job's run folder is
named after its overrides, so launching the same job again resumes it."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from coworld_trl.training.checkpoint import load_checkpoint
from coworld_trl.training.sweep import sweep_key

# Only the launcher tests need the plugin; the sweep-key test runs without it.
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                                    reason="needs the 'cluster' extra (hydra-submitit-launcher)")

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "dreamer_dmc.py"
# cartpole with action repeat 8: a 125-step evaluation episode
TINY = [
    "env.name=dmc/cartpole_balance", "env.action_repeat=8", "env.fast_render=true", "model.stoch=4", "model.classes=4",
    "model.deter=32", "model.hidden=32", "model.cnn_depth=16", "model.mlp_units=32", "data.batch_size=2",
    "data.seq_len=8", "data.buffer_capacity=1000", "data.whole_episodes=false", "train.prefill_frames=100",
    "train.device=cpu", "train.threads=1", "eval.episodes=1", "eval.every_updates=1000000", "eval.video=false",
]
METHOD = Path("runs/dmc/cartpole_balance/dreamer_quick")


def launch(overrides: list[str], cwd: Path, **kwargs):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, str(RECIPE), "-m", "hydra/launcher=local", *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def job_logs(cwd: Path) -> str:
    return "".join(p.read_text() for p in sorted((cwd / "runs" / ".submitit").glob("*/*_log.*")))


def test_sweep_key_names_a_multirun_job_after_its_overrides():
    """Single runs keep their folder; a multirun job's key holds its sorted, path-safe overrides
    minus the seed, what the path already says and settings that do not change results."""
    overrides = ["coupling.beta=2", "train.seed=1", "sources=[dmc/walker_walk,dmc/cheetah_run]", "preset=paper",
                 "target.name=dmc/walker_uphill", "train.device=cuda", "logger.backend=csv", "+extra='a b'"]
    assert sweep_key("RunMode.RUN", overrides) == ""
    assert sweep_key("RunMode.MULTIRUN", overrides) == "/coupling.beta=2,extra=ab,sources=dmc-walker_walk+dmc-cheetah_run"
    assert sweep_key("RunMode.MULTIRUN", ["train.seed=3", "train.threads=2"]) == ""  # seeds-only sweep: the run's folder
    long = sweep_key("RunMode.MULTIRUN", [f"model.size{i}={i}" for i in range(20)])
    assert len(long) == 121 and long[-9] == "-" and long == sweep_key("RunMode.MULTIRUN", [f"model.size{i}={i}"
                                                                                          for i in reversed(range(20))])


@needs_submitit
def test_launcher_configs_compose_into_the_plugins_schemas():
    """``hydra/launcher=slurm`` and ``local`` come from the package's search path and fit
    hydra-submitit-launcher's structured configs (an unknown field would be refused)."""
    from hydra import compose, initialize_config_dir

    from coworld_trl.training.config import register_hydra_schemas
    from coworld_trl.training.recipe import register_resolvers

    register_hydra_schemas()
    register_resolvers()
    with initialize_config_dir(config_dir=str(RECIPE.parent / "config"), version_base=None):
        slurm = compose("coworld_dmc", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                                  "hydra.launcher.timeout_min=720"], return_hydra_config=True)
        local = compose("finetune_dmc", overrides=["hydra/launcher=local"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.timeout_min == 720
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0 and launcher.additional_parameters.requeue
    assert local.hydra.launcher._target_.endswith("LocalLauncher")


@needs_submitit
@pytest.mark.slow  # about 70 s: three processes start torch, TorchRL and MuJoCo on 2 cores
def test_two_job_multirun_through_the_submitit_local_launcher(tmp_path):
    """``-m hydra/launcher=local train.seed=0,1``: two submitit jobs in their own processes, each
    writing its run folder ``<method>/<overrides>/seed<N>`` with results, checkpoint and a
    finished status."""
    code, output = finish(launch([*TINY, "train.total_frames=200", "train.seed=0,1"], tmp_path))
    assert code == 0, output[-3000:] + job_logs(tmp_path)[-3000:]
    results = sorted((tmp_path / METHOD).glob("*/seed*/results.jsonl"))
    assert [p.parent.name for p in results] == ["seed0", "seed1"] and results[0].parent.parent == results[1].parent.parent
    key = results[0].parent.parent.name
    assert key.startswith("data.batch_size=2,data.buffer_capacity=1000,") and "train.seed" not in key
    pids = set()
    for seed, path in enumerate(results):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == 1 and records[0]["frames"] == 200
        assert yaml.safe_load((path.parent / "config.yaml").read_text())["train"]["seed"] == seed
        status = json.loads((path.parent / "status.json").read_text())
        assert status["finished"] and status["phase"] == "finished" and status["frames"] == 200
        assert status["last_eval"]["return_mean"] == records[0]["eval/return_mean"]
        pids.add(status["pid"])
    assert len(pids) == 2 and not pids & {os.getpid()}  # each job ran in a process of its own
    assert len(list((tmp_path / "runs" / ".submitit").glob("*/*_result.pkl"))) == 2


@needs_submitit
@pytest.mark.slow  # about 130 s: two launches of a 3000-frame job
def test_a_relaunched_job_resumes_its_own_run(tmp_path):
    """A job stopped mid-run (SIGTERM, as a preemption: it checkpoints and exits) and launched again
    with the same overrides finds its folder and resumes there: counters continue from the
    checkpoint and the run finishes once, with a single final evaluation."""
    overrides = [*TINY, "train.total_frames=3000", "logger.log_every_updates=2",
                 "logger.checkpoint_every_updates=1000000", "train.seed=0"]
    first = launch(overrides, tmp_path)
    deadline, status = time.time() + 300, None
    while time.time() < deadline and first.poll() is None:
        found = list((tmp_path / METHOD).glob("*/seed0/status.json"))
        status = json.loads(found[0].read_text()) if found else None
        if status and status["updates"] >= 4:
            break
        time.sleep(0.5)
    assert status and status["updates"] >= 4, finish(first)[1][-3000:]
    run = found[0].parent
    os.kill(status["pid"], signal.SIGTERM)
    code, output = finish(first)
    assert code != 0  # the job stopped before finishing
    stopped = load_checkpoint(run / "checkpoint.pt")["progress"]
    assert 0 < stopped["frames"] < 3000 and not stopped["finished"] and not (run / "results.jsonl").exists()
    assert json.loads((run / "status.json").read_text())["phase"] == "interrupted"

    code, output = finish(launch(overrides, tmp_path))
    logs = job_logs(tmp_path)
    assert code == 0, output[-3000:] + logs[-3000:]
    assert f"resuming {run.relative_to(tmp_path)} at {stopped['frames']} frames, {stopped['updates']} updates" in logs
    final = load_checkpoint(run / "checkpoint.pt")["progress"]
    assert final["finished"] and final["frames"] == 3000 and final["updates"] > stopped["updates"]
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in records] == [3000]
    assert list((tmp_path / METHOD).glob("*/seed0")) == [run]  # the same folder, no second run
