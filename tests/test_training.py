"""Tests for coworld_trl.training: checkpoints, RNG state, run directories, config schemas and
presets, the experiment's clocks and metric aggregation, and the online DreamerV2 experiment end
to end (finish, re-run, kill and resume) on dmc/walker_walk.

The loop tests use a tiny model and a 240-frame run; each evaluation episode is 500 rendered
agent steps (~12 s), so they evaluate only once, at the end.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml

from tensordict import TensorDict

from coworld_trl.agents import AgentConfig, ModelConfig, make_dreamer_agent
from coworld_trl.training import run_online_dreamer
from coworld_trl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld_trl.training.config import (
    CoWorldConfig,
    DreamerConfig,
    action_repeat,
    coworld_config,
    dreamer_config,
    from_dict,
    to_dict,
    validate,
)
from coworld_trl.training.experiment import Every, Experiment, MetricAggregator
from coworld_trl.training.replay import OnlineReplay
from coworld_trl.training.run_dir import RunDirectory

TINY_MODEL = dict(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=16, mlp_units=16, reward_layers=1,
                  actor_layers=1, critic_layers=1)
LOOP_MODEL = dict(stoch=4, classes=4, deter=32, hidden=32, cnn_depth=16, mlp_units=32)


# ====================================================================== checkpoints
def tiny_dreamer(seed: int, **agent_overrides):
    torch.manual_seed(seed)
    agent_config = AgentConfig(**{"horizon": 3, "slow_critic_interval": 3, **agent_overrides})
    return make_dreamer_agent(ModelConfig(**TINY_MODEL), agent_config, action_dim=2)


def assert_tree_equal(a, b, path="state"):
    """Recursive exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path} keys differ"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_checkpoint_round_trip_restores_agent_exactly(tmp_path, make_batch):
    """Weights, slow critic, optimiser moments and the slow-critic counter survive save/load into an agent
    built from another seed, and the next update is bit-identical in both agents."""
    batch = make_batch(2, 6)
    agent = tiny_dreamer(seed=0)
    agent.update(batch.clone())
    path = tmp_path / "agent.pt"
    save_checkpoint(path, agent.checkpoint_state())
    assert path.exists() and not path.with_suffix(".pt.tmp").exists()

    fresh = tiny_dreamer(seed=1)
    slow, fresh_slow = agent.value_loss.target_value_network_params, fresh.value_loss.target_value_network_params
    assert not all(torch.equal(x, y) for x, y in zip(slow.values(True, True), fresh_slow.values(True, True)))
    fresh.load_checkpoint_state(load_checkpoint(path))

    for (name, p), (name2, q) in zip(agent.named_parameters(), fresh.named_parameters()):
        assert name == name2 and torch.equal(p, q), name
    for (name, p), (_, q) in zip(agent.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(p, q), name
    # the slow critic lags the critic after one update and is restored as such
    critic = agent.value_loss.value_network_params
    assert not all(torch.equal(x, y) for x, y in zip(slow.values(True, True), critic.values(True, True)))
    for x, y in zip(slow.values(True, True), fresh_slow.values(True, True)):
        assert torch.equal(x, y)
    for name, opt in agent.optimizers.items():
        state = opt.state_dict()
        assert state["state"], f"{name} optimiser has no moments after an update"
        assert_tree_equal(state, fresh.optimizers[name].state_dict(), f"optimizers.{name}")
    assert agent.target_updater.counter == fresh.target_updater.counter == 1

    losses = []
    for a in (agent, fresh):
        torch.manual_seed(123)
        losses.append(a.update(batch.clone()))
    for key, value in losses[0].items():
        assert torch.equal(value, losses[1][key]), key
    assert all(torch.isfinite(v).all() for v in losses[0].values())
    for p, q in zip(agent.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    assert agent.target_updater.counter == fresh.target_updater.counter == 2


def test_load_checkpoint_corrupt_file_raises_naming_path(tmp_path):
    """A truncated or foreign checkpoint raises RuntimeError naming the file (not an unpickling trace)."""
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"x": torch.arange(3)})
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(good.read_bytes()[:20])
    with pytest.raises(RuntimeError, match="corrupt.pt"):
        load_checkpoint(bad)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*text.pt"):
        load_checkpoint(text)
    assert torch.equal(load_checkpoint(good)["x"], torch.arange(3))


