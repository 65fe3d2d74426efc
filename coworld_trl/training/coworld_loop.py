"""Algorithm 1 of CoWorld as a resumable loop.

::

    pretrain every source online (plain DreamerV2)                    source_pretrain_frames
    for warm-up round in 1..warmup_rounds (official code; 0 in the paper):
        target world model only (Eq. 2 + Eq. 3)                      warmup_world_model_updates
        online phase as below                                         warmup_online_updates
    for round in 1..rounds:
        offline phase: K1 target updates on dataset sequences         world model + Eq. 3,
            (with several sources: first pick the closest, Eq. 12)    actor, critic + Eq. 6
        online phase: K2 source updates, each after train_every       world model + Eq. 4-5,
            source env steps, on source and relabelled target         actor, critic
            sequences

The target agent never acts in the target env except to be evaluated. Progress (phase,
round, update counts), both agents, optimisers, the source replays' lengths and cursors
(their rows live in the run directory) and RNG are checkpointed, so re-running the same command resumes; a finished run says so and exits.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from tensordict import TensorDictBase
from torchrl.record.loggers import Logger
from tqdm import tqdm

from coworld_trl.agents.coworld import CoWorldAgent
from coworld_trl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld_trl.training.config import ScheduleConfig
from coworld_trl.training.logging import log_metrics
from coworld_trl.training.replay import OnlineReplay
from coworld_trl.training.run_dir import RunDirectory

log = logging.getLogger(__name__)
PHASES = ("pretrain", "warmup", "warmup_online", "offline", "online", "done")


@dataclass
class CoWorldCounters:
    phase: str = "pretrain"
    warmup_round: int = 0
    round: int = 0
    phase_updates: int = 0  # updates done in the current phase
    target_updates: int = 0
    source_updates: int = 0
    source_frames: int = 0
    last_eval_update: int = 0
    last_checkpoint_update: int = 0


class CoWorldTrainer:
    """Runs Algorithm 1 with the pieces it is given.

    Args:
        agent: a :class:`CoWorldAgent`.
        sample_target: ``() -> [B, T]`` target sequences (from the offline dataset).
        source_replays: one :class:`~coworld_trl.training.replay.OnlineReplay` per source.
        make_source_collector: ``(index, policy, random_frames) -> iterator`` of collector
            batches of ``train_every`` steps from source ``index``'s env, without end.
        evaluator: ``(policy, step) -> metrics`` on the target env.
        logger, run_dir: where metrics, results and checkpoints go.
        schedule: phase lengths.
        batch_size: source sequences per batch.
        frames_per_step: the source envs' action repeat (frame counting).
    """

    def __init__(self, agent: CoWorldAgent, *, sample_target: Callable[[], TensorDictBase],
                 source_replays: Sequence[OnlineReplay], make_source_collector: Callable, evaluator: Callable,
                 logger: Logger, run_dir: RunDirectory, schedule: ScheduleConfig, batch_size: int,
                 frames_per_step: int, prefill_frames: int, train_every: int):
        self.agent, self.sample_target, self.source_replays = agent, sample_target, list(source_replays)
        self.make_source_collector, self.evaluator, self.logger, self.run_dir = (
            make_source_collector, evaluator, logger, run_dir)
        self.schedule, self.batch_size = schedule, batch_size
        self.frames_per_step, self.prefill_frames, self.train_every = frames_per_step, prefill_frames, train_every
        self.counters = CoWorldCounters()
        self._collectors: dict[int, object] = {}

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        """Checkpoint agents, counters, RNG and the source replays' lengths and cursors."""
        c = self.counters
        c.last_checkpoint_update = c.target_updates + c.source_updates
        save_checkpoint(self.run_dir.checkpoint, {
            "agent": self.agent.checkpoint_state(), "counters": asdict(c), "rng": rng_state(),
            "replays": [replay.state_dict() for replay in self.source_replays],
        })

    def restore(self) -> bool:
        if not self.run_dir.checkpoint.exists():
            for replay in self.source_replays:
                replay.discard_files()
            return False
        state = load_checkpoint(self.run_dir.checkpoint, map_location=next(self.agent.parameters()).device,
                                resume=True)
        self.agent.load_checkpoint_state(state["agent"])
        self.counters = CoWorldCounters(**state["counters"])
        set_rng_state(state["rng"])
        for replay, replay_state in zip(self.source_replays, state["replays"]):
            replay.load_state_dict(replay_state)
        return True

    # ------------------------------------------------------------------ pieces
    def _collect(self, index: int) -> None:
        """``train_every`` steps of source ``index`` into its buffer (random until prefilled)."""
        if index not in self._collectors:
            random_frames = max(self.prefill_frames - len(self.source_replays[index]) * self.frames_per_step, 0)
            policy = self.agent.sources[index].policy()
            collector = self.make_source_collector(index, policy, random_frames // self.frames_per_step)
            self._collectors[index] = (collector, iter(collector))
        batch = next(self._collectors[index][1])
        self.source_replays[index].extend(batch)
        self.counters.source_frames += batch.numel() * self.frames_per_step
        done = batch["next", "done"].reshape(-1)
        if done.any() and ("next", "episode_reward") in batch.keys(True):
            log_metrics(self.logger, {f"train/source{index}_episode_return":
                                      batch["next", "episode_reward"].reshape(-1)[done].mean().item()},
                        self.counters.source_frames)

    def _source_batch(self, index: int) -> TensorDictBase:
        device = next(self.agent.parameters()).device
        return self.source_replays[index].sample(self.batch_size).to(device)

    def _log(self, prefix: str, metrics: TensorDictBase, step: int) -> None:
        scalars = {f"train/{prefix}_{k}": v.float().mean().item() for k, v in metrics.items()}
        log_metrics(self.logger, scalars, step)

    def evaluate(self) -> dict:
        c = self.counters
        metrics = self.evaluator(self.agent.target.policy(), c.target_updates)
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        log_metrics(self.logger, scalars, c.target_updates)
        self.run_dir.append_result({"target_updates": c.target_updates, "source_updates": c.source_updates,
                                    "source_frames": c.source_frames, "round": c.round, "phase": c.phase,
                                    "active_source": self.agent.active_source, "time": time.time(), **metrics})
        c.last_eval_update = c.target_updates
        return scalars

    def _maybe_checkpoint(self) -> None:
        c = self.counters
        if c.target_updates + c.source_updates - c.last_checkpoint_update >= self.schedule.checkpoint_every_updates:
            self.save()

    def _next_phase(self, phase: str) -> None:
        c = self.counters
        c.phase, c.phase_updates = phase, 0
        self.save()

    # ------------------------------------------------------------------ Algorithm 1
    def run(self) -> CoWorldCounters:
        s = self.schedule
        if self.restore():
            if self.counters.phase == "done":
                log.info("run in %s is finished; nothing to do", self.run_dir.path)
                return self.counters
            log.info("resuming %s: round %d, %s phase, %d updates into it", self.run_dir.path, self.counters.round,
                     self.counters.phase, self.counters.phase_updates)
        c = self.counters
        total = (len(self.agent.sources) * s.source_pretrain_frames // (self.frames_per_step * self.train_every)
                 + s.warmup_rounds * (s.warmup_world_model_updates + s.warmup_online_updates)
                 + s.rounds * (s.offline_updates + s.online_updates))
        bar = tqdm(total=total, unit="update", dynamic_ncols=True, mininterval=2.0)
        try:
            if c.phase == "pretrain":
                self._pretrain_phase(bar)
                self._next_phase("warmup" if s.warmup_rounds else "offline")
            while c.warmup_round < s.warmup_rounds:  # the official code's warm-up (none in the paper)
                if c.phase == "warmup":
                    self._offline_phase(bar, s.warmup_world_model_updates, world_model_only=True)
                    self._next_phase("warmup_online")
                if c.phase == "warmup_online":
                    self._online_phase(bar, s.warmup_online_updates)
                    c.warmup_round += 1
                    self._next_phase("warmup" if c.warmup_round < s.warmup_rounds else "offline")
            while c.round < s.rounds:
                if c.phase == "offline":
                    self._offline_phase(bar, s.offline_updates)
                    self._next_phase("online")
                if c.phase == "online":
                    self._online_phase(bar, s.online_updates)
                    c.round += 1
                    self._next_phase("offline")
        finally:
            bar.close()
            for collector, _ in self._collectors.values():
                if hasattr(collector, "shutdown"):
                    collector.shutdown()
            self._collectors.clear()
        if c.last_eval_update != c.target_updates or not self.run_dir.read_results():
            self.evaluate()
        c.phase = "done"
        self.save()
        return c

    def _pretrain_phase(self, bar: tqdm) -> None:
        """Each source in turn: plain online DreamerV2 for ``source_pretrain_frames``."""
        c, s = self.counters, self.schedule
        updates_per_source = s.source_pretrain_frames // (self.frames_per_step * self.train_every)
        for index in range(len(self.agent.sources)):
            while c.phase_updates < (index + 1) * updates_per_source:
                self._collect(index)
                if len(self.source_replays[index]) * self.frames_per_step >= self.prefill_frames:
                    metrics = self.agent.source_update(self._source_batch(index), None, index)
                    c.source_updates += 1
                    self._log_every(f"source{index}", metrics, c.source_updates)
                c.phase_updates += 1
                bar.update(1)
                self._maybe_checkpoint()

    def _offline_phase(self, bar: tqdm, updates: int, *, world_model_only: bool = False) -> None:
        """Target updates on dataset sequences; with several sources, first pick the closest (Eq. 12)."""
        c = self.counters
        if c.phase_updates == 0 and len(self.agent.sources) > 1:
            index, kls = self.agent.choose_source(self.sample_target())
            log_metrics(self.logger, {"train/chosen_source": float(index),
                                      **{f"train/source{i}_embedding_kl": k.item() for i, k in enumerate(kls)}},
                        c.target_updates)
        update = self.agent.target_world_model_update if world_model_only else self.agent.target_update
        while c.phase_updates < updates:
            metrics = update(self.sample_target())
            c.target_updates += 1
            c.phase_updates += 1
            bar.update(1)
            self._log_every("target", metrics, c.target_updates)
            if c.target_updates - c.last_eval_update >= self.schedule.eval_every_target_updates:
                bar.set_postfix(eval_return=f"{self.evaluate()['eval/return_mean']:.1f}")
            self._maybe_checkpoint()

    def _online_phase(self, bar: tqdm, updates: int) -> None:
        """Source updates of the active source, each after ``train_every`` of its env steps, on
        its own and relabelled target sequences."""
        c = self.counters
        index = self.agent.active_source
        while c.phase_updates < updates:
            self._collect(index)
            metrics = self.agent.source_update(self._source_batch(index), self.sample_target(), index)
            c.source_updates += 1
            c.phase_updates += 1
            bar.update(1)
            self._log_every(f"source{index}", metrics, c.source_updates)
            self._maybe_checkpoint()

    def _log_every(self, prefix: str, metrics: TensorDictBase, step: int, every: int = 100) -> None:
        if step % every == 0:
            self._log(prefix, metrics, step)
