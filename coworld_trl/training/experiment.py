"""One experiment for every agent.

An experiment sets a run up in a fixed order: config (validated) and the schedule's inputs
(its offline dataset: a missing one is refused before anything is written) -> process
(threads, allocator, seed, device) -> run directory (and its checkpoint, read now so that one
this version cannot resume is refused before anything is written) -> logger -> the schedule's
envs, replays and agent (built through :mod:`coworld_trl.training.factory`) -> evaluator; a new
run's folder is removed again when any of these fails. Then the schedule runs.
Only the schedule differs between agents (online DreamerV2; CoWorld's Algorithm 1; a
baseline's pretrain-then-finetune); checkpoint, restore, evaluation, the clocks and metric
aggregation are written here, once:

* clocks (dreamerv3's ``when.Every``): log every ``logger.log_every_updates`` updates,
  evaluate every ``eval.every_updates`` updates of the evaluated agent, checkpoint every
  ``logger.checkpoint_every_updates`` updates of any agent; a schedule calls :meth:`tick`
  wherever its state is consistent;
* metrics: every update's detached metrics are summed per prefix on the device and averaged
  over the logging interval (one host sync per interval);
* callbacks: ``on_collect(experiment, batch)``, ``on_eval(experiment, metrics)``,
  ``on_checkpoint(experiment)``;
* signals: SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) lets the current update
  finish, writes a checkpoint and raises :class:`RunInterrupted` (one line: how to resume); a
  second signal stops at once. A checkpoint is also written every
  ``logger.checkpoint_every_minutes`` of wall clock, so a SIGKILL loses minutes.

Re-running with the same output directory resumes from the last checkpoint; a finished run
says so and exits. ``status.json`` in the run folder says where the run is (phase, counters,
last evaluation, finished, updated at); it is rewritten at every log, evaluation, checkpoint and
phase change, so ``report status`` can list a sweep in progress.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from tqdm import tqdm

from coworld_trl.agents import NonFiniteLossError
from coworld_trl.errors import ConfigError, CoWorldError
from coworld_trl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld_trl.training.config import to_dict, validate
from coworld_trl.training.logging import log_metrics, make_logger
from coworld_trl.training.memory import keep_freed_memory
from coworld_trl.training.run_dir import RunDirectory

log = logging.getLogger("coworld_trl")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_process(train) -> torch.device:
    """Threads, allocator, seeds and device of a training process (``TrainConfig``); returns the device."""
    if train.threads:
        torch.set_num_threads(train.threads)
    if train.keep_freed_memory:
        keep_freed_memory()
    seed_everything(train.seed)
    return resolve_device(train.device)


@dataclass
class Every:
    """True once every ``interval`` counts of a counter; ``last`` is when it last fired."""

    interval: int
    last: int = 0

    def __call__(self, count: int) -> bool:
        if count - self.last >= self.interval:
            self.last = count
            return True
        return False


class MetricAggregator:
    """Per-prefix sums of detached metric TensorDicts, averaged when flushed.

    Each metric is averaged over the updates that logged it: a schedule's phases may log
    different metrics within one interval (a two-stage run's world-model updates, then its
    actor-critic updates). Keys starting with ``skipped_`` (an optimiser step the agent skipped
    on a non-finite loss) are also counted, so the run can report how many updates it skipped.
    """

    def __init__(self):
        # (prefix, the metrics' keys) -> their sum over the interval and the number of updates
        self._sums: dict[tuple[str, tuple[str, ...]], TensorDictBase] = {}
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}

    def add(self, prefix: str, metrics: TensorDictBase) -> None:
        metrics = metrics.apply(lambda x: x.detach().float().mean())
        group = (prefix, tuple(sorted(metrics.keys())))
        if group in self._sums:
            self._sums[group] += metrics
            self._counts[group] += 1
        else:
            self._sums[group], self._counts[group] = metrics, 1

    def flush(self) -> tuple[dict[str, float], int]:
        """``({"train/<prefix>_<key>": mean}, skipped updates)`` since the last flush."""
        totals, skipped = {}, 0  # name -> [sum, updates]
        for group, sums in self._sums.items():
            prefix, count = group[0], self._counts[group]
            values = {key: value.item() for key, value in sums.to("cpu").items()}  # one sync per group
            # An update is skipped when any of its optimiser steps is.
            skipped += round(max((v for k, v in values.items() if k.startswith("skipped_")), default=0.0))
            for key, value in values.items():
                total = totals.setdefault(f"train/{prefix}_{key}" if prefix else f"train/{key}", [0.0, 0])
                total[0] += value
                total[1] += count
        self._sums.clear()
        self._counts.clear()
        return {name: value / count for name, (value, count) in totals.items()}, skipped


class RunInterrupted(CoWorldError):
    """A run stopped on SIGINT or SIGTERM after writing its checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _StopOnSignal:
    """SIGINT and SIGTERM set ``experiment.interrupted``; a second one raises KeyboardInterrupt.

    A launcher's own handler of SIGUSR1/SIGUSR2 (submitit on Slurm: requeue the job, then exit,
    when the time limit nears) is taken over the same way and kept in
    ``experiment.handed_on``: the experiment calls it once the checkpoint is written, so the
    requeued job resumes from that moment. Handlers are installed only in the main thread and
    restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    LAUNCHER_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, experiment: "Experiment"):
        self.experiment, self.previous = experiment, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
            for signum in self.LAUNCHER_SIGNALS:
                launcher = signal.getsignal(signum)
                if callable(launcher):
                    self.experiment.handed_on[signum] = launcher
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.experiment.interrupted is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped without a checkpoint")
        self.experiment.interrupted = signum
        log.warning("%s: finishing the current update, then writing a checkpoint (again to stop at once)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Callback:
    """Hooks into a running experiment; override what you need."""

    def on_collect(self, experiment: "Experiment", batch: TensorDictBase) -> None:
        """Every collected batch, before anything is dropped from it."""

    def on_eval(self, experiment: "Experiment", metrics: dict[str, Any]) -> None:
        """Every evaluation's metrics (``eval/return_mean``, ...)."""

    def on_checkpoint(self, experiment: "Experiment") -> None:
        """After every checkpoint is written."""


