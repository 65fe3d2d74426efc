"""The online run loop: collect, store, update, evaluate, checkpoint, resume.

It receives its agent, collector factory, replay buffer, evaluator and logger; it builds
none of them. Re-running with the same run directory resumes from the last checkpoint.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.record.loggers import Logger
from tqdm import tqdm

from coworld_trl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld_trl.training.logging import log_metrics
from coworld_trl.training.replay import OnlineReplay
from coworld_trl.training.run_dir import RunDirectory

log = logging.getLogger("coworld_trl")


@dataclass
class Counters:
    frames: int = 0
    updates: int = 0
    episodes: int = 0
    last_eval_update: int = 0
    last_checkpoint_update: int = 0
    finished: bool = False


@dataclass
class LoopSettings:
    total_frames: int
    prefill_frames: int
    frames_per_step: int
    train_every: int
    updates_per_train: int
    batch_size: int
    eval_every_updates: int
    checkpoint_every_updates: int
    log_every_updates: int = 100
    stop_return: float | None = None  # finish early once an evaluation's mean return reaches this


class OnlineTrainer:
    """DreamerV2's online loop (Hafner et al. 2021, Alg. 1 of Dreamer):

    ``while frames < total: collect train_every steps -> store -> update -> evaluate
    -> checkpoint``.

    Args:
        agent: has ``update(batch)``, ``policy()``, ``checkpoint_state()``,
            ``load_checkpoint_state()``.
        make_collector: ``(policy, remaining_frames, random_frames) -> iterable of batches``
            (a TorchRL collector).
        replay: the run's :class:`~coworld_trl.training.replay.OnlineReplay`.
        evaluator: ``(policy, step) -> metrics``.
        logger: a TorchRL logger.
        run_dir: where config, checkpoints and results live.
        settings: counts and intervals.
        on_collect: optional ``(batch) -> None`` called with every collected batch, before
            anything is dropped from it (e.g. an :class:`~coworld_trl.data.EpisodeRecorder`).
    """

    def __init__(self, agent, *, make_collector: Callable, replay: OnlineReplay, evaluator: Callable,
                 logger: Logger, run_dir: RunDirectory, settings: LoopSettings,
                 on_collect: Callable[[TensorDictBase], None] | None = None):
        self.agent, self.make_collector, self.replay = agent, make_collector, replay
        self.evaluator, self.logger, self.run_dir, self.settings = evaluator, logger, run_dir, settings
        self.on_collect = on_collect
        self.counters = Counters()

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        """Checkpoint agent, counters, RNG and the replay's length and cursor (its rows are
        already on disk in the run directory)."""
        self.counters.last_checkpoint_update = self.counters.updates
        save_checkpoint(self.run_dir.checkpoint, {
            "agent": self.agent.checkpoint_state(),
            "counters": asdict(self.counters),
            "replay": self.replay.state_dict(),
            "rng": rng_state(),
        })

    def restore(self) -> bool:
        if not self.run_dir.checkpoint.exists():
            self.replay.discard_files()
            return False
        state = load_checkpoint(self.run_dir.checkpoint, map_location=next(self.agent.parameters()).device,
                                resume=True)
        self.agent.load_checkpoint_state(state["agent"])
        self.counters = Counters(**state["counters"])
        set_rng_state(state["rng"])
        self.replay.load_state_dict(state["replay"])
        return True

    # ------------------------------------------------------------------- loop
    def evaluate(self) -> None:
        c = self.counters
        metrics = self.evaluator(self.agent.policy(), c.frames)
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        log_metrics(self.logger, scalars, c.frames)
        self.run_dir.append_result({"frames": c.frames, "updates": c.updates, "time": time.time(), **metrics})
        c.last_eval_update = c.updates
        return scalars

    def run(self) -> Counters:
        s = self.settings
        restored = self.restore()
        c = self.counters  # restore() replaces the counters
        if restored:
            if c.finished:
                log.info("run in %s is finished (%d frames, %d updates); nothing to do", self.run_dir.path,
                         c.frames, c.updates)
                return c
            log.info("resuming %s at %d frames, %d updates", self.run_dir.path, c.frames, c.updates)
        remaining_steps = max(s.total_frames - c.frames, 0) // s.frames_per_step
        random_steps = max(s.prefill_frames - c.frames, 0) // s.frames_per_step
        collector = self.make_collector(self.agent.policy(), remaining_steps, random_steps)
        bar = tqdm(total=s.total_frames, initial=c.frames, unit="frame", dynamic_ncols=True, mininterval=2.0)
        pending, started = [], time.time()
        try:
            for batch in collector:
                # 1. store what the acting policy just collected
                if self.on_collect is not None:
                    self.on_collect(batch)
                self.replay.extend(batch)
                c.frames += batch.numel() * s.frames_per_step
                c.episodes += int(batch["next", "done"].sum())
                self._log_episodes(batch)
                bar.update(batch.numel() * s.frames_per_step)
                # 2. learn: world model, then actor and critic in imagination
                if c.frames >= s.prefill_frames:
                    for _ in range(s.updates_per_train):
                        batch = self.replay.sample(s.batch_size)
                        pending.append(self.agent.update(batch.to(next(self.agent.parameters()).device)))
                        c.updates += 1
                        if c.updates % s.log_every_updates == 0:
                            self._log_updates(pending, started)
                            pending, started = [], time.time()
                # 3. evaluate and checkpoint on update counts
                if c.updates and c.updates - c.last_eval_update >= s.eval_every_updates:
                    eval_return = self.evaluate()["eval/return_mean"]
                    bar.set_postfix(updates=c.updates, eval_return=f"{eval_return:.1f}")
                    if s.stop_return is not None and eval_return >= s.stop_return:
                        log.info("eval return %.1f reached stop_return=%.1f at %d frames; stopping",
                                 eval_return, s.stop_return, c.frames)
                        break
                if c.updates and c.updates - c.last_checkpoint_update >= s.checkpoint_every_updates:
                    self.save()
        finally:
            bar.close()
            if hasattr(collector, "shutdown"):
                collector.shutdown()
        if c.last_eval_update != c.updates or not self.run_dir.read_results():
            self.evaluate()
        c.finished = True
        self.save()
        return c

    def _log_episodes(self, batch: TensorDictBase) -> None:
        done = batch["next", "done"].reshape(-1)
        if done.any() and ("next", "episode_reward") in batch.keys(True):
            returns = batch["next", "episode_reward"].reshape(-1)[done]
            log_metrics(self.logger, {"train/episode_return": returns.mean().item()}, self.counters.frames)

    def _log_updates(self, pending: list, started: float) -> None:
        stacked = torch.stack([m.apply(lambda x: x.float()) for m in pending]).mean(0)
        metrics = {f"train/{k}": v.item() for k, v in stacked.items()}
        metrics["time/seconds_per_update"] = (time.time() - started) / len(pending)
        log_metrics(self.logger, metrics, self.counters.frames)
