"""The Hydra recipe as a user runs it: ``python recipes/dreamer_dmc.py <overrides>`` in a subprocess."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from coworld_trl.training.checkpoint import load_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "dreamer_dmc.py"
TINY = [
    "model.stoch=4", "model.classes=4", "model.deter=32", "model.hidden=32", "model.cnn_depth=16",
    "model.mlp_units=32", "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=1000",
    "data.whole_episodes=false", "train.total_frames=200", "train.prefill_frames=100", "train.device=cpu", "train.threads=1",
    "eval.episodes=1", "eval.every_updates=1000000", "eval.video=false", "env.fast_render=true",
]


def run_recipe(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(RECIPE), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_recipe_runs_tiny_config_with_overrides(tmp_path):
    """The quick-preset recipe with command-line overrides trains, evaluates and writes a run folder whose
    config.yaml holds the overrides and the preset's values."""
    out = tmp_path / "run"
    proc = run_recipe([*TINY, f"output_dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["deter"] == 32 and config["model"]["cnn_depth"] == 16
    assert config["data"]["batch_size"] == 2 and config["train"]["total_frames"] == 200
    assert config["env"]["name"] == "dmc/walker_walk"
    assert config["model"]["reward_layers"] == 2 and config["agent"]["gamma"] == 0.99  # from the quick preset
    assert config["output_dir"] == str(out)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 1 and results[0]["frames"] == 200
    # it trained: an update after each batch of train_every agent steps (x2 frames) from the prefill's on
    train = config["train"]
    per_batch = train["train_every"] * 2
    assert config["env"]["action_repeat"] in (None, 2) and results[0]["updates"] == (
        200 // per_batch - math.ceil(100 / per_batch) + 1) * train["updates_per_train"] > 0
    assert isinstance(results[0]["eval/return_mean"], float)
    assert (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_recipe_multirun_sweeps_seeds_into_separate_run_folders(tmp_path):
    """``-m train.seed=0,1`` runs both jobs in one process, each into its own run folder with its own seed."""
    proc = run_recipe(["-m", *TINY, f"output_dir={tmp_path}/seed${{train.seed}}", "train.seed=0,1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed
        results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        assert len(results) == 1 and results[0]["frames"] == 200


def test_recipes_compose_the_yaml_presets(compose_recipe):
    """The composed config (``--cfg job``): the Meta-World recipe's Table 7 couplings, replaced by
    the official code's under ``preset=reference``. Bad overrides (a field a recipe does not read,
    a wrongly typed or impossible value) are cases of tests/test_bad_inputs.py's table."""
    paper, reference = (compose_recipe("coworld_metaworld", f"preset={p}") for p in ("paper", "reference"))
    assert [paper["coupling"][k] for k in ("beta", "k", "alpha")] == [1.0, 0.3, 2.0]
    assert paper["schedule"]["online_updates"] == 50_000 and paper["model"]["deter"] == 600
    assert [reference["coupling"][k] for k in ("beta", "k", "alpha")] == [1.0, 0.3, 1.5]
    assert reference["model"]["latent"] == "gaussian" and reference["schedule"]["warmup_rounds"] == 2


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_mid_run_checkpoints_and_the_rerun_resumes_with_the_right_counts(tmp_path, signum):
    """Ctrl-C or a scheduler's SIGTERM: the current update finishes, a checkpoint is written, the process
    exits with 128 + signal and one line saying how to resume; the same command then finishes the run
    with the counts of an uninterrupted one (100 collections of 5 steps, updates from the 10th)."""
    out = tmp_path / "run"
    overrides = [*TINY, "env.name=dmc/cartpole_balance", "env.action_repeat=8",
                 "train.total_frames=4000", "train.prefill_frames=400", "logger.checkpoint_every_updates=100000",
                 f"output_dir={out}"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, str(RECIPE), *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "replay").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(4)
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=240)[1]
    assert proc.returncode == 128 + signum, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {signal.Signals(signum).name} at ") and "re-run the same command to resume" in last
    checkpointed = load_checkpoint(out / "checkpoint.pt")["progress"]
    assert 0 < checkpointed["frames"] < 4000 and not checkpointed["finished"]

    resumed = run_recipe(overrides, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} at {checkpointed['frames']} frames" in resumed.stdout + resumed.stderr
    final = load_checkpoint(out / "checkpoint.pt")["progress"]
    assert final["finished"] and (final["frames"], final["updates"]) == (4000, 100 - 10 + 1)
