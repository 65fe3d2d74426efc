"""CoWorld's schedule: Algorithm 1 of the paper."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coworld_trl.training.schedules.online import (OnlineSource, Progress, Schedule, compile_networks,
                                                   load_source_weights, open_source_run)

if TYPE_CHECKING:
    from coworld_trl.training.experiment import Experiment


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


def _action_dim(config) -> int:
    """One action space for every domain: the widest, the others padded (ignored dims)."""
    from coworld_trl.envs import env_info

    return max(env_info(name).action_dim for name in [config.target.name, *config.sources])


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


class CoWorld(Schedule):
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

    # ----------------------------------------------------------------- setup
    def open_inputs(self, config) -> None:
        """The target dataset, and the source runs when given (refused before anything is written)."""
        from coworld_trl.errors import ConfigError
        from coworld_trl.training.factory import open_target_dataset

        self.dataset = open_target_dataset(config)
        runs = config.source_checkpoints
        if runs and len(runs) != len(config.sources):
            raise ConfigError(f"source_checkpoints has {len(runs)} runs for {len(config.sources)} sources "
                              f"{list(config.sources)}; give one run per source, in the same order, or none")
        self.source_runs = [open_source_run(run, option=f"source_checkpoints[{i}]", source=name,
                                            source_option=f"sources[{i}]", model=config.model,
                                            action_dim=_action_dim(config))
                            for i, (run, name) in enumerate(zip(runs, config.sources))]

    def make_agent(self, config, device):
        from coworld_trl.agents import make_coworld_agent

        self.config, size = config, config.target.image_size
        self.agent = make_coworld_agent(config.model, config.agent, config.coupling, action_dim=_action_dim(config),
                                        num_sources=len(config.sources), obs_shape=(3, size, size),
                                        device=device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy,
                                        eta_steps_default=max(config.schedule.relabelled_updates(), 1))
        return self.agent

    def build(self, experiment: "Experiment"):
        from coworld_trl.training.config import action_repeat
        from coworld_trl.training.factory import dataset_sampler

        config = experiment.config
        self.device = experiment.device
        action_dim = _action_dim(config)
        self.frames_per_step = action_repeat(config.target)
        self.make_agent(config, self.device)
        # given source runs replace pretraining: their weights now (a resumed run's checkpoint then
        # overrides them), their replays in pretrain_sources
        self.source_replays = [
            load_source_weights(source, run, option=f"source_checkpoints[{i}]", device=self.device,
                                missing_ok=("world_model_loss.eta_step",))["schedule"]["replays"][0]
            for i, (source, (run, _)) in enumerate(zip(self.agent.sources, self.source_runs))]
        if config.train.compile:
            for agent in (self.agent.target, *self.agent.sources):
                compile_networks(agent, config.train)
        self.sample_target = dataset_sampler(self.dataset, config.data, env_name=config.target.name,
                                             action_dim=action_dim, device=self.device)
        self.online = self.source_envs = [
            OnlineSource(experiment, source, env_name=name, env=config.target, label=f"source{index}",
                         seed=config.train.seed + 1 + index * 1_000, action_dim=action_dim)
            for index, (source, name) in enumerate(zip(self.agent.sources, config.sources))]
        return self.agent

    def evaluated(self):
        return self.agent.target, self.config.target.name

    def eval_count(self) -> int:
        return self.progress.target_updates

    def bar(self) -> tuple[int, int, str]:
        s, p = self.config.schedule, self.progress
        pretrain = len(self.config.sources) * self._pretrain_iterations()
        total = (pretrain + s.warmup_rounds * (s.warmup_world_model_updates + s.warmup_online_updates)
                 + s.rounds * (s.offline_updates + s.online_updates))
        return total, p.iterations, "iteration"

    def _pretrain_iterations(self) -> int:
        if self.source_runs:
            return 0
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
        """Each source in turn: plain online DreamerV2 for ``source_pretrain_frames``; with
        ``source_checkpoints``, each source run's replay copied into this run's instead."""
        from coworld_trl.training.replay import OnlineReplay

        p = self.progress
        experiment.set_phase("pretrain")
        for (run, source_run), state, online in zip(self.source_runs, self.source_replays, self.source_envs):
            if not len(online.replay):  # a copy cut short by a kill is redone
                replay = OnlineReplay(run / "replay", capacity=source_run.data.buffer_capacity,
                                      seq_len=self.config.data.seq_len)
                replay.load_state_dict(state)
                online.replay.copy_from(replay)
        per_source = self._pretrain_iterations()
        for index in range(len(self.agent.sources)):
            while p.phase_updates < (index + 1) * per_source:
                self.source_envs[index].collect(experiment)
                if self.source_envs[index].prefilled:
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
            self.source_envs[self.agent.active_source].collect(experiment)
            self._source_update(experiment, self.agent.active_source, relabel=True)
            p.phase_updates += 1
            p.iterations += 1
            experiment.tick()

    # ----------------------------------------------------------------- pieces
    def _source_update(self, experiment: "Experiment", index: int, *, relabel: bool) -> None:
        source_batch = self.source_envs[index].sample()
        target_batch = self.sample_target() if relabel else None
        metrics = self.agent.source_update(source_batch, target_batch, index)
        self.progress.source_updates += 1
        experiment.record(f"source{index}", metrics)

    def _next_phase(self, experiment: "Experiment", phase: str) -> None:
        self.progress.phase, self.progress.phase_updates = phase, 0
        experiment.save()