def test_a_checkpoint_of_another_format_is_not_resumed(tmp_path):
    """A format-1 checkpoint (replay copied per checkpoint) still loads for its weights, but a run
    refuses to resume from it with an error naming the file and the fix."""
    old = tmp_path / "checkpoint.pt"
    torch.save({"agent": {}, "replay": "replay.140"}, old)
    assert load_checkpoint(old)["replay"] == "replay.140"
    with pytest.raises(RuntimeError, match="checkpoint.pt has format 1 .* resumes format 3; use a new output_dir"):
        load_checkpoint(old, resume=True)
    save_checkpoint(old, {"agent": {}})
    assert load_checkpoint(old, resume=True)["format"] == 3


def test_rng_state_round_trip_reproduces_draws(tmp_path):
    """rng_state/set_rng_state (through a weights-only checkpoint) replays torch, numpy and python draws."""
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})

    def draws():
        return (random.random(), random.randrange(10**9), np.random.rand(3).tolist(), np.random.randn(),
                torch.rand(3).tolist(), torch.randn(2).tolist())

    first = draws()
    assert first != draws()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draws() == first


# ===================================================================== run directory
def test_run_directory_refuses_a_different_config(tmp_path):
    """config.yaml is written once; the same config reopens the folder; a different one is refused
    with 'different run' and the differing key."""
    config = to_dict(dreamer_config("quick", output_dir=str(tmp_path)))
    run = RunDirectory(tmp_path, config)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config
    assert run.read_results() == []
    run.append_result({"frames": 10, "eval/return_mean": 1.5})

    again = RunDirectory(tmp_path, copy.deepcopy(config))
    assert again.read_results() == [{"frames": 10, "eval/return_mean": 1.5}]

    changed = copy.deepcopy(config)
    changed["data"]["batch_size"] = 7
    with pytest.raises(ValueError, match="different run") as info:
        RunDirectory(tmp_path, changed)
    assert "data.batch_size" in str(info.value) and "7" in str(info.value)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == config  # not overwritten


# ======================================================================== validate()
@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(data=dict(batch_size=0)), "data.batch_size=0"),
        (dict(data=dict(seq_len=1)), "data.seq_len=1"),
        (dict(data=dict(seq_len=600)), "data.seq_len=600"),  # 1000 frames / repeat 2 = 500 steps
        (dict(env=dict(action_repeat=4), data=dict(seq_len=251)), "data.seq_len=251"),
        (dict(data=dict(buffer_capacity=10)), "data.buffer_capacity=10"),
        (dict(train=dict(total_frames=100, prefill_frames=100)), "train.total_frames=100"),
        (dict(train=dict(train_every=0)), "train.train_every=0"),
        (dict(model=dict(latent="beta")), "model.latent='beta'"),
        (dict(eval=dict(episodes=0)), "eval.episodes=0"),
    ],
)
def test_validate_rejects_impossible_values(overrides, named):
    """validate() raises a one-line ValueError that names the bad value."""
    config = dreamer_config("quick", **overrides)
    with pytest.raises(ValueError) as info:
        validate(config)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_validate_accepts_presets_and_episode_length_boundary():
    """Every preset validates; seq_len equal to a DMC episode (500 steps at repeat 2) is allowed."""
    for preset in ("paper", "reference", "quick"):
        validate(dreamer_config(preset))
    validate(dreamer_config("quick", data=dict(seq_len=500)))