class StopAtReturn(Callback):
    """Finish the run once an evaluation's mean return reaches ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_eval(self, experiment: "Experiment", metrics: dict[str, Any]) -> None:
        if metrics["eval/return_mean"] >= self.threshold:
            log.info("eval return %.1f reached %.1f; stopping", metrics["eval/return_mean"], self.threshold)
            experiment.stop_requested = True


class Schedule(Protocol):
    """What differs between agents (see :mod:`coworld_trl.training.schedules`).

    Attributes:
        progress: a dataclass of counters with at least ``updates``, ``frames`` and
            ``finished``; checkpointed.
    """

    progress: Any

    def open_inputs(self, config) -> None:
        """Open what the run reads and must not create itself (an offline dataset)."""

    def make_agent(self, config, device: torch.device):
        """The agent alone, freshly initialised (what ``evaluate`` loads a checkpoint into)."""

    def build(self, experiment: "Experiment"):
        """Build envs, replays and the agent from ``experiment.config``; return the agent."""

    def evaluated(self) -> tuple[Any, str]:
        """``(DreamerV2 agent, env name)`` that evaluations run."""

    def eval_count(self) -> int:
        """Updates of the evaluated agent (the evaluation clock counts them)."""

    def log_step(self) -> int:
        """The x-axis of logged scalars."""

    def bar(self) -> tuple[int, int, str]:
        """Progress bar ``(total, done, unit)``."""

    def run(self, experiment: "Experiment") -> None:
        """Train, calling :meth:`Experiment.record` per update and :meth:`Experiment.tick` where
        a checkpoint is consistent; return early when ``experiment.stop_requested``."""

    def state_dict(self) -> dict:
        """What the schedule needs to resume besides ``progress`` (e.g. replay cursors)."""

    def load_state_dict(self, state: dict) -> None: ...

    def discard_files(self) -> None:
        """Remove files a run killed before its first checkpoint left (fresh start)."""

    def close(self) -> None:
        """Shut collectors down."""


class Experiment:
    """A run of ``schedule`` configured by ``config``, writing everything to ``config.output_dir``.

    Args:
        config: a recipe config (:class:`~coworld_trl.training.config.DreamerConfig`,
            :class:`~coworld_trl.training.config.CoWorldConfig`).
        schedule: the agent's schedule.

    Keyword Args:
        callbacks: :class:`Callback` instances.

    Examples:
        >>> from coworld_trl.training import Experiment, OnlineDreamer, dreamer_config
        >>> Experiment(dreamer_config("quick", output_dir="runs/demo"), OnlineDreamer()).run()
    """

    def __init__(self, config, schedule: Schedule, *, callbacks: Sequence[Callback] = ()):
        from coworld_trl.training.factory import make_evaluator

        validate(config)
        schedule.open_inputs(config)
        self.config, self.schedule, self.callbacks = config, schedule, list(callbacks)
        self.device = prepare_process(config.train)
        self.run_dir = RunDirectory(config.output_dir, to_dict(config))
        try:
            # A checkpoint this version cannot resume is refused before the logger and replays write here.
            self._resume_state = load_checkpoint(self.run_dir.checkpoint, map_location=self.device, resume=True) \
                if self.run_dir.checkpoint.exists() else None
            self.logger = make_logger(config.logger.backend, self.run_dir.path, project=config.logger.project)
            self.agent = schedule.build(self)
            evaluated, env_name = schedule.evaluated()
            self.evaluator = make_evaluator(config, evaluated, env_name, logger=self.logger, device=self.device)
        except BaseException:
            self.run_dir.discard()  # a failed start leaves no folder that would refuse the corrected command
            raise
        self.clocks = {"log": Every(config.logger.log_every_updates), "eval": Every(config.eval.every_updates),
                       "checkpoint": Every(config.logger.checkpoint_every_updates)}
        self.metrics = MetricAggregator()
        self.stop_requested = False
        self.interrupted: int | None = None  # the signal number, once SIGINT or SIGTERM arrived
        self.handed_on: dict[int, Any] = {}  # a launcher's signal handlers, called after the checkpoint
        self._last_save = time.time()
        self._bar: tqdm | None = None
        self._last_flush = (time.time(), 0)
        self._phase, self._last_eval = "starting", None
        self._pace: tuple[float, int] | None = None  # (time, progress) when this process began its work

    @property
    def progress(self):
        return self.schedule.progress

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        """Checkpoint the agent, progress, clocks, RNG and the schedule's state (replay cursors;
        the replays' rows are already on disk in the run directory)."""
        save_checkpoint(self.run_dir.checkpoint, {
            "agent": self.agent.checkpoint_state(),
            "progress": asdict(self.progress),
            "clocks": {name: clock.last for name, clock in self.clocks.items()},
            "schedule": self.schedule.state_dict(),
            "rng": rng_state(),
        })
        self._last_save = time.time()
        self.write_status()
        for callback in self.callbacks:
            callback.on_checkpoint(self)

    def restore(self) -> bool:
        state, self._resume_state = self._resume_state, None
        if state is None:
            self.schedule.discard_files()
            return False
        self.agent.load_checkpoint_state(state["agent"])
        self.schedule.progress = type(self.progress)(**state["progress"])
        for name, last in state["clocks"].items():
            self.clocks[name].last = last
        self.schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"])
        self._last_flush = (time.time(), self.progress.updates)
        results = self.run_dir.read_results()
        self._last_eval = self._eval_summary(results[-1]) if results else None
        return True

    # ----------------------------------------------------- what schedules call
    def record(self, prefix: str, metrics: TensorDictBase) -> None:
        """One update's metrics (``prefix`` names the agent, e.g. ``target``; ``""`` for a single agent)."""
        self.metrics.add(prefix, metrics)
        self.progress.updates += 1

    def collected(self, batch: TensorDictBase, *, frames: int, name: str = "") -> None:
        """A collected batch of ``frames`` env frames: callbacks, frame count, finished episodes' returns."""
        for callback in self.callbacks:
            callback.on_collect(self, batch)
        self.progress.frames += frames
        done = batch["next", "done"].reshape(-1)
        if done.any() and ("next", "episode_reward") in batch.keys(True):
            returns = batch["next", "episode_reward"].reshape(-1)[done]
            self.log({f"train/{name}_episode_return" if name else "train/episode_return": returns.mean().item()})

    def tick(self) -> None:
        """Run whatever clock is due: log the aggregated metrics, evaluate, checkpoint (every
        ``checkpoint_every_updates`` updates or ``checkpoint_every_minutes``); after a signal,
        checkpoint and raise :class:`RunInterrupted`."""
        updates = self.progress.updates
        if self._bar is not None:
            self._bar.update(self.schedule.bar()[1] - self._bar.n)
        if self.clocks["log"](updates):
            self.flush_metrics()
        if self.schedule.eval_count() and self.clocks["eval"](self.schedule.eval_count()):
            self.evaluate()
        minutes = self.config.logger.checkpoint_every_minutes
        overdue = minutes > 0 and time.time() - self._last_save >= 60 * minutes
        if self.interrupted is not None:
            self._phase = "interrupted"
        if self.interrupted is not None or (updates and (self.clocks["checkpoint"](updates) or overdue)):
            self.clocks["checkpoint"].last = updates
            self.save()
        if self.interrupted is not None:
            if self.interrupted in self.handed_on:
                self.handed_on[self.interrupted](self.interrupted, None)  # e.g. submitit: requeue, exit
            name = signal.Signals(self.interrupted).name
            raise RunInterrupted(f"{name} at {self._describe()}: checkpoint written to {self.run_dir.checkpoint}; "
                                 f"re-run the same command to resume", self.interrupted)

    def log(self, scalars: dict[str, float]) -> None:
        log_metrics(self.logger, scalars, self.schedule.log_step())

    def set_phase(self, phase: str) -> None:
        self._phase = phase
        if self._bar is not None:
            self._bar.set_description(phase)
        self.write_status()

    @staticmethod
    def _eval_summary(record: dict[str, Any]) -> dict[str, Any]:
        return {"frames": record["frames"], "updates": record["updates"], "return_mean": record["eval/return_mean"]}

    def write_status(self) -> None:
        """Rewrite ``status.json`` (atomically: a reader never sees half a file)."""
        p = self.progress
        total, done, unit = self.schedule.bar()
        now = time.time()
        status = {"phase": "finished" if p.finished else self._phase, "frames": p.frames, "updates": p.updates,
                  "done": done, "total": total, "unit": unit, "last_eval": self._last_eval, "finished": p.finished,
                  "updated_at": now, "host": socket.gethostname(), "pid": os.getpid(),
                  # The CPU kernels this process computes with: AVX2 and AVX-512 ones give a
                  # run other numbers (docs/results.md, reproducing a run on another machine).
                  "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
        if self._pace is not None and done > self._pace[1] and now > self._pace[0]:
            # Units per second since this process started, evaluations and checkpoints included:
            # what ``report status`` estimates the time left from.
            status["rate"] = (done - self._pace[1]) / (now - self._pace[0])
        tmp = self.run_dir.path / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.run_dir.path / "status.json")

    def flush_metrics(self) -> None:
        scalars, skipped = self.metrics.flush()
        if not scalars:
            return
        started, updates = self._last_flush
        self._last_flush = (time.time(), self.progress.updates)
        scalars["time/seconds_per_update"] = (time.time() - started) / max(self.progress.updates - updates, 1)
        if skipped:
            self.progress.skipped_updates += skipped
            log.warning("%d updates skipped on non-finite losses (train.nan_policy=skip); %d in all", skipped,
                        self.progress.skipped_updates)
        scalars["train/skipped_updates"] = self.progress.skipped_updates
        self.log(scalars)
        self.write_status()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the schedule's evaluated agent; log, append to ``results.jsonl``, run callbacks."""
        agent, _ = self.schedule.evaluated()
        metrics = self.evaluator(agent.policy(), self.schedule.log_step())
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        self.log(scalars)
        # agent_updates: the evaluated agent's updates, the one x-axis every agent's runs share
        record = {**asdict(self.progress), "agent_updates": self.schedule.eval_count(), "time": time.time(), **metrics}
        self.run_dir.append_result(record)
        self._last_eval = self._eval_summary(record)
        self.write_status()
        self.clocks["eval"].last = self.schedule.eval_count()
        if self._bar is not None:
            self._bar.set_postfix(eval_return=f"{metrics['eval/return_mean']:.1f}")
        for callback in self.callbacks:
            callback.on_eval(self, metrics)
        return scalars

    # --------------------------------------------------------------------- run
    def run(self):
        """Resume or start, run the schedule, evaluate at the end, write the final checkpoint."""
        p = self.progress
        if self.restore():
            p = self.progress
            if p.finished:
                log.info("run in %s is finished (%s); nothing to do", self.run_dir.path, self._describe())
                return p
            log.info("resuming %s at %s", self.run_dir.path, self._describe())
        total, done, unit = self.schedule.bar()
        self._bar = tqdm(total=total, initial=done, unit=unit, dynamic_ncols=True, mininterval=2.0)
        self._pace = (time.time(), done)
        self.write_status()
        try:
            with _StopOnSignal(self):
                self.schedule.run(self)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err} at update {self.progress.updates + 1}; the last checkpoint {self.run_dir.checkpoint} "
                f"is intact (train.nan_policy=skip skips such updates)") from None
        finally:
            self._bar.close()
            self._bar = None
            self.schedule.close()
        self.flush_metrics()
        if self.clocks["eval"].last != self.schedule.eval_count() or not self.run_dir.read_results():
            self.evaluate()
        p.finished = True
        self.save()
        final = self.run_dir.read_results()[-1]
        bias = f", value bias {final['eval/value_bias']:+.2f}" if "eval/value_bias" in final else ""
        log.info("run finished (%s): eval return %.1f%s; results in %s", self._describe(), final["eval/return_mean"],
                 bias, self.run_dir.results)
        return p

    def _describe(self) -> str:
        p = self.progress
        return f"{p.frames} frames, {p.updates} updates"
