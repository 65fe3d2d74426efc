"""Dataset collection: the episode recorder, and recipes/collect_dataset.py end to end
(random, medium-replay with its stop rule, expert from the resulting run, resume)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from coworld_trl.data import EpisodeRecorder, OfflineDataset, import_npz
from coworld_trl.errors import ConfigError
from coworld_trl.training.collect import episodes_until, medium_replay_cut
from test_data_integrity import snapshot

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "collect_dataset.py"
# cartpole at action repeat 8: 125-step episodes, fast rendering, a tiny model.
FAST_ENV = ["env.name=dmc/cartpole_swingup", "env.action_repeat=8", "env.fast_render=true"]
TINY = [
    "model.stoch=4", "model.classes=4", "model.deter=32", "model.hidden=32", "model.cnn_depth=16",
    "model.mlp_units=32", "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=5000",
    "train.device=cpu", "train.threads=1", "eval.episodes=1", "eval.video=false",
]


def collector_batches(lengths: list[int], *, batch: int, size: int = 8, skip: int = 0) -> tuple[list[TensorDict], list]:
    """Episodes of the given lengths as TED rows with next.pixels, cut into fixed-size batches
    (as a collector hands them out), the first ``skip`` rows dropped. Also returns the episodes."""
    gen = torch.Generator().manual_seed(0)
    episodes = []
    for n in lengths:
        frames = torch.randint(0, 256, (n + 1, 3, size, size), dtype=torch.uint8, generator=gen)
        done = torch.zeros(n, 1, dtype=torch.bool)
        done[-1] = True
        episodes.append(TensorDict({
            "pixels": frames[:-1], "action": torch.rand(n, 2, generator=gen), "is_init": ~torch.ones(n, 1).cumsum(0).gt(1),
            "latent_deter": torch.zeros(n, 4),  # collector extras are dropped
            "next": {"pixels": frames[1:], "reward": torch.rand(n, 1, generator=gen), "done": done,
                     "terminated": torch.zeros(n, 1, dtype=torch.bool), "truncated": done.clone()},
        }, batch_size=[n]))
    stream = torch.cat(episodes)[skip:]
    return [stream[i:i + batch] for i in range(0, len(stream), batch)], episodes


def test_recorder_writes_whole_episodes_across_batch_boundaries(tmp_path):
    """Episodes cut by fixed-size batches are reassembled, written with their final frame,
    and import back to exactly the recorded rows."""
    batches, episodes = collector_batches([7, 3, 12], batch=5)
    recorder = EpisodeRecorder(tmp_path / "eps")
    for batch in batches:
        recorder(batch)
    files = sorted((tmp_path / "eps").glob("*.npz"))
    assert [f.name for f in files] == ["000000-8.npz", "000001-4.npz", "000002-13.npz"]
    dataset = import_npz(tmp_path / "eps", tmp_path / "ds")
    for index, episode in enumerate(episodes):
        rows, final = dataset.episode(index)
        assert torch.equal(rows["pixels"], episode["pixels"]) and torch.equal(rows["action"], episode["action"])
        assert torch.equal(rows["next", "reward"], episode["next", "reward"])
        assert torch.equal(final["pixels"], episode["next", "pixels"][-1])


def test_recorder_skips_a_partial_first_episode_and_resumes_numbering(tmp_path):
    batches, _ = collector_batches([6, 4], batch=3, skip=2)  # starts inside episode 0
    recorder = EpisodeRecorder(tmp_path / "eps")
    for batch in batches:
        recorder(batch)
    assert [f.name for f in sorted((tmp_path / "eps").glob("*.npz"))] == ["000000-5.npz"]
    again = EpisodeRecorder(tmp_path / "eps")
    assert again.episodes == 1
    for batch in collector_batches([2], batch=2)[0]:
        again(batch)
    assert (tmp_path / "eps" / "000001-3.npz").exists()
    assert not list((tmp_path / "eps").glob(".*.tmp"))


def run_recipe(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(RECIPE), *overrides], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_collect_random_then_rerun_says_it_exists(tmp_path):
    out = tmp_path / "random"
    proc = run_recipe([*FAST_ENV, "collect.kind=random", "collect.episodes=2", f"collect.output={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = OfflineDataset(out).metadata
    assert (meta.episodes, meta.frames, meta.env) == (2, 250, "dmc/cartpole_swingup")
    assert meta.source == "collect random: 2 episodes"
    assert not (tmp_path / "random.episodes").exists(), "the work directory was not removed"
    again = run_recipe([*FAST_ENV, "collect.kind=random", "collect.episodes=2", f"collect.output={out}"], tmp_path)
    assert again.returncode == 0 and "already exists" in again.stderr + again.stdout


def test_collect_medium_replay_stops_at_the_target_then_expert_rolls_out_the_run(tmp_path):
    """medium-replay trains until eval return >= fraction * reference: with a tiny reference the
    first evaluation (after one update) stops it, and the prefill episodes become the dataset.
    An expert collection then loads that run's checkpoint."""
    out, run = tmp_path / "mr", tmp_path / "run"
    proc = run_recipe([*FAST_ENV, *TINY, "collect.kind=medium-replay", "collect.reference_score=0.001",
                       "train.total_frames=20000", "train.prefill_frames=2000", "eval.every_updates=1",
                       f"collect.output={out}", f"output_dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert results[0]["updates"] == 1 and results[0]["frames"] < 20000, "stop_return did not stop the run"
    meta = OfflineDataset(out).metadata
    assert meta.episodes == 2 and meta.frames == 250  # 2000 prefill frames = two 1000-frame episodes
    assert meta.source.startswith("collect medium-replay") and ">= 0.0003333 (0.333 x reference 0.001)" in meta.source
    expert = tmp_path / "expert"
    proc = run_recipe([*FAST_ENV, *TINY, "collect.kind=expert", "collect.episodes=1", f"collect.checkpoint={run}",
                       f"collect.output={expert}", f"output_dir={tmp_path / 'unused'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert OfflineDataset(expert).metadata.episodes == 1
    walker = tmp_path / "walker"  # the cartpole agent cannot act in walker's 6 dims
    proc = run_recipe(["env.name=dmc/walker_walk", "env.action_repeat=8", "env.fast_render=true", *TINY,
                       "collect.kind=expert", f"collect.checkpoint={run}", f"collect.output={walker}",
                       f"output_dir={tmp_path / 'unused2'}"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert f"collect.checkpoint={run}'s agent acts in 1-d but dmc/walker_walk in 6-d" in proc.stderr
    assert not walker.exists() and not (tmp_path / "walker.episodes").exists()


def test_a_fresh_collection_run_refuses_another_runs_episodes(tmp_path):
    """A medium-replay collection whose run starts from scratch (no checkpoint in output_dir)
    next to episodes recorded by another run would append to them: it is refused in one line,
    before anything is trained or written, and the episodes are left as they were."""
    out = tmp_path / "mr"
    recorder = EpisodeRecorder(tmp_path / "mr.episodes")
    for batch in collector_batches([10], batch=11)[0]:
        recorder(batch)
    before = sorted((tmp_path / "mr.episodes").iterdir())
    assert len(before) == 1
    proc = run_recipe([*FAST_ENV, *TINY, "collect.kind=medium-replay", "collect.whole_replay=true",
                       "train.total_frames=2000", f"collect.output={out}", f"output_dir={tmp_path / 'new_run'}"],
                      tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert (f"{tmp_path}/mr.episodes holds 1 episodes of another collection run, and run {tmp_path}/new_run "
            f"starts from scratch; resume that run's output_dir, or delete {tmp_path}/mr.episodes") in proc.stderr
    assert sorted((tmp_path / "mr.episodes").iterdir()) == before and not out.exists()
    assert not (tmp_path / "new_run").exists()


def test_medium_replay_cut_keeps_the_episodes_until_the_first_eval_at_a_third_of_the_best(tmp_path):
    """The paper's medium-replay without a reference score: the run's best eval is 90, so the cut is the
    first eval >= 30 (at 2,500 frames); episodes of 100 steps at action repeat 8 end every 800 frames,
    so three had ended by then."""
    records = [{"frames": 900, "eval/return_mean": 5.0}, {"frames": 2500, "eval/return_mean": 31.0},
               {"frames": 4000, "eval/return_mean": 90.0}, {"frames": 5000, "eval/return_mean": 20.0}]
    cut = medium_replay_cut(records, fraction=1 / 3)
    assert cut == {"frames": 2500, "threshold": 30.0, "best": 90.0}
    recorder = EpisodeRecorder(tmp_path / "episodes")
    for batch in collector_batches([100] * 6, batch=50)[0]:
        recorder(batch)
    assert episodes_until(tmp_path / "episodes", cut["frames"], frames_per_step=8) == 3
    assert episodes_until(tmp_path / "episodes", 2400, frames_per_step=8) == 3  # the third ends at 2400
    assert episodes_until(tmp_path / "episodes", 10**6, frames_per_step=8) == 6
    with pytest.raises(ConfigError, match="logged no evaluation"):
        medium_replay_cut([], fraction=1 / 3)


def test_collect_whole_replay_keeps_every_episode_of_the_run(tmp_path):
    """collect.whole_replay: V-D4RL's medium-replay, every episode the run collected in its
    train.total_frames (3 of 1,000 frames each), with no cut, as the metadata says."""
    out, run = tmp_path / "mr", tmp_path / "run"
    proc = run_recipe([*FAST_ENV, *TINY, "collect.kind=medium-replay", "collect.whole_replay=true",
                       "train.total_frames=3000", "train.prefill_frames=2000", "eval.every_updates=50",
                       f"collect.output={out}", f"output_dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = OfflineDataset(out).metadata
    assert meta.episodes == 3 and meta.frames == 3 * 125
    assert meta.source == f"collect medium-replay: the whole replay of an online DreamerV2 run of 3000 frames; run {run}"


@pytest.mark.parametrize("setting", [("collect.reference_score", 100.0), ("collect.kind", "random")])
def test_collect_whole_replay_refuses_a_cut_or_another_kind(tmp_path, setting):
    from coworld_trl.training.collect import collect_dataset
    from coworld_trl.training.config import CollectDatasetConfig

    config = CollectDatasetConfig()
    config.collect.whole_replay, config.collect.output = True, str(tmp_path / "ds")
    setattr(config.collect, setting[0].split(".")[1], setting[1])
    with pytest.raises(ConfigError, match=f"whole_replay=true keeps a whole medium-replay run.*{setting[1]}"):
        collect_dataset(config)
    assert list(tmp_path.iterdir()) == []


def test_collect_medium_replay_without_reference_trains_the_whole_run_and_cuts_at_its_own_best(tmp_path, capsys):
    """Without collect.reference_score the run goes to train.total_frames; the dataset holds the
    episodes collected until its first evaluation at or above a third of its best, as the metadata says."""
    out, run = tmp_path / "mr", tmp_path / "run"
    proc = run_recipe([*FAST_ENV, *TINY, "collect.kind=medium-replay", "train.total_frames=4000",
                       "train.prefill_frames=2000", "eval.every_updates=10", f"collect.output={out}",
                       f"output_dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert results[-1]["frames"] == 4000
    cut = medium_replay_cut(results, fraction=1 / 3)
    meta = OfflineDataset(out).metadata
    assert meta.episodes == cut["frames"] // 1000 and meta.frames == meta.episodes * 125
    assert f"reached at {cut['frames']} of 4000 frames" in meta.source
    assert not (tmp_path / "mr.episodes").exists()

    # The run's checkpoint evaluated again with each action (the command's main, in this process:
    # three more interpreters would only repeat the imports), its folder untouched.
    from coworld_trl.training.evaluate import main as evaluate_main

    before = snapshot(run)
    for action in ("mode", "mean", "sample"):
        out_json = tmp_path / f"{action}.json"
        evaluate_main([str(run), "--episodes", "2", "--eval-action", action, "--json", str(out_json)])
        stdout = capsys.readouterr().out
        metrics = json.loads(out_json.read_text())
        assert metrics["eval_action"] == action and len(metrics["eval/returns"]) == 2
        assert f"2 episodes, eval_action={action}: return {metrics['eval/return_mean']:.1f}" in stdout
        assert "eval/value_bias" in metrics and len(metrics["eval/actor_scale"]) == len(metrics["eval/action_at_bound"])
        assert "actor scale per action dimension: " in stdout
        assert len(metrics["eval/action_std"]) == len(metrics["eval/actor_scale"])
        assert "spread of the actions taken per action dimension: " in stdout
    assert snapshot(run) == before  # paths, bytes and mtimes
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("target:\n  name: dmc/walker_downhill\n")
    (tmp_path / "other" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        evaluate_main([str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "config.yaml is not the config of any recipe (its sections: target)" in err


def test_scripted_policy_acts_in_bounds_and_beats_random():
    """Meta-World's scripted policy through the TensorDict interface: 4-d actions in [-1, 1],
    and over 60 steps of door-close it earns more than random actions."""
    from coworld_trl.envs import make_env
    from coworld_trl.envs.metaworld import ScriptedPolicy

    returns = []
    for policy in (ScriptedPolicy("door-close", noise=0.1), None):
        env = make_env("metaworld/door-close", seed=0, state=True, fast_render=True)
        torch.manual_seed(0)
        rollout = env.rollout(60, policy=policy)
        assert rollout["action"].shape == (60, 4) and rollout["action"].abs().max() <= 1
        returns.append(rollout["next", "reward"].sum().item())
        env.close()
    assert returns[0] > returns[1] + 20, returns
    assert np.isfinite(returns).all()