def test_config_unknown_preset_or_key_is_refused():
    """dreamer_config / from_dict name an unknown preset or key (and list valid ones)."""
    with pytest.raises(ValueError, match="'fast'.*quick"):
        dreamer_config("fast")
    with pytest.raises(ValueError, match="'batchsize'.*batch_size"):
        dreamer_config("quick", data=dict(batchsize=3))
    with pytest.raises(ValueError, match="'optimizer'"):
        dreamer_config("quick", optimizer=dict(lr=1))
    with pytest.raises(ValueError, match="'deterr'"):
        from_dict(DreamerConfig, {"model": {"deterr": 3}})
    assert from_dict(DreamerConfig, to_dict(dreamer_config("quick"))) == dreamer_config("quick")


def test_presets_are_the_yaml_files_and_each_schema_holds_only_what_its_recipe_reads():
    """Python configs read the same YAML presets Hydra composes; the reference preset carries the
    official code's three coupling values; CoWorld's schema has no online-only field."""
    quick = dreamer_config("quick")
    assert (quick.model.deter, quick.train.total_frames, quick.eval.every_updates) == (200, 30_000, 500)
    reference = coworld_config("reference", benchmark="metaworld")
    assert (reference.coupling.beta, reference.coupling.k, reference.coupling.alpha) == (1.0, 0.3, 1.5)
    assert reference.schedule.warmup_rounds == 2 and reference.model.latent == "gaussian"
    paper_mw = coworld_config("paper", benchmark="metaworld")
    assert (paper_mw.coupling.beta, paper_mw.coupling.k, paper_mw.coupling.alpha) == (1.0, 0.3, 2.0)
    assert paper_mw.schedule.online_updates == 50_000
    quick_mw = coworld_config("quick", benchmark="metaworld")
    assert quick_mw.schedule.online_updates == 100 and quick_mw.coupling.alpha == 2.0  # quick shortens, keeps Table 7
    assert coworld_config("paper").schedule.relabelled_updates() == 6 * 20_000
    for field in ("total_frames", "updates_per_train"):
        assert not hasattr(CoWorldConfig().train, field)
    for section, field in (("schedule", "eval_every_target_updates"), ("schedule", "checkpoint_every_updates")):
        assert not hasattr(getattr(CoWorldConfig(), section), field)
    with pytest.raises(ValueError, match="'total_frames'"):
        coworld_config("quick", train=dict(total_frames=10))
    with pytest.raises(ValueError, match="unknown coworld_benchmark 'atari'; use one of dmc, metaworld"):
        coworld_config("quick", benchmark="atari")


def test_every_fires_once_per_interval_and_remembers_when():
    clock = Every(3)
    assert [clock(n) for n in range(1, 8)] == [False, False, True, False, False, True, False]
    assert clock.last == 6
    resumed = Every(3, last=6)
    assert not resumed(8) and resumed(9)


def test_metric_aggregator_averages_each_metric_over_the_interval_and_counts_skips():
    metrics = MetricAggregator()
    for value, skipped in ((1.0, 0.0), (3.0, 1.0)):
        metrics.add("target", TensorDict(loss_image=torch.tensor(value), skipped_world_model=torch.tensor(skipped)))
    metrics.add("", TensorDict(loss_actor=torch.tensor([2.0, 4.0])))
    scalars, skipped = metrics.flush()
    assert scalars == {"train/target_loss_image": 2.0, "train/target_skipped_world_model": 0.5,
                       "train/loss_actor": 3.0}
    assert skipped == 1
    assert metrics.flush() == ({}, 0)

    # Phases that log different metrics in one interval (a two-stage run's world-model, then
    # actor-critic updates): each metric is averaged over the updates that logged it.
    metrics.add("", TensorDict(loss_image=torch.tensor(1.0), skipped_world_model=torch.tensor(1.0)))
    metrics.add("", TensorDict(loss_image=torch.tensor(3.0), skipped_world_model=torch.tensor(0.0)))
    for value in (2.0, 4.0, 6.0):
        metrics.add("", TensorDict(loss_actor=torch.tensor(value), skipped_actor=torch.tensor(value == 6.0)))
    metrics.add("", TensorDict(loss_actor=torch.tensor(8.0), loss_image=torch.tensor(5.0)))
    scalars, skipped = metrics.flush()
    assert scalars == {"train/loss_image": 3.0, "train/skipped_world_model": 0.5, "train/loss_actor": 5.0,
                       "train/skipped_actor": 1 / 3}
    assert skipped == 2


