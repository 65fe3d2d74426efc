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
from typing import Callable, Iterable, Mapping, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from coworld_trl.errors import CoWorldError
from coworld_trl.modules import Actor, LatentPolicy, ScalarHead, WorldModel, make_world_model, require
from coworld_trl.objectives import (
    ActorLoss,
    EWCPenalty,
    ImaginedKeys,
    MixedRewardLoss,
    RewardUncertaintyPenalty,
    ValueLoss,
    WorldModelLoss,
    diagonal_fisher,
    imagine,
)


@dataclass
class ModelConfig:
    """World model, actor and critic sizes (defaults: Table 7 of the paper).

    ``ensemble`` > 0 gives the RSSM that many prior heads (Offline DV2: 7; see
    :class:`~coworld_trl.modules.RSSM`); 0 is DreamerV2's single head.
    """

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
    ensemble: int = 0


@dataclass
class AgentConfig:
    """Loss scales, optimisers and behaviour learning (defaults: Table 7 / DreamerV2).

    ``eval_action``: the action evaluations take, ``"mode"`` (DreamerV2), ``"mean"`` or ``"sample"``
    (see :func:`~coworld_trl.modules.policy.evaluation_action`).
    """

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
    eval_action: str = "mode"


NAN_POLICIES = ("raise", "skip")


class NonFiniteLossError(CoWorldError, RuntimeError):
    """A loss term came out NaN or infinite (``nan_policy="raise"``)."""


def build_networks(model: ModelConfig, *, action_dim: int, obs_shape: tuple[int, ...]) -> tuple[WorldModel, Actor, ScalarHead]:
    """World model, actor and critic sized by ``model``."""
    world_model = make_world_model(
        action_dim=action_dim, obs_shape=obs_shape, latent=model.latent, stoch=model.stoch, classes=model.classes,
        deter=model.deter, hidden=model.hidden, norm_gru=model.norm_gru, cnn_depth=model.cnn_depth,
        mlp_units=model.mlp_units, reward_layers=model.reward_layers, discount_head=model.discount_head,
        ensemble=model.ensemble,
    )
    actor = Actor(world_model.feature_dim, action_dim, layers=model.actor_layers, units=model.mlp_units,
                  dist=model.actor_dist)
    critic = ScalarHead(world_model.feature_dim, layers=model.critic_layers, units=model.mlp_units)
    return world_model, actor, critic


