"""CoWorld: a target DreamerV2 agent (offline) and source DreamerV2 agents (online),
coupled by state alignment (Eq. 3), reward relabelling (Eq. 4-5) and the min-max value
constraint (Eq. 6); with several sources, the closest one is chosen (Eq. 12).

The agent holds networks, losses and optimisers only; :class:`~coworld_trl.training.
coworld_loop.CoWorldTrainer` runs Algorithm 1 around it with envs, buffers and loggers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from coworld_trl.agents.dreamer import AgentConfig, DreamerV2Agent, ModelConfig, build_networks
from coworld_trl.modules.coworld import RewardRelabeler, check_same_latent_size
from coworld_trl.objectives import EtaSchedule, MinMaxValuePenalty, MixedRewardLoss, StateAlignmentLoss, select_source


@dataclass
class CouplingConfig:
    """The three couplings and their ablation switches (defaults: Table 7, DMC).

    Attributes:
        alignment: Eq. 3 on (``False``: "w/o state alignment").
        beta: ``beta2`` (1.5 DMC, 1.0 Meta-World/RoboDesk).
        alignment_reduction: ``"sum_time"`` (official weighting, which ``beta`` was tuned
            with) or ``"mean"``.
        relabel: Eq. 4-5 on (``False``: "w/o reward alignment": the source trains on its own rewards).
        k: target-reward weight of the relabelled reward (0.9 DMC, 0.3 Meta-World/RoboDesk).
        eta_start, eta_end, eta_steps: Eq. 5's linear schedule over relabelled source updates
            (paper 1 -> 0.1, no length given); ``eta_steps=None`` decays over the run's own
            relabelled updates, which the experiment passes as ``eta_steps_default``.
        value_constraint: ``"max"`` (Eq. 6), ``"linear"`` ("w/o Max") or ``"none"``
            ("w/o value constraint").
        alpha: weight of the constraint (1 DMC, 2 Meta-World/RoboDesk).
    """

    alignment: bool = True
    beta: float = 1.5
    alignment_reduction: str = "sum_time"
    relabel: bool = True
    k: float = 0.9
    eta_start: float = 1.0
    eta_end: float = 0.1
    eta_steps: Optional[int] = None
    value_constraint: str = "max"
    alpha: float = 1.0


class CoWorldAgent(nn.Module):
    """Target and source DreamerV2 agents with CoWorld's couplings.

    Args:
        target: the offline agent; its value loss must carry the :class:`MinMaxValuePenalty`
            (see :func:`make_coworld_agent`) unless ``value_constraint="none"``.
        sources: one online agent per source domain.
        coupling: :class:`CouplingConfig`.
    """

    def __init__(self, target: DreamerV2Agent, sources: Sequence[DreamerV2Agent], coupling: CouplingConfig):
        super().__init__()
        if not sources:
            raise ValueError("CoWorld needs at least one source agent.")
        for source in sources:
            check_same_latent_size(source.world_model, target.world_model)
        if coupling.value_constraint not in ("max", "linear", "none"):
            raise ValueError(f"value_constraint={coupling.value_constraint!r}; use 'max', 'linear' or 'none'.")
        self.target, self.sources, self.coupling = target, nn.ModuleList(sources), coupling
        eta = EtaSchedule(start=coupling.eta_start, end=coupling.eta_end, steps=coupling.eta_steps)
        self.alignment_losses = nn.ModuleList(
            StateAlignmentLoss(target.world_model, s.world_model, beta=coupling.beta,
                               reduction=coupling.alignment_reduction) for s in sources)
        self.mixed_reward_losses = nn.ModuleList(
            MixedRewardLoss(s.world_model_loss, RewardRelabeler(s.world_model, k=coupling.k), eta=eta) for s in sources)
        self.active_source = 0
        self.source_updates = [0] * len(sources)

    @property
    def penalty(self) -> MinMaxValuePenalty | None:
        return self.target.value_loss.penalty

    def choose_source(self, target_batch: TensorDictBase) -> tuple[int, torch.Tensor]:
        """Eq. 12: make the source whose embedding is closest to the target's the active one."""
        index, kls = select_source(self.target.world_model, [s.world_model for s in self.sources],
                                   target_batch.get("pixels"))
        self.set_active_source(index)
        return index, kls

    def set_active_source(self, index: int) -> None:
        self.active_source = index
        if self.penalty is not None:
            self.penalty.__dict__["source_critic"] = self.sources[index].critic

    def target_update(self, batch: TensorDictBase) -> TensorDict:
        """Offline phase step: world model (+ Eq. 3), then actor and constrained critic (Eq. 6, 7)."""
        return self.target_world_model_update(batch).update(self.target.update_behaviour(batch))

    def target_world_model_update(self, batch: TensorDictBase) -> TensorDict:
        """The target's world model only (Eq. 2 + Eq. 3): the official schedule's warm-up step."""
        extra = [self.alignment_losses[self.active_source]] if self.coupling.alignment else []
        return self.target.update_world_model(batch, extra)

    def source_update(self, source_batch: TensorDictBase, target_batch: TensorDictBase | None = None,
                      index: int | None = None) -> TensorDict:
        """Online phase step of one source: world model with Eq. 5 on relabelled target
        sequences (plain Eq. 2 without relabelling), then its actor and critic."""
        index = self.active_source if index is None else index
        source = self.sources[index]
        if self.coupling.relabel and target_batch is not None:
            with source._autocast():
                losses = self.mixed_reward_losses[index](
                    TensorDict({"source": source_batch, "target": target_batch}), step=self.source_updates[index])
            metrics = source.step_world_model(losses)
        else:
            metrics = source.update_world_model(source_batch)
        self.source_updates[index] += 1
        return metrics.update(source.update_behaviour(source_batch))

    def checkpoint_state(self) -> dict:
        return {
            "target": self.target.checkpoint_state(),
            "sources": [s.checkpoint_state() for s in self.sources],
            "active_source": self.active_source,
            "source_updates": list(self.source_updates),
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.target.load_checkpoint_state(state["target"])
        for source, source_state in zip(self.sources, state["sources"]):
            source.load_checkpoint_state(source_state)
        self.source_updates = list(state["source_updates"])
        self.set_active_source(state["active_source"])


def make_coworld_agent(model: ModelConfig, agent: AgentConfig, coupling: CouplingConfig, *, action_dim: int,
                       num_sources: int = 1, obs_shape=(3, 64, 64), device: torch.device | str = "cpu",
                       autocast: bool = False, nan_policy: str = "raise",
                       eta_steps_default: int | None = None) -> CoWorldAgent:
    """Sources first, then the target with the min-max penalty on the first source's critic.

    Source and target share ``model`` (identical latent sizes are required) and
    ``action_dim`` (pad the smaller action space: ``make_env(..., pad_action_dim=...)``).
    ``eta_steps_default``: eta's decay length when ``coupling.eta_steps`` is None (a run's
    relabelled source updates, so eta reaches ``eta_end`` at its last one).
    """
    if coupling.eta_steps is None:
        if eta_steps_default is None:
            raise ValueError("coupling.eta_steps is None and no eta_steps_default was given; set coupling.eta_steps "
                             "to the number of relabelled source updates eta decays over.")

        coupling = replace(coupling, eta_steps=eta_steps_default)
    sources = []
    for _ in range(num_sources):
        world_model, actor, critic = (n.to(device) for n in build_networks(model, action_dim=action_dim,
                                                                           obs_shape=tuple(obs_shape)))
        sources.append(DreamerV2Agent(world_model, actor, critic, agent, autocast=autocast, nan_policy=nan_policy))
    penalty = None
    if coupling.value_constraint != "none":
        penalty = MinMaxValuePenalty(sources[0].critic, alpha=coupling.alpha, mode=coupling.value_constraint)
    world_model, actor, critic = (n.to(device) for n in build_networks(model, action_dim=action_dim,
                                                                       obs_shape=tuple(obs_shape)))
    target = DreamerV2Agent(world_model, actor, critic, agent, value_penalty=penalty, autocast=autocast,
                            nan_policy=nan_policy)
    return CoWorldAgent(target, sources, coupling)