# ===================================================================== online loop
def loop_config(output_dir, **train):
    return dreamer_config(
        "quick",
        model=LOOP_MODEL,
        env=dict(fast_render=True),  # the loop's counts, files and 500-step evaluation; a quarter of the render time
        data=dict(batch_size=2, seq_len=8, buffer_capacity=1_000, whole_episodes=False),  # runs < 1 episode
        train={**dict(total_frames=240, prefill_frames=100, train_every=5, updates_per_train=1, device="cpu"), **train},
        eval=dict(every_updates=10**6, episodes=1),
        logger=dict(checkpoint_every_updates=5),
        output_dir=str(output_dir),
    )


def expected_updates(config: DreamerConfig) -> int:
    """OnlineDreamer: one collector batch = train_every agent steps = train_every * action_repeat frames; after
    each batch, if frames >= prefill_frames, updates_per_train updates run."""
    t = config.train
    frames_per_batch = t.train_every * action_repeat(config.env)
    batches = t.total_frames // frames_per_batch
    first_training_batch = math.ceil(t.prefill_frames / frames_per_batch)
    return (batches - first_training_batch + 1) * t.updates_per_train


def test_online_loop_end_to_end_then_rerun_is_a_no_op(tmp_path, caplog):
    """A tiny run finishes with the exact frame/update counts, writes results, config, checkpoint, CSV
    scalars and an mp4; re-running the finished run does nothing and returns the same counters."""
    caplog.set_level(logging.INFO, logger="coworld_trl")
    config = loop_config(tmp_path, updates_per_train=2)
    counters = run_online_dreamer(config)

    assert counters.finished
    assert counters.frames == config.train.total_frames == 240
    assert counters.updates == expected_updates(config) == 30
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 1  # eval.every_updates is huge: only the final evaluation
    record = results[0]
    assert record["frames"] == 240 and record["updates"] == record["agent_updates"] == 30
    assert math.isfinite(record["eval/return_mean"]) and record["eval/returns"] == [record["eval/return_mean"]]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(config)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["progress"] == asdict(counters)
    assert saved["clocks"] == {"log": 0, "eval": 30, "checkpoint": 30}  # log_every_updates=100 never came
    videos = list((tmp_path / "logs").rglob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    import imageio.v2 as imageio

    with imageio.get_reader(videos[0]) as video:  # every agent step of the 500-step episode, none skipped
        assert video.count_frames() >= 500
    with open(tmp_path / "logs" / "scalars" / "eval" / "return_mean.csv") as f:
        rows = list(csv.reader(f))
    assert [int(float(rows[-1][0])), float(rows[-1][1])] == [240, pytest.approx(record["eval/return_mean"])]

    caplog.clear()
    again = run_online_dreamer(copy.deepcopy(config))
    assert asdict(again) == asdict(counters)
    assert "finished" in caplog.text
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 1
    assert len(list((tmp_path / "logs").rglob("*.mp4"))) == 1


class Killed(Exception):
    """Stands in for a SIGKILL."""


def test_online_loop_resumes_after_a_kill(tmp_path, monkeypatch, caplog):
    """A run killed two collector batches after its first checkpoint resumes from that checkpoint's
    counters (not from 0), with the replay at the checkpoint's length and cursor: the rows written after
    it stay in the files but out of the buffer, the next episode gets an id above every id in the files,
    and the run finishes exactly."""
    caplog.set_level(logging.INFO, logger="coworld_trl")
    config = loop_config(tmp_path)
    saves, restores = [], []
    kill = {"after_extends": None}
    original_save, original_restore, original_extend = Experiment.save, Experiment.restore, OnlineReplay.extend

    def save(self):
        original_save(self)
        replay = self.schedule.replay
        saves.append(dict(counters=asdict(self.progress), length=len(replay),
                          cursor=replay.buffer.writer.state_dict()["_cursor"]))
        if len(saves) == 1:
            kill["after_extends"] = 2

    def extend(self, batch):
        original_extend(self, batch)
        if kill["after_extends"] is not None:
            kill["after_extends"] -= 1
            if kill["after_extends"] == 0:
                kill["after_extends"] = None
                raise Killed

    def restore(self):
        resumed = original_restore(self)
        if resumed:
            replay = self.schedule.replay
            restores.append(dict(counters=asdict(self.progress), length=len(replay),
                                 cursor=replay.buffer.writer.state_dict()["_cursor"],
                                 episodes_in_files=replay.buffer.storage._storage["episode"].clone()))
        return resumed

    monkeypatch.setattr(Experiment, "save", save)
    monkeypatch.setattr(Experiment, "restore", restore)
    monkeypatch.setattr(OnlineReplay, "extend", extend)

    with pytest.raises(Killed):
        run_online_dreamer(config)
    checkpointed = saves[-1]
    assert checkpointed["counters"]["updates"] == 5 and checkpointed["counters"]["frames"] == 140
    assert checkpointed["length"] == 70
    assert not (tmp_path / "results.jsonl").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["progress"] == checkpointed["counters"]

    counters = run_online_dreamer(copy.deepcopy(config))

    assert len(restores) == 1
    resumed = restores[0]
    assert resumed["counters"] == checkpointed["counters"]  # started from the checkpoint, not from 0
    assert "resuming" in caplog.text and "140 frames, 5 updates" in caplog.text
    assert resumed["length"] == checkpointed["length"] and resumed["cursor"] == checkpointed["cursor"]
    lost = resumed["episodes_in_files"][70:80]  # the two batches written after the checkpoint
    assert len(lost) == 10 and (lost == resumed["episodes_in_files"][69]).all()  # the interrupted episode
    stored = OnlineReplay(tmp_path / "replay", capacity=1_000, seq_len=8)
    stored.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["schedule"]["replays"][0])
    episodes = stored.buffer.storage[:]["episode"]
    assert episodes[70] > resumed["episodes_in_files"].max(), "the episode after the resume reuses an id from the files"
    assert counters.finished and counters.frames == config.train.total_frames
    assert counters.updates == expected_updates(config) == 15
    final = saves[-1]
    assert final["counters"] == asdict(counters)
    assert final["length"] == config.train.total_frames // action_repeat(config.env)  # appended, nothing overwritten
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["frames"], r["updates"]) for r in results] == [(240, 15)]


