"""The benchmark scripts run end to end at toy sizes (they measure nothing here; their
numbers come from full runs recorded in docs/results.md)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_dataset_reports_conversion_and_sampling(tmp_path):
    result = load("bench_dataset").main(["--frames", "1000", "--batches", "2", "--batch", "2", "--seq-len", "10",
                                         "--workdir", str(tmp_path / "work")])
    assert result["convert"]["frames"] == 1000 and result["sample"]["batches"] == 2
    assert result["convert"]["peak_anon_mib"] > 0 and result["sample"]["frames_per_s"] > 0
    assert not (tmp_path / "work").exists(), "the synthetic files were not cleaned up"


def test_bench_envs_reports_each_mode(tmp_path):
    results = load("bench_envs").main(["dmc/cartpole_swingup", "--steps", "3", "--workers", "1"])
    assert [(r["render"], r["mode"]) for r in results] == [("faithful", "single"), ("fast", "single")]
    assert all(r["frames_per_s"] == 2 * r["steps_per_s"] > 0 for r in results)


def test_bench_update_times_the_agents_own_updates(tmp_path):
    bench = load("bench_update")
    tiny = ["--preset", "quick", "--batch", "2", "--seq-len", "4", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    result = bench.main([*tiny, "--json", str(tmp_path / "dreamer.json")])
    assert json.loads((tmp_path / "dreamer.json").read_text())["updates"] == ["world_model", "behaviour"]
    for name in ("world_model", "behaviour"):
        assert result[f"{name}_update_s"] > 0 and result[f"{name}_flops"] > 0 and result[f"{name}_gflops_per_s"] > 0
        assert result[f"ops_{name}"] and len(result[f"{name}_update_times"]) == 1
    assert result["peak_memory_bytes"] > 0 and result["total_s"] > 0
    # The sections come from hooks on the agent's optimisers: every phase of every optimiser is there.
    assert set(result["breakdown_s"]["world_model"]) >= {
        f"world model: {phase}" for phase in ("forward", "backward", "grad clip", "adam step")}
    assert {"actor: backward", "value: adam step"} <= set(result["breakdown_s"]["behaviour"])
    assert {"encoder", "decoder", "rssm observe loop"} <= set(result["parts_s"]["world_model"])
    assert all(s > 0 for sections in result["breakdown_s"].values() for s in sections.values())

    coworld = bench.main([*tiny, "--coworld"])
    assert coworld["updates"] == ["target", "source"] and coworld["target_flops"] > 0
    assert "state alignment (Eq. 3)" in coworld["parts_s"]["target"]
    assert "source world-model loss with relabelling (Eq. 2, 4-5)" in coworld["parts_s"]["source"]
    assert "source world model: backward" in coworld["breakdown_s"]["source"]


def test_gpu_check_smoke_runs_every_stage_into_one_json(tmp_path):
    """``gpu_check.sh --smoke``: every stage on the CPU at toy sizes, one JSON with each stage's
    status, the pytest counts, the CoWorld iteration's variants (CUDA graphs skipped on the CPU),
    the updates grid, the online run's throughput and the summary."""
    import os
    import subprocess

    import torch

    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {name: stage["status"] for name, stage in result["stages"].items()}
    assert statuses == {"imports": "ok", "pytest_gpu": "ok", "coworld_iteration": "ok", "updates": "ok", "online_walker_walk": "ok"}, (
        statuses, proc.stdout[-2000:])
    assert result["imports"] == "imports ok"
    gpu_tests = result["pytest_gpu"]
    outcome = "passed" if torch.cuda.is_available() else "skipped"
    assert len(gpu_tests["tests"]) == gpu_tests[outcome] == 7  # test_gpu_path's seven, all skipped or all passed
    variants = result["coworld_iteration"]["runs"]["quick_2x4"]["variants"]
    assert variants["eager"]["target_update_s"] > 0 and variants["eager"]["source_update_s"] > 0
    assert variants["eager"]["peak_memory_bytes"] > 0 and "CUDA" in variants["cuda_graphs"]["skipped"]
    assert set(result["updates"]["runs"]) == {"quick_2x4", "quick_2x3"}
    assert result["updates"]["runs"]["quick_2x4"]["variants"]["bf16"]["world_model_update_s"] > 0
    assert result["online"]["frames"] > 0 and result["online"]["replay_on_device"]
    summary = result["summary"]
    assert summary["coworld_best_variant"] == "eager" and summary["goal_coworld_iteration_s"] == 0.05
    assert summary["online_frames_per_s"] > 0 and "quick_2x4" in summary["updates_total_s"]


