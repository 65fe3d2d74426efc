"""DreamerV2 as a composition of the library's modules and losses.

The agent owns its losses (which hold the networks) and one optimiser per loss; it never
builds envs, buffers or loggers. CoWorld composes two of these (source and target) and
adds its alignment terms around :meth:`DreamerV2Agent.update_world_model`, its source
value through :meth:`DreamerV2Agent.update_behaviour`'s hooks and the value loss's penalty,
and Eq. 5 as the source's world-model loss. The config schemas of this layer
(:class:`ModelConfig`, :class:`AgentConfig`) live here, next to what they configure.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from coworld_trl.modules import Actor, LatentPolicy, ScalarHead, WorldModel, make_world_model, require
from coworld_trl.objectives import ActorLoss, ImaginedKeys, ValueLoss, WorldModelLoss, imagine

@dataclass
class ModelConfig:
    """World model, actor and critic sizes (defaults: Table 7 of the paper)."""

    latent: str = "discrete"
    stoch: int = 32
    classes: int = 32
    deter: int = 600
    hidden: int = 600
    norm_gru: bool = True
    cnn_depth: int = 48
    mlp_units: int = 400
    reward_layers: int = 4
    discount_head: bool = False
    actor_layers: int = 4
    actor_dist: str = "trunc_normal"
    critic_layers: int = 4


@dataclass
class AgentConfig:
    """Loss scales, optimisers and behaviour learning (defaults: Table 7 / DreamerV2)."""

    model_lr: float = 2e-4
    actor_lr: float = 4e-5
    critic_lr: float = 1e-4
    adam_eps: float = 1e-5
    grad_clip: float = 100.0
    kl_scale: float = 1.0
    kl_balance: float = 0.8
    free_nats: float = 1.0
    free_nats_placement: str = "mean"
    reward_scale: float = 1.0
    discount_scale: float = 1.0
    horizon: int = 15
    gamma: float = 0.995
    lmbda: float = 0.95
    rho: float = 1.0
    entropy_scale: float = 1e-4
    slow_critic_interval: int = 100
    expl_noise: float = 0.0


NAN_POLICIES = ("raise", "skip")


class NonFiniteLossError(RuntimeError):
    """A loss term came out NaN or infinite (``nan_policy="raise"``)."""


def build_networks(model: ModelConfig, *, action_dim: int, obs_shape: tuple[int, ...]) -> tuple[WorldModel, Actor, ScalarHead]:
    """World model, actor and critic sized by ``model``."""
    world_model = make_world_model(
        action_dim=action_dim, obs_shape=obs_shape, latent=model.latent, stoch=model.stoch, classes=model.classes,
        deter=model.deter, hidden=model.hidden, norm_gru=model.norm_gru, cnn_depth=model.cnn_depth,
        mlp_units=model.mlp_units, reward_layers=model.reward_layers, discount_head=model.discount_head,
    )
    actor = Actor(world_model.feature_dim, action_dim, layers=model.actor_layers, units=model.mlp_units,
                  dist=model.actor_dist)
    critic = ScalarHead(world_model.feature_dim, layers=model.critic_layers, units=model.mlp_units)
    return world_model, actor, critic


NAN_POLICIES = ("raise", "skip")
Hook = Callable[[TensorDictBase], object]


def world_model_loss_kwargs(config: AgentConfig) -> dict:
    """The :class:`WorldModelLoss` hyperparameters of ``config``."""
    return dict(kl_scale=config.kl_scale, kl_balance=config.kl_balance, free_nats=config.free_nats,
                free_nats_placement=config.free_nats_placement, reward_scale=config.reward_scale,
                discount_scale=config.discount_scale)


class DreamerV2Agent(nn.Module):
    """A DreamerV2 agent: its three losses (which hold the networks) and one optimiser per loss.

    The modules it registers are its losses: ``world_model_loss`` (holding the world
    model), ``actor_loss`` (the actor) and ``value_loss`` (the critic and the slow
    critic), so its ``state_dict`` holds every tensor once. :attr:`world_model`,
    :attr:`actor` and :attr:`critic` are views into them.

    Args:
        world_model, actor, critic: networks (see :func:`build_networks`); ``actor`` is any
            TorchRL probabilistic actor over the latent features (``ActorLoss``'s contract).
        config: losses, learning rates and behaviour hyperparameters.

    Keyword Args:
        world_model_loss: the world model's loss (default: a :class:`WorldModelLoss` with
            ``config``'s scales); a CoWorld source passes a
            :class:`~coworld_trl.objectives.MixedRewardLoss` (Eq. 5). It must train ``world_model``.
        value_penalty: optional penalty LossModule for the value loss (Eq. 6).
        autocast: run forward passes under bf16 autocast (CUDA).
        nan_policy: what to do when the summed loss of an optimiser step is not finite:
            ``"raise"`` raises :class:`NonFiniteLossError` naming the non-finite ``loss_*``
            terms; ``"skip"`` skips that optimiser step (no weight changes) and reports
            ``skipped_<optimiser> = 1.0`` in the metrics (``0.0`` otherwise).

    Examples:
        >>> agent = make_dreamer_agent(ModelConfig(), AgentConfig(), action_dim=6)
        >>> metrics = agent.update(batch)   # loss_image, ..., loss_actor, loss_value, grad_norm_*, skipped_*
    """

    def __init__(
        self,
        world_model: WorldModel,
        actor: nn.Module,
        critic: nn.Module,
        config: AgentConfig,
        *,
        world_model_loss: WorldModelLoss | None = None,
        value_penalty: nn.Module | None = None,
        autocast: bool = False,
        nan_policy: str = "raise",
    ):
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={nan_policy!r}; use 'raise' or 'skip'.")
        if world_model_loss is None:
            world_model_loss = WorldModelLoss(world_model, **world_model_loss_kwargs(config))
        elif world_model_loss.world_model is not world_model:
            raise ValueError("world_model_loss must train the agent's world_model (build it on that model).")
        self.config = config
        self.world_model_loss = world_model_loss
        self.actor_loss = ActorLoss(actor, rho=config.rho, entropy_scale=config.entropy_scale)
        self.value_loss = ValueLoss(critic, lmbda=config.lmbda, penalty=value_penalty)
        self.target_updater = self.value_loss.make_target_updater(config.slow_critic_interval)
        adam = dict(eps=config.adam_eps, fused=True)  # fused Adam: one kernel per step, CPU and CUDA
        self.optimizers = {
            "world_model": torch.optim.Adam(world_model.parameters(), lr=config.model_lr, **adam),
            "actor": torch.optim.Adam(actor.parameters(), lr=config.actor_lr, **adam),
            "value": torch.optim.Adam(self.value_loss.value_network_params.values(True, True), lr=config.critic_lr, **adam),
        }
        self.autocast = autocast
        self.nan_policy = nan_policy

    @property
    def world_model(self) -> WorldModel:
        return self.world_model_loss.world_model

    @property
    def actor(self) -> nn.Module:
        return self.actor_loss.actor

    @property
    def critic(self) -> nn.Module:
        return self.value_loss.value_network

    def autocast_context(self):
        """bf16 autocast on the agent's device when ``autocast`` is on, else a no-op context."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(next(self.parameters()).device.type, dtype=torch.bfloat16)

    # ----------------------------------------------------------------- steps
    def _step(self, name: str, losses: TensorDict) -> TensorDict:
        """Sum the ``loss_*`` entries of ``losses``, backpropagate, clip, step optimiser ``name``.

        Writes ``grad_norm_<name>`` and ``skipped_<name>`` into ``losses``.
        """
        total = sum(value for key, value in losses.items() if key.startswith("loss_"))
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        # The one host sync of an optimiser step: whether to step must be known on the host
        # before the weights change, and a NaN that reached Adam's moments could not be undone.
        if not bool(torch.isfinite(total)):
            if self.nan_policy == "raise":
                raise NonFiniteLossError(self._non_finite_message(name, losses))
            losses[f"grad_norm_{name}"] = torch.zeros((), device=total.device)
            losses[f"skipped_{name}"] = torch.ones((), device=total.device)
            return losses
        total.backward()
        losses[f"grad_norm_{name}"] = nn.utils.clip_grad_norm_(self._trained_params(name), self.config.grad_clip)
        optimizer.step()
        losses[f"skipped_{name}"] = torch.zeros((), device=total.device)
        return losses

    def _trained_params(self, name: str):
        if name == "world_model":
            return self.world_model.parameters()
        if name == "actor":
            return self.actor.parameters()
        return self.value_loss.value_network_params.values(True, True)

    @staticmethod
    def _non_finite_message(name: str, losses: TensorDict) -> str:
        bad = [f"{key}={value.item():.4g}" for key, value in losses.items()
               if key.startswith("loss_") and not bool(torch.isfinite(value))]
        return (f"non-finite {', '.join(bad)} in the {name} update; check the batch for NaN/inf (rewards, "
                f"observations, actions) or lower the learning rates (nan_policy='skip' skips such steps)")

    def update_world_model(self, batch: TensorDictBase, extra_losses: Sequence[Callable] = ()) -> TensorDict:
        """One Eq. 2 step on a ``[B, T]`` batch; leaves the posterior latents in ``batch``.

        ``extra_losses`` (e.g. CoWorld's state alignment, Eq. 3) are called on ``batch``
        after the world model has filtered it (so they can read ``embedding``, ``stoch``,
        ...); their ``loss_*`` terms join the backward pass and everything they return is
        reported.
        """
        with self.autocast_context():
            losses = self.world_model_loss(batch)
            for extra in extra_losses:
                losses.update(extra(batch))
        return self.step_world_model(losses)

    def step_world_model(self, losses: TensorDict) -> TensorDict:
        """Sum the ``loss_*`` entries of ``losses``, backpropagate, clip and step the world model."""
        return self._step("world_model", losses).detach()

    def imagined_keys(self) -> ImaginedKeys:
        """Where imagination writes: the names the actor and value losses read."""
        actor, value = self.actor_loss.tensor_keys, self.value_loss.tensor_keys
        if actor.features != value.features:
            raise ValueError(f"ActorLoss reads imagined states from {actor.features!r} but ValueLoss from "
                             f"{value.features!r}; set_keys(features=...) the same on both.")
        return ImaginedKeys(features=value.features, action=actor.action, policy_params=actor.policy_params,
                            next_features=value.next_features, reward=value.reward, discount=value.discount)

    def imagine(self, batch: TensorDictBase) -> TensorDictBase:
        """Imagined trajectories from every posterior state of ``batch``, with value targets."""
        keys, fix = self.world_model.tensor_keys, "run update_world_model(batch) first (it writes the posterior latents)"
        stoch = require(batch, keys.stoch, "DreamerV2Agent.imagine", fix)
        deter = require(batch, keys.deter, "DreamerV2Agent.imagine", fix)
        with self.autocast_context():
            imagined = imagine(self.world_model, self.actor, stoch, deter, horizon=self.config.horizon,
                               gamma=self.config.gamma, keys=self.imagined_keys())
            return self.value_loss.targets(imagined)

    def update_behaviour(self, batch: TensorDictBase, imagined_hooks: Sequence[Hook] = ()) -> TensorDict:
        """One actor (Eq. 7) and one critic step from the posterior states in ``batch``.

        ``imagined_hooks`` are called on the imagined TensorDict (after the value targets
        are written, before the losses) to add entries the losses read, e.g. CoWorld's
        ``source_value`` for the min-max penalty (Eq. 6).
        """
        imagined = self.imagine(batch)
        with self.autocast_context():
            for hook in imagined_hooks:
                hook(imagined)
            actor_losses = self.actor_loss(imagined)
        self._step("actor", actor_losses)
        with self.autocast_context():
            value_losses = self.value_loss(imagined)
        self._step("value", value_losses)
        self.target_updater.step()
        return actor_losses.update(value_losses).detach()

    def update(self, batch: TensorDictBase) -> TensorDict:
        """World model, then behaviour, on one batch (DreamerV2's train step)."""
        return self.update_world_model(batch).update(self.update_behaviour(batch))

    def policy(self) -> LatentPolicy:
        return LatentPolicy(self.world_model, self.actor, expl_noise=self.config.expl_noise)

    # ---------------------------------------------------------- checkpointing
    def checkpoint_state(self) -> dict:
        """Everything needed to resume: weights, slow critic, optimisers, updater counter."""
        return {
            "modules": self.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "target_updater_counter": self.target_updater.counter,
        }

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.target_updater.counter = state["target_updater_counter"]


def make_dreamer_agent(model: ModelConfig, agent: AgentConfig, *, action_dim: int, obs_shape=(3, 64, 64),
                       device: torch.device | str = "cpu", autocast: bool = False,
                       nan_policy: str = "raise") -> DreamerV2Agent:
    """Build networks on ``device`` first, so optimisers and the slow critic live there too."""
    networks = build_networks(model, action_dim=action_dim, obs_shape=tuple(obs_shape))
    world_model, actor, critic = (net.to(device) for net in networks)
    return DreamerV2Agent(world_model, actor, critic, agent, autocast=autocast, nan_policy=nan_policy)