Hook = Callable[[TensorDictBase], object]
PARTS = ("world_model", "actor", "value")  # the optimisers, and what EWC can anchor


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
        reward_penalty: optional module called on the imagined TensorDict after imagination
            and BEFORE the value targets, which may rewrite the imagined rewards; what it
            returns is reported with the behaviour metrics. Offline DV2's
            :class:`~coworld_trl.objectives.RewardUncertaintyPenalty` is one (the agent sets
            its latent kind from the world model, whose RSSM needs an ensemble of prior
            heads, and imagination writes its ``ensemble_stats`` where it reads them).
        regularizers: ``{optimiser: module}`` for ``"world_model"``, ``"actor"`` or
            ``"value"``: each is called with no input at every step of that optimiser and
            its ``loss_*`` terms join that optimiser's loss. Its entries are reported with
            the optimiser's name appended (``loss_ewc_world_model``, ``ewc_distance_actor``).
            Registered under ``regularizers``, so they are checkpointed with the agent; e.g.
            :class:`~coworld_trl.objectives.EWCPenalty` (:meth:`consolidate_ewc`).
        autocast: run the forward passes (losses, imagination) under bf16 autocast; weights,
            gradients and Adam's state stay float32.
        nan_policy: what to do when the summed loss of an optimiser step is not finite:
            ``"raise"`` raises :class:`NonFiniteLossError` naming the non-finite ``loss_*``
            terms; ``"skip"`` skips that optimiser step (no weight changes) and reports
            ``skipped_<optimiser> = 1.0`` in the metrics (``0.0`` otherwise).
        compile, cuda_graphs: :meth:`compile_updates` (``cuda_graphs`` implies ``compile``).

    Examples:
        >>> agent = make_dreamer_agent(ModelConfig(), AgentConfig(), action_dim=6)
        >>> metrics = agent.update(batch)   # loss_image, ..., loss_actor, loss_value, grad_norm_*, skipped_*
        >>> agent.observe(batch); agent.update_behaviour(batch)   # behaviour only, on a frozen world model
        >>> agent.compile_updates(cuda_graphs=True)   # both updates compiled, replayed as CUDA graphs
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
        reward_penalty: nn.Module | None = None,
        regularizers: Mapping[str, nn.Module] | None = None,
        autocast: bool = False,
        nan_policy: str = "raise",
        compile: bool = False,
        cuda_graphs: bool = False,
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
        if isinstance(reward_penalty, RewardUncertaintyPenalty):
            self._check_uncertainty_penalty(reward_penalty, world_model)
        self.reward_penalty = reward_penalty
        regularizers = dict(regularizers or {})
        unknown = sorted(set(regularizers) - set(PARTS))
        if unknown:
            raise ValueError(f"regularizers for {unknown}: the agent's optimisers are {list(PARTS)}.")
        self.regularizers = nn.ModuleDict(regularizers)
        for name, regularizer in regularizers.items():
            if isinstance(regularizer, EWCPenalty) and regularizer.module is not self.part_module(name):
                raise ValueError(f"regularizers[{name!r}] is an EWCPenalty on another module; build it on the "
                                 f"agent's {name} network (EWCPenalty(agent_{name}_module)).")
        self._losses_fns, self.cuda_graphs = None, False
        if compile or cuda_graphs:
            self.compile_updates(cuda_graphs=cuda_graphs)

    @staticmethod
    def _check_uncertainty_penalty(penalty: RewardUncertaintyPenalty, world_model: WorldModel) -> None:
        rssm = world_model.rssm
        if rssm.ensemble == 0:
            raise ValueError("reward_penalty is a RewardUncertaintyPenalty but the world model has one prior head; "
                             "build it with an ensemble (ModelConfig.ensemble=7, make_world_model(ensemble=7)).")
        if penalty.latent_spec is None:
            penalty.set_latent(rssm)
        elif penalty.latent_spec != rssm.latent_spec:
            raise ValueError(f"reward_penalty reads {penalty.latent_spec} latents but the world model's are "
                             f"{rssm.latent_spec}; build the penalty on this world model.")

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
    # An update is a losses function (forward only: what torch.compile compiles, together
    # with its backward through AOTAutograd) and _apply (backward, clip, fused Adam, outside
    # the compiled region: Adam is one multi-tensor kernel per optimiser already, and a
    # compiled step would need compiled copies of its state).
    def compile_updates(self, *, cuda_graphs: bool = False, backend: str = "inductor") -> None:
        """``torch.compile`` the forward (and so the backward) of :meth:`update_world_model`
        and :meth:`update_behaviour`, each as one function of static shapes.

        The gradient clip and the fused Adam steps stay eager, after the compiled backward.
        A non-finite loss then skips its optimiser step on the device (Adam's ``found_inf``,
        as ``GradScaler`` uses it): no host sync with ``nan_policy="skip"``, one check per
        update, after its steps, with ``"raise"``.

        Keyword Args:
            cuda_graphs: ``mode="reduce-overhead"``: each compiled forward and backward is
                replayed as a CUDA graph (CUDA only). The metrics an update returns and the
                latents it leaves in the batch are copied out of the graphs' memory.
            backend: the ``torch.compile`` backend (``"aot_eager"`` traces without inductor).
        """
        device = next(self.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the agent on a CUDA device, it is on {device}; "
                             f"set cuda_graphs=False (train.cuda_graphs=false) on this machine.")
        options = dict(backend=backend, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)
        self._losses_fns = {"world_model": torch.compile(self._world_model_losses, **options),
                            "behaviour": torch.compile(self._behaviour_losses, **options)}
        self.cuda_graphs = cuda_graphs

    @property
    def compiled(self) -> bool:
        return self._losses_fns is not None

    def _losses(self, which: str):
        if self._losses_fns is None:
            return {"world_model": self._world_model_losses, "behaviour": self._behaviour_losses}[which]
        if self.cuda_graphs:  # every output of the previous graph replay has been copied or consumed
            torch.compiler.cudagraph_mark_step_begin()
        return self._losses_fns[which]

    def _with_regularizer(self, name: str, losses: TensorDict) -> tuple[torch.Tensor, TensorDict]:
        """``(sum of the loss_* terms, losses)`` of optimiser ``name``, with the terms of
        ``regularizers[name]`` added (suffixed ``_<name>``)."""
        if name in self.regularizers:
            for key, value in self.regularizers[name]().items():
                losses[f"{key}_{name}"] = value
        return sum(value for key, value in losses.items() if key.startswith("loss_")), losses

    def _apply(self, steps: dict[str, tuple[torch.Tensor, TensorDict]]) -> TensorDict:
        """Backpropagate the totals of the optimisers in ``steps`` at once (they train disjoint
        parameters), then clip and step each. Writes ``grad_norm_<name>`` and
        ``skipped_<name>``; returns every optimiser's entries, detached."""
        device = next(self.parameters()).device
        # One finite check per optimiser step. On the CPU without compile it costs nothing (no
        # device to wait for) and is made before the backward, so a skipped step leaves even
        # Adam's state untouched. Elsewhere it stays on the device: fused Adam skips the step
        # itself (found_inf, as GradScaler uses it), and "raise" reads the flags once per
        # update, after its steps.
        on_host = not self.compiled and device.type == "cpu"
        finite = {name: torch.isfinite(total) for name, (total, _) in steps.items()}
        if on_host:
            finite = {name: bool(ok) for name, ok in finite.items()}
            self._check_finite(steps, finite)
        taken = [name for name in steps if not on_host or finite[name]]
        for name in steps:
            self.optimizers[name].zero_grad(set_to_none=True)
        if taken:
            torch.autograd.backward([steps[name][0] for name in taken])
        metrics = TensorDict()
        for name, (_, losses) in steps.items():
            losses = losses.detach()
            if name not in taken:
                grad_norm, skipped = torch.zeros((), device=device), torch.ones((), device=device)
            else:
                grad_norm = nn.utils.clip_grad_norm_(self._trained_params(name), self.config.grad_clip)
                optimizer = self.optimizers[name]
                optimizer.found_inf = None if on_host else (~finite[name]).float()
                optimizer.step()
                skipped = torch.zeros((), device=device) if on_host else optimizer.found_inf
                if not on_host:
                    grad_norm = torch.where(finite[name], grad_norm, torch.zeros_like(grad_norm))
            losses[f"grad_norm_{name}"], losses[f"skipped_{name}"] = grad_norm, skipped
            metrics.update(losses)
        if not on_host and self.nan_policy == "raise":
            flags = torch.stack(list(finite.values())).tolist()  # the update's one host sync
            self._check_finite(steps, dict(zip(finite, flags)))
        return metrics.clone() if self.cuda_graphs else metrics

    def _check_finite(self, steps: dict[str, tuple[torch.Tensor, TensorDict]], finite: dict[str, bool]) -> None:
        """With ``nan_policy="raise"``, raise :class:`NonFiniteLossError` naming the non-finite
        ``loss_*`` terms of the first optimiser whose total is not finite."""
        name = next((name for name, ok in finite.items() if not ok), None)
        if name is None or self.nan_policy != "raise":
            return
        bad = [f"{key}={value.item():.4g}" for key, value in steps[name][1].items()
               if key.startswith("loss_") and not bool(torch.isfinite(value))]
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} in the {name} update; check the batch for NaN/inf (rewards, "
            f"observations, actions) or lower the learning rates (nan_policy='skip' skips such steps)")

    def _trained_params(self, name: str):
        if name == "value":
            return self.value_loss.value_network_params.values(True, True)
        return self.part_module(name).parameters()

    def part_module(self, name: str) -> nn.Module:
        """The network optimiser ``name`` trains: ``world_model``, ``actor`` or ``value`` (the critic)."""
        modules = {"world_model": self.world_model, "actor": self.actor, "value": self.critic}
        if name not in modules:
            raise ValueError(f"{name!r} is not one of the agent's parts {list(PARTS)}.")
        return modules[name]

    def _world_model_losses(self, batch: TensorDictBase, extra_losses: Sequence[Callable] = (),
                            loss: Callable | None = None) -> tuple[torch.Tensor, TensorDict]:
        with self.autocast_context():
            losses = (loss or self.world_model_loss)(batch)
            for extra in extra_losses:
                losses.update(extra(batch))
            return self._with_regularizer("world_model", losses)

    def update_world_model(self, batch: TensorDictBase, extra_losses: Sequence[Callable] = (), *,
                           loss: Callable[[TensorDictBase], TensorDict] | None = None) -> TensorDict:
        """One Eq. 2 step on a ``[B, T]`` batch; leaves the posterior latents in ``batch``.

        ``extra_losses`` (e.g. CoWorld's state alignment, Eq. 3) are called on ``batch``
        after the world model has filtered it (so they can read ``embedding``, ``stoch``,
        ...); their ``loss_*`` terms join the backward pass and everything they return is
        reported. ``loss`` replaces the call of :attr:`world_model_loss` on ``batch`` (CoWorld:
        a source's Eq. 5 on its batch and a target batch); it must train this world model
        and leave the latents in ``batch``.
        """
        total, losses = self._losses("world_model")(batch, tuple(extra_losses), loss)
        if self.cuda_graphs:  # what the behaviour update reads, out of the graph's memory
            for key in (self.world_model.tensor_keys.stoch, self.world_model.tensor_keys.deter):
                batch.set(key, batch.get(key).clone())
        return self._apply({"world_model": (total, losses)})

    def step_world_model(self, losses: TensorDict) -> TensorDict:
        """Sum the ``loss_*`` entries of ``losses`` (computed outside the agent, with their graph),
        backpropagate, clip and step the world model, as :meth:`update_world_model` does."""
        return self._apply({"world_model": self._with_regularizer("world_model", losses)})

    @torch.no_grad()
    def observe(self, batch: TensorDictBase) -> TensorDictBase:
        """Filter ``batch`` with the world model, without gradient, writing its posterior latents.

        For behaviour updates on a frozen world model (Offline DV2's second stage:
        ``agent.observe(batch); agent.update_behaviour(batch)``); no weight changes.
        """
        with self.autocast_context():
            self.world_model(batch)
        return batch

    def imagined_keys(self) -> ImaginedKeys:
        """Where imagination writes: the names the actor and value losses (and the reward penalty) read."""
        actor, value = self.actor_loss.tensor_keys, self.value_loss.tensor_keys
        if actor.features != value.features:
            raise ValueError(f"ActorLoss reads imagined states from {actor.features!r} but ValueLoss from "
                             f"{value.features!r}; set_keys(features=...) the same on both.")
        penalty = getattr(self.reward_penalty, "tensor_keys", None)
        for name in ("reward", "next_features"):
            if penalty is not None and hasattr(penalty, name) and getattr(penalty, name) != getattr(value, name):
                raise ValueError(f"the reward penalty reads {name}={getattr(penalty, name)!r} but ValueLoss "
                                 f"{getattr(value, name)!r}; set_keys({name}=...) the same on both.")
        return ImaginedKeys(features=value.features, action=actor.action, policy_params=actor.policy_params,
                            next_features=value.next_features, reward=value.reward, discount=value.discount,
                            ensemble_stats=getattr(penalty, "ensemble_stats", ImaginedKeys.ensemble_stats))

    def imagine(self, batch: TensorDictBase) -> TensorDictBase:
        """Imagined trajectories from every posterior state of ``batch``, the reward penalty
        applied (if any), with value targets."""
        return self._imagine(batch)[0]

    def _imagine(self, batch: TensorDictBase) -> tuple[TensorDictBase, TensorDict | None]:
        keys = self.world_model.tensor_keys
        fix = "run update_world_model(batch) or observe(batch) first (they write the posterior latents)"
        stoch = require(batch, keys.stoch, "DreamerV2Agent.imagine", fix)
        deter = require(batch, keys.deter, "DreamerV2Agent.imagine", fix)
        penalty_metrics = None
        with self.autocast_context():
            imagined = imagine(self.world_model, self.actor, stoch, deter, horizon=self.config.horizon,
                               gamma=self.config.gamma, keys=self.imagined_keys())
            if self.reward_penalty is not None:  # before the targets: the returns see r_pen
                penalty_metrics = self.reward_penalty(imagined)
            return self.value_loss.targets(imagined), penalty_metrics

    def _behaviour_losses(self, batch: TensorDictBase, imagined_hooks: Sequence[Hook] = ()
                          ) -> tuple[dict[str, tuple[torch.Tensor, TensorDict]], TensorDict | None]:
        imagined, penalty_metrics = self._imagine(batch)
        with self.autocast_context():
            for hook in imagined_hooks:
                hook(imagined)
            # The critic reads sg(features) and the actor's return a slow critic without
            # gradient: the two losses train disjoint parameters and are computed together.
            steps = {"actor": self._with_regularizer("actor", self.actor_loss(imagined)),
                     "value": self._with_regularizer("value", self.value_loss(imagined))}
        return steps, penalty_metrics

    def update_behaviour(self, batch: TensorDictBase, imagined_hooks: Sequence[Hook] = ()) -> TensorDict:
        """One actor (Eq. 7) and one critic step from the posterior states in ``batch``.

        ``imagined_hooks`` are called on the imagined TensorDict (after the reward penalty
        and the value targets, before the losses) to add entries the losses read, e.g.
        CoWorld's ``source_value`` for the min-max penalty (Eq. 6).
        """
        steps, penalty_metrics = self._losses("behaviour")(batch, tuple(imagined_hooks))
        metrics = self._apply(steps)
        self.target_updater.step()
        if penalty_metrics is not None:
            metrics.update(penalty_metrics.detach().clone() if self.cuda_graphs else penalty_metrics.detach())
        return metrics

    def update(self, batch: TensorDictBase) -> TensorDict:
        """World model, then behaviour, on one batch (DreamerV2's train step)."""
        return self.update_world_model(batch).update(self.update_behaviour(batch))

    # ------------------------------------------------------------------- EWC
    def part_loss(self, name: str, batch: TensorDictBase) -> TensorDict:
        """The loss optimiser ``name`` minimises on ``batch``, with its graph (no step).

        ``world_model``: the world-model loss (Eq. 2; a :class:`MixedRewardLoss` gives its
        source-only Eq. 2). ``actor`` / ``value``: the actor (Eq. 7) / critic loss on
        trajectories imagined from ``batch``'s posterior states (the world model filters
        ``batch`` without gradient first).
        """
        if name == "world_model":
            loss = self.world_model_loss
            return loss.source_only(batch) if isinstance(loss, MixedRewardLoss) else loss(batch)
        if name not in PARTS:
            raise ValueError(f"{name!r} is not one of the agent's parts {list(PARTS)}.")
        self.observe(batch)
        imagined = self.imagine(batch)
        return self.actor_loss(imagined) if name == "actor" else self.value_loss(imagined)

    def fisher(self, batches: Iterable[TensorDictBase], parts: Sequence[str] = ("world_model",)) -> dict:
        """Diagonal empirical Fisher (:func:`~coworld_trl.objectives.diagonal_fisher`) of each
        part's loss (:meth:`part_loss`) over ``batches``: ``{part: {param_name: F}}``. Changes no
        weight (the batches receive latents)."""
        batches = list(batches)
        return {name: diagonal_fisher(self.part_module(name), lambda batch, name=name: self.part_loss(name, batch),
                                      batches) for name in parts}

    def consolidate_ewc(self, batches: Iterable[TensorDictBase], parts: Sequence[str] | None = None) -> dict:
        """End of the source task: anchor every :class:`~coworld_trl.objectives.EWCPenalty`
        regulariser (or those of ``parts``) at the current weights, weighted by the Fisher
        of that part's loss over ``batches`` (source batches). Returns the Fishers."""
        ewc = {name: reg for name, reg in self.regularizers.items() if isinstance(reg, EWCPenalty)}
        parts = list(ewc) if parts is None else list(parts)
        missing = [name for name in parts if name not in ewc]
        if missing or not parts:
            raise ValueError(f"no EWCPenalty regulariser for {missing or 'any part'}; build the agent with "
                             f"regularizers={{part: EWCPenalty(module)}} (make_dreamer_agent(ewc_lmbda=...)).")
        fishers = self.fisher(batches, parts)
        for name in parts:
            ewc[name].consolidate(fishers[name])
        return fishers

    def policy(self) -> LatentPolicy:
        return LatentPolicy(self.world_model, self.actor, expl_noise=self.config.expl_noise,
                            eval_action=self.config.eval_action)

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
                       device: torch.device | str = "cpu", autocast: bool = False, nan_policy: str = "raise",
                       reward_penalty: nn.Module | None = None, ewc_lmbda: float = 0.0,
                       ewc_parts: Sequence[str] = PARTS, compile: bool = False,
                       cuda_graphs: bool = False) -> DreamerV2Agent:
    """Build networks on ``device`` first, so optimisers and the slow critic live there too.

    Keyword Args:
        reward_penalty: :class:`DreamerV2Agent`'s (Offline DV2: a
            :class:`~coworld_trl.objectives.RewardUncertaintyPenalty`, with ``model.ensemble`` > 0).
        ewc_lmbda: > 0 adds an :class:`~coworld_trl.objectives.EWCPenalty` of that weight to the
            optimisers of ``ewc_parts`` (DV2 Finetune + EWC; then call
            :meth:`DreamerV2Agent.consolidate_ewc` on source batches after pretraining); 0
            (default) adds none. The paper gives no value; ``EWCPenalty``'s own default is
            :data:`~coworld_trl.objectives.DEFAULT_EWC_LMBDA`.
        ewc_parts: which of ``world_model``, ``actor``, ``value`` EWC anchors (all three).
        compile, cuda_graphs: :meth:`DreamerV2Agent.compile_updates`.
    """
    networks = build_networks(model, action_dim=action_dim, obs_shape=tuple(obs_shape))
    world_model, actor, critic = (net.to(device) for net in networks)
    regularizers = None
    if ewc_lmbda > 0:
        unknown = sorted(set(ewc_parts) - set(PARTS))
        if unknown:
            raise ValueError(f"ewc_parts has {unknown}; use a subset of {list(PARTS)}.")
        modules = {"world_model": world_model, "actor": actor, "value": critic}
        regularizers = {name: EWCPenalty(modules[name], lmbda=ewc_lmbda) for name in ewc_parts}
    return DreamerV2Agent(world_model, actor, critic, agent, autocast=autocast, nan_policy=nan_policy,
                          reward_penalty=reward_penalty, regularizers=regularizers, compile=compile,
                          cuda_graphs=cuda_graphs)