def test_bench_official_without_the_official_code_says_where_to_get_it(tmp_path, capsys):
    """The official code is not shipped: a directory without it is one line, exit 2, naming the fix."""
    (tmp_path / "models.py").write_text("")  # a partial clone: the others are named
    try:
        load("bench_official").main(["--official-dir", str(tmp_path)])
    except SystemExit as stop:
        assert stop.code == 2
    else:
        raise AssertionError("bench_official ran without the official code")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--official-dir {tmp_path}" in err
    assert "networks.py, tools.py, co_configs.yaml" in err and "models.py" not in err.split(" has no ")[1]
    assert "git clone https://github.com/qiwang067/CoWorld" in err


def test_actor_on_dataset_finds_an_actor_that_acts_alike_in_every_state(tmp_path):
    """A tiny Offline DV2 run whose actor's last layer is then set to one location (+5 before tanh)
    whatever the state: its mode on the dataset's states is at +1, one sign, at the bound, in every
    state, with the location's slope 1 - tanh(5)^2. Its reward head then set to a constant c: every
    action source's imagined reward is c, on dataset states and on the states of a simulator episode,
    and the penalty is lmbda times the heads' disagreement."""
    import torch

    from coworld_trl.training import OfflineDV2Config, recipe_config, run_offline_dv2
    from coworld_trl.training.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **dict(
        model=dict(stoch=4, classes=4, deter=32, hidden=32, cnn_depth=16, mlp_units=32, ensemble=3),
        agent=dict(horizon=3), uncertainty=dict(lmbda=10.0),
        data=dict(batch_size=2, seq_len=8), train=dict(device="cpu", threads=1),
        eval=dict(every_updates=10**6, episodes=1, video=False), schedule=dict(updates=2),
        target=dict(name="dmc/cartpole_swingup", action_repeat=8, fast_render=True),
        make_dataset_episodes=2, dataset=str(tmp_path / "ds" / "medium-replay"), output_dir=str(run))))
    probe = load("actor_on_dataset")
    before = probe.actor_on_dataset(str(run), batch_size=2)
    assert set(before) == {"mode_mean", "majority_sign", "at_bound", "dataset_action_mean", "loc_slope", "scale"}
    assert all(len(v) == 1 for v in before.values()) and 0.5 <= before["majority_sign"][0] <= 1.0
    assert 0.9 < before["loc_slope"][0] <= 1.0, "a fresh actor's location is not saturated"

    state = load_checkpoint(run / "checkpoint.pt")
    weights = state["agent"]["modules"]
    weights["actor_loss.actor.net.4.weight"].zero_()
    weights["actor_loss.actor.net.4.bias"][0] = 5.0  # the location; [1] is the scale's
    weights["world_model_loss.world_model.reward_head.net.4.weight"].zero_()
    weights["world_model_loss.world_model.reward_head.net.4.bias"].fill_(0.25)
    save_checkpoint(run / "checkpoint.pt", state)
    corner = probe.actor_on_dataset(str(run), batch_size=2)
    assert corner["majority_sign"] == [1.0] and corner["at_bound"] == [1.0]
    assert corner["mode_mean"][0] > 0.99 and corner["dataset_action_mean"] == before["dataset_action_mean"]
    assert abs(corner["loc_slope"][0] - (1 - math.tanh(5.0) ** 2)) < 1e-6

    rows = probe.imagined_rewards(str(run), batch_size=2)
    assert list(rows) == ["actor mode", "actor sample", "dataset", "uniform"]
    for row in rows.values():
        assert abs(row["imagined reward"] - 0.25) < 1e-6 and row["u"] > 0
        assert abs(row["lmbda * u"] - 10.0 * row["u"]) < 1e-9
    assert math.isfinite(rows["dataset"]["dataset reward"]) and "dataset reward" not in rows["uniform"]

    # One evaluation episode: 1,000 frames at action repeat 8 = 125 steps, 123 with 3 steps after them.
    simulated = probe.imagined_against_simulator(str(run))
    assert simulated["starts"] == 123 and abs(simulated["imagined reward"] - 0.25) < 1e-6
    assert 0 <= simulated["simulator reward"] <= 8  # cartpole: at most 1 per frame
    assert probe.imagined_against_simulator(str(run)) == simulated  # deterministic episode

    x = torch.arange(2 * 5 * 1.0).reshape(2, 5, 1)
    windows = probe.windows(x, 3)  # every start with 3 steps after it: t = 0, 1, 2 of each row
    assert windows.shape == (6, 3, 1) and windows[4, :, 0].tolist() == x[1, 1:4, 0].tolist()


