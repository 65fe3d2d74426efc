"""CoWorld: a target DreamerV2 agent (offline) and source DreamerV2 agents (online),
coupled by state alignment (Eq. 3), reward relabelling (Eq. 4-5) and the min-max value
constraint (Eq. 6); with several sources, the closest one is chosen (Eq. 12).

The agent holds networks, losses and optimisers only; the experiment layer runs
Algorithm 1 around it with envs, buffers and loggers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from coworld_trl.agents.dreamer import (
    AgentConfig,
    DreamerV2Agent,
    ModelConfig,
    build_networks,
    world_model_loss_kwargs,
)
from coworld_trl.modules import check_same_latent_size, require
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
        eta_start, eta_end: Eq. 5's ``eta`` at the first and the last relabelled source
            update (paper 1 -> 0.1).
        eta_steps: over how many relabelled source updates ``eta`` decays; ``None``
            (default): derived from the run's schedule, i.e. its total number of online
            (relabelled) source updates, which the experiment passes to
            :func:`make_coworld_agent` as ``eta_steps_default``.
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

    Where each coupling lives:

    * Eq. 3: :class:`StateAlignmentLoss` (``alignment_loss``, no tensors of its own),
      an extra loss of the target's world-model update; the active source's encoder
      writes ``source_embedding`` into the target batch (without gradient) just before.
      It reads the observation and embedding under the target world model's keys.
    * Eq. 4-5: each source's world-model loss is a :class:`MixedRewardLoss` (its
      ``eta_step`` buffer is part of the source's ``state_dict``).
    * Eq. 6: the target's value loss carries a :class:`MinMaxValuePenalty`; at every
      target behaviour update the active source's critic writes ``source_value`` into the
      imagined TensorDict (a hook of :meth:`DreamerV2Agent.update_behaviour`).

    So no module is registered twice: the ``state_dict`` holds one entry per tensor, and
    the target's losses never hold a source tensor. :func:`make_coworld_agent` builds
    the agents with these losses.

    Args:
        target: the offline agent; its value loss must carry a :class:`MinMaxValuePenalty`
            unless ``value_constraint="none"``.
        sources: one online agent per source domain; with ``relabel`` their world-model
            loss must be a :class:`MixedRewardLoss`.
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
        penalty = target.value_loss.penalty
        if coupling.value_constraint != "none" and not isinstance(penalty, MinMaxValuePenalty):
            raise ValueError(f"value_constraint={coupling.value_constraint!r} but the target's value loss has no "
                             f"MinMaxValuePenalty; build the target with value_penalty=MinMaxValuePenalty(...) "
                             f"(make_coworld_agent does).")
        if coupling.relabel and not all(isinstance(s.world_model_loss, MixedRewardLoss) for s in sources):
            raise ValueError("relabel=True but a source's world-model loss is not a MixedRewardLoss; build the "
                             "sources with world_model_loss=MixedRewardLoss(...) (make_coworld_agent does).")
        self.target, self.sources, self.coupling = target, nn.ModuleList(sources), coupling
        self.alignment_loss = None
        if coupling.alignment:
            self.alignment_loss = StateAlignmentLoss(beta=coupling.beta, reduction=coupling.alignment_reduction)
        self.active_source = 0
        self.source_updates = [0] * len(sources)

    @property
    def penalty(self) -> MinMaxValuePenalty | None:
        return self.target.value_loss.penalty if self.coupling.value_constraint != "none" else None

    def choose_source(self, target_batch: TensorDictBase) -> tuple[int, torch.Tensor]:
        """Eq. 12: make the source whose embedding is closest to the target's the active one."""
        key = self.target.world_model.tensor_keys.obs
        pixels = require(target_batch, key, "CoWorldAgent.choose_source", "the target world model's obs key")
        index, kls = select_source(self.target.world_model, [s.world_model for s in self.sources], pixels)
        self.set_active_source(index)
        return index, kls

    def set_active_source(self, index: int) -> None:
        """The source whose encoder (Eq. 3) and critic (Eq. 6) the target is coupled to."""
        if not 0 <= index < len(self.sources):
            raise IndexError(f"source {index} does not exist; there are {len(self.sources)}.")
        self.active_source = index

    def _aligned(self, batch: TensorDictBase) -> TensorDict:
        """Eq. 3 on a target batch the target world model has just filtered."""
        loss = self.alignment_loss
        loss.tensor_keys.pixels = self.target.world_model.tensor_keys.obs
        loss.tensor_keys.embedding = self.target.world_model.tensor_keys.embedding
        loss.write_source_embedding(batch, self.sources[self.active_source].world_model)
        return loss(batch)

    def _write_source_value(self, imagined: TensorDictBase) -> None:
        """Eq. 6's ``v'``: the active source's critic on the target's imagined states."""
        self.penalty.write_source_value(imagined, self.sources[self.active_source].critic)

    def target_update(self, batch: TensorDictBase) -> TensorDict:
        """Offline phase step: world model (+ Eq. 3), then actor and constrained critic (Eq. 6, 7)."""
        hooks = [self._write_source_value] if self.penalty is not None else []
        return self.target_world_model_update(batch).update(self.target.update_behaviour(batch, hooks))

    def target_world_model_update(self, batch: TensorDictBase) -> TensorDict:
        """The target's world model only (Eq. 2 + Eq. 3): the official schedule's warm-up step."""
        extra = [self._aligned] if self.alignment_loss is not None else []
        return self.target.update_world_model(batch, extra)

    def source_update(self, source_batch: TensorDictBase, target_batch: TensorDictBase | None = None,
                      index: int | None = None) -> TensorDict:
        """Online phase step of one source: world model with Eq. 5 on relabelled target
        sequences (plain Eq. 2 without relabelling or without a target batch), then its
        actor and critic. A relabelled update moves ``eta`` on by one step."""
        index = self.active_source if index is None else index
        source = self.sources[index]
        loss = source.world_model_loss
        relabelled = self.coupling.relabel and target_batch is not None
        if relabelled:
            metrics = source.update_world_model(source_batch, loss=functools.partial(_relabelled, loss, target_batch))
            loss.advance()
        else:
            metrics = source.update_world_model(
                source_batch, loss=loss.source_only if isinstance(loss, MixedRewardLoss) else None)
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


