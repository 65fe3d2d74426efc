"""What differs between agents: their schedules. Everything else is the :class:`~coworld_trl.
training.experiment.Experiment`'s.

* :class:`OnlineDreamer`: DreamerV2's online loop.
* :class:`CoWorld`: Algorithm 1 of the paper.

A schedule builds its envs, data, replays and agent through :mod:`coworld_trl.training.factory`,
keeps its counters in ``progress`` (checkpointed by the experiment), hands every update's
metrics to :meth:`Experiment.record` and calls :meth:`Experiment.tick` wherever a checkpoint is
consistent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coworld_trl.data import DatasetError

if TYPE_CHECKING:
    from coworld_trl.training.experiment import Experiment

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counters every schedule has: updates of any agent, env frames collected, skipped updates."""

    updates: int = 0
    frames: int = 0
    skipped_updates: int = 0
    finished: bool = False


def _compile(agent) -> None:
    agent.world_model.encoder.compile()
    agent.world_model.decoder.compile()


def _shutdown(collector) -> None:
    if hasattr(collector, "shutdown"):
        collector.shutdown()


# ======================================================================= online DreamerV2
@dataclass
class OnlineProgress(Progress):
    episodes: int = 0


class OnlineDreamer:
    """DreamerV2's online loop (Hafner et al. 2021):

    ``until total_frames: collect train_every steps -> store -> updates_per_train updates``,
    random actions until ``prefill_frames`` are stored. Reads a
    :class:`~coworld_trl.training.config.DreamerConfig`.
    """

    def __init__(self):
        self.progress = OnlineProgress()
        self._collector = None

    def open_inputs(self, config) -> None:
        """Online DreamerV2 reads no dataset."""

    def build(self, experiment: "Experiment"):
        from coworld_trl.agents import make_dreamer_agent
        from coworld_trl.training.config import action_repeat
        from coworld_trl.training.factory import make_replay, make_run_env

        config = self.config = experiment.config
        self.frames_per_step = action_repeat(config.env)
        probe = make_run_env(config.env, config.train.seed)
        action_dim, obs_shape = probe.action_spec.shape[-1], tuple(probe.observation_spec["pixels"].shape)
        probe.close()
        self.agent = make_dreamer_agent(config.model, config.agent, action_dim=action_dim, obs_shape=obs_shape,
                                        device=experiment.device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy)
        if config.train.compile:
            _compile(self.agent)
        self.replay = make_replay(experiment.run_dir.path / "replay", config.data)
        return self.agent

    def evaluated(self):
        return self.agent, self.config.env.name

    def eval_count(self) -> int:
        return self.progress.updates

    def log_step(self) -> int:
        return self.progress.frames

    def bar(self) -> tuple[int, int, str]:
        return self.config.train.total_frames, self.progress.frames, "frame"

    def run(self, experiment: "Experiment") -> None:
        from coworld_trl.training.factory import collector_seed, make_collector, make_run_env

        config, p, agent = self.config, self.progress, self.agent
        train = config.train
        env = make_run_env(config.env, collector_seed(train.seed))
        random_steps = max(train.prefill_frames - p.frames, 0) // self.frames_per_step
        self._collector = make_collector(env, agent, random_steps=random_steps, steps_per_batch=train.train_every,
                                         device=experiment.device)
        experiment.set_phase("online")
        for batch in self._collector:
            # 1. store what the acting policy just collected
            experiment.collected(batch, frames=batch.numel() * self.frames_per_step)
            self.replay.extend(batch)
            p.episodes += int(batch["next", "done"].sum())
            # 2. learn: world model, then actor and critic in imagination
            if p.frames >= train.prefill_frames:
                for _ in range(train.updates_per_train):
                    batch = self.replay.sample(config.data.batch_size).to(experiment.device)
                    experiment.record("", agent.update(batch))
            # 3. log, evaluate, checkpoint when due
            experiment.tick()
            if p.frames >= train.total_frames or experiment.stop_requested:
                break

    def state_dict(self) -> dict:
        return {"replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state["replay"])

    def discard_files(self) -> None:
        self.replay.discard_files()

    def close(self) -> None:
        if self._collector is not None:
            _shutdown(self._collector)
            self._collector = None


# ==================================================================== CoWorld, Algorithm 1
@dataclass
class ScheduleConfig:
    """Algorithm 1's phases. A source update follows every ``train.train_every`` source env steps.

    Defaults follow the paper for DMC: 3e4 frames of source pretraining, then rounds of
    K1 = 2e4 target updates and K2 = 2e4 source updates. ``warmup_rounds`` > 0 inserts the
    official code's warm-up between pretraining and the rounds: each warm-up round trains
    only the target's world model (with state alignment) for ``warmup_world_model_updates``,
    then runs an online phase of ``warmup_online_updates`` source updates.
    """

    source_pretrain_frames: int = 30_000
    warmup_rounds: int = 0
    warmup_world_model_updates: int = 10_000
    warmup_online_updates: int = 1_000
    rounds: int = 6
    offline_updates: int = 20_000  # K1 per round
    online_updates: int = 20_000  # K2 per round

    def relabelled_updates(self) -> int:
        """Source updates with relabelled target sequences over the whole run (eta's decay length)."""
        return self.warmup_rounds * self.warmup_online_updates + self.rounds * self.online_updates


@dataclass
class CoWorldProgress(Progress):
    """``frames`` are the sources' env frames; ``updates`` = ``target_updates`` + ``source_updates``."""

    phase: str = "pretrain"
    warmup_round: int = 0
    round: int = 0
    phase_updates: int = 0  # iterations done in the current phase
    iterations: int = 0  # of every phase: a pretraining step (collect, maybe update) or an update
    target_updates: int = 0
    source_updates: int = 0
    active_source: int = 0  # the source chosen by Eq. 12 (recorded with every evaluation)


class CoWorld:
    """Algorithm 1 of CoWorld::

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

    The target agent never acts in the target env except to be evaluated. Reads a
    :class:`~coworld_trl.training.config.CoWorldConfig`; ``eval.every_updates`` counts target
    updates.
    """

    def __init__(self):
        self.progress = CoWorldProgress()
        self._collectors: dict[int, tuple] = {}

    # ----------------------------------------------------------------- setup
    def open_inputs(self, config) -> None:
        from coworld_trl.training.factory import open_target_dataset

        self.dataset = open_target_dataset(config)

    def build(self, experiment: "Experiment"):
        from coworld_trl.agents import make_coworld_agent
        from coworld_trl.envs import env_info
        from coworld_trl.training.config import action_repeat
        from coworld_trl.training.factory import dataset_sampler, make_replay

        config = self.config = experiment.config
        self.device = experiment.device
        dataset = self.dataset
        # One action space for every domain: the widest, the others padded (ignored dims).
        dims = {name: env_info(name).action_dim for name in [config.target.name, *config.sources]}
        action_dim = max(dims.values())
        if dataset.metadata.action_dim not in (dims[config.target.name], action_dim):
            raise DatasetError(f"{dataset.path} has {dataset.metadata.action_dim}-d actions, but "
                               f"{config.target.name} takes {dims[config.target.name]}-d.")
        self.frames_per_step = action_repeat(config.target)
        size = config.target.image_size
        self.agent = make_coworld_agent(config.model, config.agent, config.coupling, action_dim=action_dim,
                                        num_sources=len(config.sources), obs_shape=(3, size, size),
                                        device=self.device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy,
                                        eta_steps_default=max(config.schedule.relabelled_updates(), 1))
        if config.train.compile:
            for agent in (self.agent.target, *self.agent.sources):
                _compile(agent)
        self.sample_target = dataset_sampler(dataset, config.data, action_dim=action_dim, device=self.device)
        self.replays = [make_replay(experiment.run_dir.path / f"replay_source{index}", config.data)
                        for index in range(len(config.sources))]
        return self.agent

    def evaluated(self):
        return self.agent.target, self.config.target.name

    def eval_count(self) -> int:
        return self.progress.target_updates

    def log_step(self) -> int:
        return self.progress.updates

    def bar(self) -> tuple[int, int, str]:
        s, p = self.config.schedule, self.progress
        pretrain = len(self.config.sources) * self._pretrain_iterations()
        total = (pretrain + s.warmup_rounds * (s.warmup_world_model_updates + s.warmup_online_updates)
                 + s.rounds * (s.offline_updates + s.online_updates))
        return total, p.iterations, "iteration"

    def _pretrain_iterations(self) -> int:
        return self.config.schedule.source_pretrain_frames // (self.frames_per_step * self.config.train.train_every)

    # ------------------------------------------------------------ Algorithm 1
    def run(self, experiment: "Experiment") -> None:
        s, p = self.config.schedule, self.progress
        if p.phase == "pretrain":
            self.pretrain_sources(experiment)
            self._next_phase(experiment, "warmup" if s.warmup_rounds else "offline")
        while p.warmup_round < s.warmup_rounds:  # the official code's warm-up (none in the paper)
            if p.phase == "warmup":
                self.offline_phase(experiment, s.warmup_world_model_updates, world_model_only=True)
                self._next_phase(experiment, "warmup_online")
            if p.phase == "warmup_online":
                self.online_phase(experiment, s.warmup_online_updates)
                p.warmup_round += 1
                self._next_phase(experiment, "warmup" if p.warmup_round < s.warmup_rounds else "offline")
        while p.round < s.rounds:
            if p.phase == "offline":
                self.offline_phase(experiment, s.offline_updates)
                self._next_phase(experiment, "online")
            if p.phase == "online":
                self.online_phase(experiment, s.online_updates)
                p.round += 1
                self._next_phase(experiment, "offline")
        p.phase = "done"

    def pretrain_sources(self, experiment: "Experiment") -> None:
        """Each source in turn: plain online DreamerV2 for ``source_pretrain_frames``."""
        p = self.progress
        experiment.set_phase("pretrain")
        per_source = self._pretrain_iterations()
        for index in range(len(self.agent.sources)):
            while p.phase_updates < (index + 1) * per_source:
                self._collect(experiment, index)
                if len(self.replays[index]) * self.frames_per_step >= self.config.train.prefill_frames:
                    self._source_update(experiment, index, relabel=False)
                p.phase_updates += 1
                p.iterations += 1
                experiment.tick()

    def offline_phase(self, experiment: "Experiment", updates: int, *, world_model_only: bool = False) -> None:
        """Target updates on dataset sequences; with several sources, first pick the closest (Eq. 12)."""
        p = self.progress
        experiment.set_phase(f"{p.phase} {p.round + 1}")
        if p.phase_updates == 0 and len(self.agent.sources) > 1:
            index, kls = self.agent.choose_source(self.sample_target())
            p.active_source = index
            experiment.log({"train/chosen_source": float(index),
                            **{f"train/source{i}_embedding_kl": kl.item() for i, kl in enumerate(kls)}})
        update = self.agent.target_world_model_update if world_model_only else self.agent.target_update
        while p.phase_updates < updates:
            metrics = update(self.sample_target())
            p.target_updates += 1
            p.phase_updates += 1
            p.iterations += 1
            experiment.record("target", metrics)
            experiment.tick()

    def online_phase(self, experiment: "Experiment", updates: int) -> None:
        """Source updates of the active source, each after ``train_every`` of its env steps, on
        its own and relabelled target sequences."""
        p = self.progress
        experiment.set_phase(f"{p.phase} {p.round + 1}")
        while p.phase_updates < updates:
            self._collect(experiment, self.agent.active_source)
            self._source_update(experiment, self.agent.active_source, relabel=True)
            p.phase_updates += 1
            p.iterations += 1
            experiment.tick()

    # ----------------------------------------------------------------- pieces
    def _collect(self, experiment: "Experiment", index: int) -> None:
        """``train_every`` steps of source ``index`` into its replay (random until prefilled)."""
        from coworld_trl.training.factory import collector_seed, make_collector, make_run_env

        if index not in self._collectors:
            config = self.config
            stored = len(self.replays[index]) * self.frames_per_step
            random_steps = max(config.train.prefill_frames - stored, 0) // self.frames_per_step
            env = make_run_env(config.target, collector_seed(config.train.seed + 1 + index * 1_000),
                               name=config.sources[index], action_dim=self.agent.target.world_model.action_dim)
            collector = make_collector(env, self.agent.sources[index], random_steps=random_steps,
                                       steps_per_batch=config.train.train_every, device=self.device)
            self._collectors[index] = (collector, iter(collector))
        batch = next(self._collectors[index][1])
        self.replays[index].extend(batch)
        experiment.collected(batch, frames=batch.numel() * self.frames_per_step, name=f"source{index}")

    def _source_update(self, experiment: "Experiment", index: int, *, relabel: bool) -> None:
        source_batch = self.replays[index].sample(self.config.data.batch_size).to(self.device)
        target_batch = self.sample_target() if relabel else None
        metrics = self.agent.source_update(source_batch, target_batch, index)
        self.progress.source_updates += 1
        experiment.record(f"source{index}", metrics)

    def _next_phase(self, experiment: "Experiment", phase: str) -> None:
        self.progress.phase, self.progress.phase_updates = phase, 0
        experiment.save()

    def state_dict(self) -> dict:
        return {"replays": [replay.state_dict() for replay in self.replays]}

    def load_state_dict(self, state: dict) -> None:
        for replay, replay_state in zip(self.replays, state["replays"]):
            replay.load_state_dict(replay_state)

    def discard_files(self) -> None:
        for replay in self.replays:
            replay.discard_files()

    def close(self) -> None:
        for collector, _ in self._collectors.values():
            _shutdown(collector)
        self._collectors.clear()