def test_a_non_finite_loss_stops_the_run_naming_term_and_update_or_is_skipped_and_counted(tmp_path, monkeypatch):
    """A NaN reward reaching the world-model loss stops the run with a one-line error naming the term and
    the update, and leaves the last checkpoint as it was; with ``train.nan_policy=skip`` the run finishes
    and counts the skipped updates in its progress and logs."""
    original_sample = OnlineReplay.sample
    poisoned = {"from": 8}  # updates 1..7 are clean (a checkpoint every 5 updates), then every batch is NaN

    def sample(self, batch_size):
        batch = original_sample(self, batch_size)
        poisoned["from"] -= 1
        if poisoned["from"] <= 0:
            batch["next", "reward"] = torch.full_like(batch["next", "reward"], float("nan"))
        return batch

    monkeypatch.setattr(OnlineReplay, "sample", sample)
    fast = dict(env=dict(name="dmc/cartpole_swingup", action_repeat=8, fast_render=True),
                eval=dict(every_updates=10**6, episodes=1, video=False))
    config = dreamer_config("quick", model=LOOP_MODEL,
                            data=dict(batch_size=2, seq_len=8, buffer_capacity=1_000, whole_episodes=False),
                            train=dict(total_frames=960, prefill_frames=400, train_every=5, device="cpu"),
                            logger=dict(checkpoint_every_updates=5), output_dir=str(tmp_path / "raise"), **fast)
    with pytest.raises(RuntimeError) as info:
        run_online_dreamer(config)
    message = str(info.value)
    assert "\n" not in message and "loss_reward" in message and "at update 8;" in message
    assert "checkpoint.pt is intact" in message and "train.nan_policy=skip" in message
    assert load_checkpoint(tmp_path / "raise" / "checkpoint.pt")["progress"]["updates"] == 5

    poisoned["from"] = 8
    config.train.nan_policy, config.output_dir = "skip", str(tmp_path / "skip")
    progress = run_online_dreamer(config)
    assert progress.finished and progress.updates == expected_updates(config) == 15
    assert progress.skipped_updates == 15 - 7
    with open(tmp_path / "skip" / "logs" / "scalars" / "train" / "skipped_updates.csv") as f:
        assert float(list(csv.reader(f))[-1][1]) == 8