def test_fresh_actor_copies_an_offline_run_with_a_new_actor_that_the_recipe_trains_on(tmp_path):
    """The new run holds the old run's world model, critic and progress with a fresh actor (and no
    Adam moments for it); the recipe re-run with the printed settings resumes it and trains the
    fresh actor the extra updates; the old run is untouched."""
    import pytest
    import torch

    from coworld_trl.training import OfflineDV2Config, recipe_config, run_offline_dv2
    from coworld_trl.training.checkpoint import load_checkpoint

    settings = dict(
        model=dict(stoch=4, classes=4, deter=32, hidden=32, cnn_depth=16, mlp_units=32, ensemble=3),
        data=dict(batch_size=2, seq_len=8), train=dict(device="cpu", threads=1),
        eval=dict(every_updates=10**6, episodes=1, video=False), schedule=dict(updates=2),
        target=dict(name="dmc/cartpole_swingup", action_repeat=8, fast_render=True),
        make_dataset_episodes=2, dataset=str(tmp_path / "ds" / "medium-replay"))
    run, new_run = tmp_path / "run", tmp_path / "fresh"
    run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **settings, output_dir=str(run)))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    probe = load("fresh_actor")
    assert probe.main([str(run), str(new_run), "--updates", "3"]) == 5
    old, new = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(new_run / "checkpoint.pt")
    actor = [k for k in old["agent"]["modules"] if k.startswith(probe.ACTOR)]
    assert actor and all(not torch.equal(old["agent"]["modules"][k], new["agent"]["modules"][k]) for k in actor)
    assert all(torch.equal(v, new["agent"]["modules"][k]) for k, v in old["agent"]["modules"].items() if k not in actor)
    assert new["agent"]["optimizers"]["actor"]["state"] == {} and old["agent"]["optimizers"]["actor"]["state"]
    torch.testing.assert_close(new["agent"]["optimizers"]["world_model"], old["agent"]["optimizers"]["world_model"],
                               rtol=0, atol=0)
    assert old["progress"]["finished"] and not new["progress"]["finished"] and new["progress"]["updates"] == 2

    with pytest.raises(SystemExit, match="exists"):
        probe.fresh_actor(run, new_run, updates=3)
    with pytest.raises(SystemExit, match="--updates 0"):
        probe.fresh_actor(run, tmp_path / "other", updates=0)
    assert not (tmp_path / "other").exists()

    progress = run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **{**settings, "schedule": dict(updates=5)},
                                             output_dir=str(new_run)))
    assert progress.updates == 5 and progress.finished
    trained = load_checkpoint(new_run / "checkpoint.pt")["agent"]["modules"]
    assert any(not torch.equal(trained[k], new["agent"]["modules"][k]) for k in actor)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # A two-stage run: schedule.updates counts actor-critic updates only, and the copy resumes on the frozen model.
    two_stage = {**settings, "schedule": dict(updates=2, world_model_updates=2)}
    run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **two_stage, output_dir=str(tmp_path / "two")))
    assert probe.fresh_actor(tmp_path / "two", tmp_path / "two_fresh", updates=3) == 5
    assert load_checkpoint(tmp_path / "two_fresh" / "checkpoint.pt")["progress"]["phase"] == "behaviour"
    progress = run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **{**two_stage, "schedule": dict(
        updates=5, world_model_updates=2)}, output_dir=str(tmp_path / "two_fresh")))
    assert progress.behaviour_updates == 5 and progress.world_model_updates == 2
