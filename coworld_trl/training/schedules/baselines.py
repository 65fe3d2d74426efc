"""The paper's DreamerV2 baselines (Tables 2-4, Appendix D) as schedules.

* :class:`OfflineDreamer`: Offline DV2 (Lu et al. 2023, V-D4RL): DreamerV2 on the offline
  dataset only, its imagined rewards penalised by the disagreement of an ensemble of prior
  heads; without the ensemble and penalty it is the plain offline DreamerV2.
* :class:`Finetune`: DV2 Finetune: online DreamerV2 pretraining in the source env, then every
  network finetuned on the offline target dataset; with ``ewc.lmbda`` > 0, DV2 Finetune + EWC
  (Kirkpatrick et al. 2017): the Fisher of the source agent is estimated on source replay
  batches at the end of pretraining and anchors the finetuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coworld_trl.training.schedules.online import (OnlineSource, Progress, Schedule, compile_networks,
                                                   load_source_weights, open_source_run)

if TYPE_CHECKING:
    from coworld_trl.training.config import DreamerConfig
    from coworld_trl.training.experiment import Experiment

UNCERTAINTY_KINDS = ("meandis", "log_prob_ens", "mixstd_mean")
EWC_PARTS = ("world_model", "actor", "value")


def _open_dataset(schedule, config) -> None:
    from coworld_trl.training.factory import open_target_dataset

    schedule.dataset = open_target_dataset(config)


# ================================================================================ Offline DV2
@dataclass
class UncertaintyConfig:
    """Offline DV2's reward penalty ``r_hat - lmbda * u`` on imagined rewards, ``u`` the
    disagreement of ``model.ensemble`` prior heads.

    ``kind``: ``meandis`` (the V-D4RL README's: mean distance of each head's prior mean to the
    heads' average), ``log_prob_ens`` or ``mixstd_mean`` (the reference's other variants).
    ``lmbda``: 10 in the V-D4RL README's command (its config default is 5); 0 turns it off.
    """

    kind: str = "meandis"
    lmbda: float = 10.0


@dataclass
class OfflineScheduleConfig:
    """``updates`` actor-critic updates on dataset sequences. ``world_model_updates`` > 0 is the
    V-D4RL reference's two-stage schedule: that many world-model-only updates first, then the
    actor and critic learn on the frozen world model; 0 trains all three at every update
    (DreamerV2's train step)."""

    updates: int = 300_000
    world_model_updates: int = 0


@dataclass
class OfflineProgress(Progress):
    phase: str = "world_model"  # world_model (two-stage only) -> behaviour, or joint; then done
    world_model_updates: int = 0
    behaviour_updates: int = 0


class OfflineDreamer(Schedule):
    """Offline DV2: DreamerV2 on the offline dataset only, never acting in an env except to be
    evaluated. Reads an :class:`~coworld_trl.training.config.OfflineDV2Config`;
    ``eval.every_updates`` counts actor-critic updates."""

    def __init__(self):
        self.progress = OfflineProgress()

    def open_inputs(self, config) -> None:
        _open_dataset(self, config)

    def make_agent(self, config, device):
        from coworld_trl.agents import make_dreamer_agent
        from coworld_trl.envs import env_info
        from coworld_trl.objectives import RewardUncertaintyPenalty

        self.config, size = config, config.target.image_size
        penalty = None
        if config.uncertainty.lmbda > 0:
            penalty = RewardUncertaintyPenalty(kind=config.uncertainty.kind, lmbda=config.uncertainty.lmbda)
        self.agent = make_dreamer_agent(config.model, config.agent, action_dim=env_info(config.target.name).action_dim,
                                        obs_shape=(3, size, size), device=device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy, reward_penalty=penalty)
        return self.agent

    def build(self, experiment: "Experiment"):
        from coworld_trl.training.factory import dataset_sampler

        config = experiment.config
        self.make_agent(config, experiment.device)
        if config.train.compile:
            compile_networks(self.agent, config.train)
        self.sample = dataset_sampler(self.dataset, config.data, env_name=config.target.name,
                                      action_dim=self.agent.world_model.action_dim, device=experiment.device)
        if config.schedule.world_model_updates == 0 and self.progress.phase == "world_model":
            self.progress.phase = "joint"
        return self.agent

    def eval_count(self) -> int:
        return self.progress.behaviour_updates

    def bar(self) -> tuple[int, int, str]:
        s = self.config.schedule
        return s.world_model_updates + s.updates, self.progress.updates, "update"

    def run(self, experiment: "Experiment") -> None:
        s, p, agent = self.config.schedule, self.progress, self.agent
        if p.phase == "world_model":
            experiment.set_phase("world model")
            while p.world_model_updates < s.world_model_updates:
                experiment.record("", agent.update_world_model(self.sample()))
                p.world_model_updates += 1
                experiment.tick()
            p.phase = "behaviour"
            experiment.save()
        experiment.set_phase(p.phase)
        while p.behaviour_updates < s.updates:
            batch = self.sample()
            if p.phase == "behaviour":  # on the frozen world model
                agent.observe(batch)
                metrics = agent.update_behaviour(batch)
            else:
                metrics = agent.update(batch)
                p.world_model_updates += 1
            p.behaviour_updates += 1
            experiment.record("", metrics)
            experiment.tick()
        p.phase = "done"


# ========================================================================= DV2 Finetune (+ EWC)
def _action_dim(config) -> int:
    """Finetune's agent acts in the wider of the source's and the target's action spaces."""
    from coworld_trl.envs import env_info

    return max(env_info(name).action_dim for name in (config.target.name, config.source))


@dataclass
class EWCConfig:
    """DV2 Finetune + EWC: ``lmbda / 2 * sum_i F_i (theta_i - theta_src_i)^2`` added to the
    finetuning losses of ``parts``, ``F`` the diagonal Fisher of the pretrained source agent's
    losses over ``fisher_batches`` source replay batches. ``lmbda = 0`` is plain DV2 Finetune
    (the paper gives no value)."""

    lmbda: float = 0.0
    fisher_batches: int = 50
    parts: list = field(default_factory=lambda: ["world_model", "actor", "value"])


@dataclass
class FinetuneScheduleConfig:
    """Appendix D: pretrain 600k / finetune 600k steps on DMC, 160k / 300k on Meta-World and
    Meta-World -> RoboDesk; here pretraining counts source env frames and finetuning counts
    updates on the offline target dataset."""

    pretrain_frames: int = 600_000
    finetune_updates: int = 600_000


@dataclass
class FinetuneProgress(Progress):
    """``frames`` are the source env's; ``updates`` = ``source_updates`` + ``target_updates``."""

    phase: str = "pretrain"  # pretrain -> consolidate (EWC only) -> finetune -> done
    source_updates: int = 0
    target_updates: int = 0
    iterations: int = 0  # pretraining steps (collect, maybe update) and finetuning updates


class Finetune(Schedule):
    """DV2 Finetune (+ EWC): one DreamerV2 agent, pretrained online in ``source`` (or loaded from
    ``source_checkpoint``, a finished ``recipes/dreamer_dmc.py`` run on it), then finetuned on the
    target dataset. Different action dims: the wider one for both, the other padded (as
    CoWorld). Reads a :class:`~coworld_trl.training.config.FinetuneConfig`; ``eval.every_updates``
    counts finetuning updates."""

    def __init__(self):
        self.progress = FinetuneProgress()
        self.source: OnlineSource | None = None

    def open_inputs(self, config) -> None:
        """The target dataset, and the source run when one is given (refused before anything is written)."""
        _open_dataset(self, config)
        self.source_run = self._open_source_run(config) if config.source_checkpoint else None

    def make_agent(self, config, device):
        from coworld_trl.agents import make_dreamer_agent

        self.config, size = config, config.target.image_size
        self.agent = make_dreamer_agent(config.model, config.agent, action_dim=_action_dim(config),
                                        obs_shape=(3, size, size), device=device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy,
                                        ewc_lmbda=config.ewc.lmbda, ewc_parts=tuple(config.ewc.parts))
        return self.agent

    def build(self, experiment: "Experiment"):
        from coworld_trl.training.config import action_repeat
        from coworld_trl.training.factory import dataset_sampler

        config = experiment.config
        action_dim = self.make_agent(config, experiment.device).world_model.action_dim
        if config.train.compile:
            compile_networks(self.agent, config.train)
        self.frames_per_step = action_repeat(config.target)
        if self.source_run is not None:
            self._load_source_weights(experiment.device)
        else:
            self.source = OnlineSource(experiment, self.agent, env_name=config.source, env=config.target,
                                       label="source", seed=config.train.seed + 1, action_dim=action_dim)
            self.sample_source = self.source.sample
            self.online = [self.source]
        self.sample_target = dataset_sampler(self.dataset, config.data, env_name=config.target.name,
                                             action_dim=action_dim, device=experiment.device)
        return self.agent

    def eval_count(self) -> int:
        return self.progress.target_updates

    @staticmethod
    def _open_source_run(config) -> tuple[Path, "DreamerConfig"]:
        """Check that ``source_checkpoint`` is a finished online DreamerV2 run this agent can start from."""
        run, source_run = open_source_run(config.source_checkpoint, option="source_checkpoint", source=config.source,
                                          source_option="source", model=config.model, action_dim=_action_dim(config))
        if config.ewc.lmbda > 0 and not (run / "replay").is_dir():
            raise ValueError(f"ewc.lmbda={config.ewc.lmbda} needs the source agent's Fisher on its replay, and {run}/"
                             "replay is missing; point source_checkpoint at a whole run directory or set ewc.lmbda=0")
        return run, source_run

    def _load_source_weights(self, device) -> None:
        """The source run's weights replace pretraining; its replay gives the EWC Fisher's batches."""
        from coworld_trl.training.replay import OnlineReplay

        run, source_run = self.source_run
        state = load_source_weights(self.agent, run, option="source_checkpoint", device=device,
                                    missing_ok=("regularizers.",))
        if self.config.ewc.lmbda > 0:
            batch_size = self.config.data.batch_size
            replay = OnlineReplay(run / "replay", capacity=source_run.data.buffer_capacity,
                                  seq_len=self.config.data.seq_len)
            replay.load_state_dict(state["schedule"]["replays"][0])
            self.sample_source = lambda: replay.sample(batch_size).to(device)

    def bar(self) -> tuple[int, int, str]:
        s = self.config.schedule
        pretrain = 0 if self.source is None else s.pretrain_frames // (self.frames_per_step * self.config.train.train_every)
        return pretrain + s.finetune_updates, self.progress.iterations, "iteration"

    def run(self, experiment: "Experiment") -> None:
        s, p, agent = self.config.schedule, self.progress, self.agent
        if p.phase == "pretrain":
            experiment.set_phase("pretrain")
            while self.source is not None and p.frames < s.pretrain_frames:
                self.source.collect(experiment)
                if self.source.prefilled:
                    experiment.record("source", agent.update(self.source.sample()))
                    p.source_updates += 1
                p.iterations += 1
                experiment.tick()
            self._next_phase(experiment, "consolidate" if self.config.ewc.lmbda > 0 else "finetune")
        if p.phase == "consolidate":
            experiment.set_phase("EWC Fisher")
            agent.consolidate_ewc([self.sample_source() for _ in range(self.config.ewc.fisher_batches)])
            self._next_phase(experiment, "finetune")
        experiment.set_phase("finetune")
        while p.target_updates < s.finetune_updates:
            experiment.record("target", agent.update(self.sample_target()))
            p.target_updates += 1
            p.iterations += 1
            experiment.tick()
        p.phase = "done"

    def _next_phase(self, experiment: "Experiment", phase: str) -> None:
        self.progress.phase = phase
        experiment.save()