def _relabelled(loss: MixedRewardLoss, target_batch: TensorDictBase, source_batch: TensorDictBase) -> TensorDict:
    """Eq. 5 on a source batch (which receives the latents) with ``target_batch`` relabelled."""
    keys = loss.tensor_keys
    return loss(TensorDict({keys.source: source_batch, keys.target: target_batch}))


def make_coworld_agent(model: ModelConfig, agent: AgentConfig, coupling: CouplingConfig, *, action_dim: int,
                       num_sources: int = 1, obs_shape=(3, 64, 64), device: torch.device | str = "cpu",
                       autocast: bool = False, nan_policy: str = "raise", eta_steps_default: int | None = None,
                       compile: bool = False, cuda_graphs: bool = False) -> CoWorldAgent:
    """Sources (with Eq. 5 as their world-model loss) and the target (with Eq. 6's penalty).

    Source and target share ``model`` (identical latent sizes are required) and
    ``action_dim`` (pad the smaller action space: ``make_env(..., pad_action_dim=...)``).

    Keyword Args:
        nan_policy, compile, cuda_graphs: :class:`DreamerV2Agent`'s, for every agent.
        eta_steps_default: the run's total number of online (relabelled) source updates,
            used as ``eta``'s decay length when ``coupling.eta_steps`` is ``None``: ``eta``
            is ``coupling.eta_start`` at the first relabelled update and ``eta_end`` at the
            last. One of the two is required when ``coupling.relabel`` is on.
    """
    eta = None
    if coupling.relabel:
        steps = coupling.eta_steps if coupling.eta_steps is not None else eta_steps_default
        if steps is None:
            raise ValueError("coupling.eta_steps is None (derive it from the run) but make_coworld_agent got no "
                             "eta_steps_default; set coupling.eta_steps or pass the run's relabelled source updates.")
        eta = EtaSchedule.over_updates(steps, start=coupling.eta_start, end=coupling.eta_end)
    obs_shape = tuple(obs_shape)

    def networks():
        return (n.to(device) for n in build_networks(model, action_dim=action_dim, obs_shape=obs_shape))

    sources = []
    for _ in range(num_sources):
        world_model, actor, critic = networks()
        wm_loss = (MixedRewardLoss(world_model, k=coupling.k, eta=eta, **world_model_loss_kwargs(agent))
                   if coupling.relabel else None)
        sources.append(DreamerV2Agent(world_model, actor, critic, agent, world_model_loss=wm_loss,
                                      autocast=autocast, nan_policy=nan_policy, compile=compile,
                                      cuda_graphs=cuda_graphs))
    penalty = None
    if coupling.value_constraint != "none":
        penalty = MinMaxValuePenalty(alpha=coupling.alpha, mode=coupling.value_constraint)
    world_model, actor, critic = networks()
    target = DreamerV2Agent(world_model, actor, critic, agent, value_penalty=penalty, autocast=autocast,
                            nan_policy=nan_policy, compile=compile, cuda_graphs=cuda_graphs)
    return CoWorldAgent(target, sources, coupling)
