"""The CoWorld agent's invariants and recipes/coworld_dmc.py end to end (tiny sizes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from coworld_trl.agents import AgentConfig, CouplingConfig, ModelConfig, make_coworld_agent

TINY_MODEL = ModelConfig(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=16, mlp_units=16, reward_layers=1,
                         actor_layers=1, critic_layers=1)
B, T = 2, 6


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def make_agent(**coupling):
    return make_coworld_agent(TINY_MODEL, AgentConfig(), CouplingConfig(**coupling), action_dim=2, num_sources=2,
                              eta_steps_default=1_000)


def test_target_update_moves_only_the_target(make_batch):
    agent = make_agent()
    sources = [snapshot(s) for s in agent.sources]
    target = snapshot(agent.target)
    metrics = agent.target_update(make_batch(B, T))
    assert changed(target, agent.target)
    assert not any(changed(b, s) for b, s in zip(sources, agent.sources)), "a target update changed a source"
    assert {"loss_alignment", "loss_value_penalty", "value_exceeds_source"} <= set(metrics.keys())


def test_warmup_update_moves_only_the_target_world_model(make_batch):
    """The official schedule's warm-up step trains the target world model (with state
    alignment) and leaves its actor, critic and every source as they were."""
    agent = make_agent()
    world_model = snapshot(agent.target.world_model)
    untouched = [snapshot(m) for m in (agent.target.actor, agent.target.value_loss, *agent.sources)]
    metrics = agent.target_world_model_update(make_batch(B, T))
    assert changed(world_model, agent.target.world_model)
    assert not any(changed(b, m) for b, m in zip(untouched, (agent.target.actor, agent.target.value_loss,
                                                            *agent.sources)))
    assert "loss_alignment" in metrics.keys() and "loss_actor" not in metrics.keys()


def test_source_update_with_relabelling_moves_only_that_source(make_batch):
    agent = make_agent()
    target, other = snapshot(agent.target), snapshot(agent.sources[1])
    source = snapshot(agent.sources[0])
    metrics = agent.source_update(make_batch(B, T), make_batch(B, T), index=0)
    assert changed(source, agent.sources[0])
    assert not changed(target, agent.target) and not changed(other, agent.sources[1])
    assert {"loss_reward_relabelled", "eta"} <= set(metrics.keys()) and agent.source_updates == [1, 0]


def test_ablation_switches_remove_their_terms(make_batch):
    agent = make_agent(alignment=False, relabel=False, value_constraint="none")
    target_metrics = agent.target_update(make_batch(B, T))
    source_metrics = agent.source_update(make_batch(B, T), make_batch(B, T))
    assert "loss_alignment" not in target_metrics.keys() and "loss_value_penalty" not in target_metrics.keys()
    assert "loss_reward_relabelled" not in source_metrics.keys()
    assert make_agent(value_constraint="linear").penalty.mode == "linear"  # its effect: the next test


def test_a_source_critic_above_the_target_everywhere_leaves_the_constraint_inert(make_batch):
    """Where the source critic is above the target's on every imagined state
    (``value_exceeds_source`` 0, as measured throughout the Table 3 CoWorld run, docs/results.md),
    Eq. 6's penalty has no gradient: a target update with the constraint equals the "w/o value
    constraint" ablation's bit for bit, so that ablation would repeat the run. With the source
    critic below the target's everywhere the two updates differ, as they do under "w/o Max"
    (``linear``) with the source critic above."""
    batch = make_batch(B, T)

    def updated_target(constraint: str, source_value: float):
        torch.manual_seed(0)
        agent = make_agent(value_constraint=constraint)
        for source in agent.sources:
            with torch.no_grad():
                list(source.critic.parameters())[-1].fill_(source_value)
        before = snapshot(agent.target)
        torch.manual_seed(1)
        metrics = agent.target_update(batch.clone())
        assert changed(before, agent.target)
        return agent.target.state_dict(), metrics

    def equal(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    constrained, metrics = updated_target("max", 1e6)
    ablated, ablated_metrics = updated_target("none", 1e6)
    assert metrics["value_exceeds_source"].item() == 0.0 and "loss_value_penalty" not in ablated_metrics.keys()
    assert equal(constrained, ablated)
    constrained, metrics = updated_target("max", -1e6)
    assert metrics["value_exceeds_source"].item() == 1.0
    assert not equal(constrained, updated_target("none", -1e6)[0])
    # "w/o Max" (alpha * v, no max) pushes the target critic down whatever the source critic says
    linear, linear_metrics = updated_target("linear", 1e6)
    assert linear_metrics["loss_value_penalty"].item() != 0.0 and not equal(linear, ablated)


def test_choosing_a_source_redirects_alignment_and_value_constraint(make_batch):
    """Eq. 12 picks the source identical to the target; then the target's alignment reads that
    source's encoder (KL 0) and its min-max penalty that source's critic; a checkpoint keeps it."""
    agent = make_agent()
    agent.sources[1].world_model.load_state_dict(agent.target.world_model.state_dict())
    # Source 0's critic values every state far above any target value, source 1's far below.
    for source, bias in zip(agent.sources, (1e6, -1e6)):
        with torch.no_grad():
            list(source.critic.parameters())[-1].fill_(bias)
    index, kls = agent.choose_source(make_batch(B, T))
    assert index == 1 and agent.active_source == 1 and kls[1].item() == pytest.approx(0.0, abs=1e-6)
    state = agent.checkpoint_state()
    metrics = agent.target_update(make_batch(B, T))
    assert metrics["alignment_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["value_exceeds_source"].item() == 1.0 and metrics["source_value"].item() < -1e5
    agent.set_active_source(0)
    metrics = agent.target_update(make_batch(B, T))
    assert metrics["value_exceeds_source"].item() == 0.0 and metrics["source_value"].item() > 1e5
    assert metrics["alignment_kl"].item() > 0
    fresh = make_agent()
    fresh.load_checkpoint_state(state)
    assert fresh.active_source == 1
    assert fresh.target_update(make_batch(B, T))["value_exceeds_source"].item() == 1.0
    with pytest.raises(IndexError, match="source 2 does not exist"):
        agent.set_active_source(2)


def test_different_latent_sizes_are_refused():
    from coworld_trl.agents.coworld import CoWorldAgent
    from coworld_trl.agents.dreamer import DreamerV2Agent, build_networks

    small, big = TINY_MODEL, ModelConfig(**{**TINY_MODEL.__dict__, "deter": 32, "hidden": 32})
    agents = [DreamerV2Agent(*build_networks(m, action_dim=2, obs_shape=(3, 64, 64)), AgentConfig()) for m in (small, big)]
    with pytest.raises(ValueError, match="source and target world models differ in size"):
        CoWorldAgent(agents[0], [agents[1]], CouplingConfig())


# ------------------------------------------------------------------ the recipe
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "coworld_dmc.py"
TINY = [
    "model.stoch=4", "model.classes=4", "model.deter=32", "model.hidden=32", "model.mlp_units=32",
    "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=5000", "data.whole_episodes=false", "train.threads=1", "train.device=cpu",
    "target.fast_render=true", "target.action_repeat=8", "eval.episodes=1",
    "schedule.source_pretrain_frames=2400", "train.prefill_frames=2000", "schedule.offline_updates=4",
    "schedule.online_updates=4", "eval.every_updates=4", "logger.checkpoint_every_updates=2",
    "make_dataset_episodes=2",
]


def run_recipe(overrides: list[str], cwd: Path, **kwargs):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(RECIPE), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_coworld_recipe_runs_end_to_end_then_says_finished(tmp_path):
    """Quick preset with tiny sizes: makes its small dataset, pretrains the source, runs two
    rounds, evaluates the target (return, value bias, video), checkpoints; a re-run is a no-op."""
    out = tmp_path / "run"
    proc = run_recipe([*TINY, f"output_dir={out}", f"dataset={tmp_path / 'ds'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["target_updates"] for r in results] == [r["agent_updates"] for r in results] == [4, 8]
    assert all("eval/value_bias" in r and isinstance(r["eval/return_mean"], float) for r in results)
    per_dim = ("eval/actor_scale", "eval/action_at_bound", "eval/action_std")
    assert all(len(r[key]) == 6 for r in results for key in per_dim)  # walker's joints
    # pretraining: 60 collections of 5 steps x 8 frames; updates start once 2000 frames are
    # stored (collections 50..60: 11 updates); then 4 source updates per online phase
    assert [r["source_updates"] for r in results] == [11, 15]
    assert [r["frames"] for r in results] == [2400, 2400 + 4 * 5 * 8]  # the source's env frames
    assert [r["updates"] for r in results] == [4 + 11, 8 + 15]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["coupling"]["beta"] == 1.5 and config["sources"] == ["dmc/walker_walk"]
    assert config["dataset"] == str(tmp_path / "random-2ep")  # the dataset used, made on the fly
    assert (out / "checkpoint.pt").exists() and list((out / "logs" / "videos").glob("*.mp4"))
    assert (out / "logs" / "scalars" / "eval" / "value_bias.csv").exists()
    again = run_recipe([*TINY, f"output_dir={out}", f"dataset={tmp_path / 'ds'}"], tmp_path)
    assert again.returncode == 0 and "finished" in again.stderr + again.stdout


@pytest.mark.slow
def test_coworld_recipe_with_the_official_warmup(tmp_path):
    """schedule.warmup_rounds=1: after pretraining, 3 world-model-only target updates and an online
    phase of 2 source updates come before the two rounds (evaluations every 3 target updates)."""
    out = tmp_path / "run"
    proc = run_recipe([*TINY, f"output_dir={out}", f"dataset={tmp_path / 'ds'}", "schedule.warmup_rounds=1",
                       "schedule.warmup_world_model_updates=3", "schedule.warmup_online_updates=2",
                       "eval.every_updates=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["target_updates"], r["phase"], r["round"], r["source_updates"]) for r in results] == [
        (3, "warmup", 0, 11), (6, "offline", 0, 13), (9, "offline", 1, 17), (11, "done", 2, 21)]


def test_coworld_recipe_resumes_after_being_killed(tmp_path):
    """Killed after its first checkpoint, the same command resumes from it and completes
    the schedule: the final update counts are those of an uninterrupted run."""
    out, ds = tmp_path / "run", tmp_path / "ds"
    overrides = [*TINY, f"output_dir={out}", f"dataset={ds}", "schedule.offline_updates=30",
                 "eval.every_updates=30", "logger.checkpoint_every_updates=5"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([sys.executable, str(RECIPE), *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists(), "no checkpoint before the kill"
    resumed = run_recipe(overrides, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr + resumed.stdout
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert results[-1]["target_updates"] == 60 and results[-1]["round"] == 1  # evaluated in the last offline phase
    # no phase ran twice: pretraining's 11 source updates and 2400 frames (as uninterrupted, see
    # test_coworld_recipe_runs_end_to_end_then_says_finished), then round 0's online phase, 4 x 5 x 8
    assert results[-1]["source_updates"] == 11 + 4 and results[-1]["frames"] == 2400 + 4 * 5 * 8


def test_missing_dataset_names_the_collect_command(tmp_path):
    proc = run_recipe([f"output_dir={tmp_path / 'run'}", f"dataset={tmp_path / 'none'}", "make_dataset_episodes=0"],
                      tmp_path)
    assert proc.returncode != 0
    assert "does not exist; make it with `python recipes/collect_dataset.py" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("recipe, target_dim", [("coworld_metaworld", 4), ("coworld_robodesk", 5)])
def test_metaworld_and_robodesk_recipes_run_end_to_end(tmp_path, recipe, target_dim):
    """Meta-World -> Meta-World and Meta-World (4-d, padded) -> RoboDesk (5-d): the quick
    preset with tiny sizes and 100-step episodes runs, evaluates success and checkpoints."""
    if recipe == "coworld_robodesk":
        pytest.importorskip("robodesk")
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("target.action_repeat", "schedule.source_pretrain_frames",
                                                      "train.prefill_frames"))]
    overrides += ["target.action_repeat=5", "schedule.source_pretrain_frames=700", "train.prefill_frames=500",
                  f"output_dir={out}", f"dataset={tmp_path / 'ds'}"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([sys.executable, str(RECIPE.with_name(f"{recipe}.py")), *overrides], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["target_updates"] for r in results] == [4, 8]
    assert all("eval/success_rate" in r and "eval/value_bias" in r for r in results)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["coupling"]["alpha"], config["coupling"]["k"], config["coupling"]["beta"]) == (2.0, 0.3, 1.0)
    from coworld_trl.data import OfflineDataset

    assert OfflineDataset(tmp_path / "random-2ep").metadata.action_dim == target_dim