# =========================================================================== GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_agent_update_on_cuda_with_autocast(make_batch):
    """One bf16-autocast update on CUDA gives finite losses and keeps float32 parameters on the GPU."""
    agent = make_dreamer_agent(ModelConfig(**TINY_MODEL), AgentConfig(horizon=3), action_dim=2, device="cuda",
                               autocast=True)
    before = [p.detach().clone() for p in agent.parameters()]
    losses = agent.update(make_batch(2, 6).to("cuda"))
    for key, value in losses.items():
        assert value.is_cuda and torch.isfinite(value).all(), key
    assert all(p.is_cuda and p.dtype == torch.float32 for p in agent.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(agent.parameters(), before))


def test_an_unwritable_or_foreign_output_dir_is_refused_in_one_line(tmp_path):
    config = to_dict(dreamer_config("quick", output_dir=str(tmp_path)))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError) as info:
        RunDirectory(tmp_path / "file" / "run", config)
    assert "output_dir=" in str(info.value) and "is not a writable folder" in str(info.value)
    assert "\n" not in str(info.value) and (tmp_path / "file").read_text() == "not a folder"


def test_a_launchers_requeue_signal_is_handed_on_after_the_checkpoint(tmp_path):
    """submitit on Slurm signals SIGUSR2 before the time limit and its handler requeues the job and
    exits. The run takes the signal like SIGTERM, writes its checkpoint at the next update boundary,
    and only then calls the launcher's handler, so the requeued job resumes from that moment. Its
    status.json then holds the pace since the process began (frames per second), that
    ``report status`` estimates the time left from."""
    import json
    import os
    import signal
    import time

    from coworld_trl.training.experiment import Callback
    from coworld_trl.training.schedules import OnlineDreamer

    config = loop_config(tmp_path)
    seen = []

    def launcher(signum, frame):  # submitit's checkpoint_and_try_requeue ends in sys.exit(-1)
        state = load_checkpoint(tmp_path / "checkpoint.pt")
        status = json.loads((tmp_path / "status.json").read_text())
        seen.append((signum, state["progress"]["frames"], status["done"]))
        assert status["unit"] == "frame" and status["rate"] * (status["updated_at"] - started) >= status["done"] > 0
        assert status["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
        raise SystemExit(-1)

    class SignalMidRun(Callback):
        def __init__(self):
            self.batches = 0

        def on_collect(self, experiment, batch):
            self.batches += 1
            if self.batches == 15:
                os.kill(os.getpid(), signal.SIGUSR2)

    previous, started = signal.signal(signal.SIGUSR2, launcher), time.time()
    try:
        with pytest.raises(SystemExit):
            Experiment(config, OnlineDreamer(), callbacks=[SignalMidRun()]).run()
        assert signal.getsignal(signal.SIGUSR2) is launcher  # restored when the run stopped
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [(signal.SIGUSR2, 15 * 5 * 2, 15 * 5 * 2)]  # 15 batches of 5 steps at action repeat 2, checkpointed first
