"""The acting policy: filter the latent state one step at a time, then act.

Collectors carry the recurrent state in the TensorDict: :func:`latent_state_primer`
adds zero-initialised ``latent_stoch``, ``latent_deter`` and ``prev_action`` entries to
the env, and :class:`LatentPolicy` reads them with the current observation and writes
them back, so the same policy runs in a collector, in ``env.rollout`` or in a
``ParallelEnv`` without hidden Python state.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.envs.utils import ExplorationType, exploration_type

from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import Actor
from coworld_trl.modules.world_model import WorldModel

STATE_KEYS = ("latent_stoch", "latent_deter", "prev_action")


def check_policy_actor(actor, owner: str) -> None:
    """The actor contract of ``imagine``, ``ActorLoss`` and :class:`LatentPolicy`.

    Any TorchRL probabilistic actor works (``ProbabilisticActor``,
    ``ProbabilisticTensorDictSequential``, the library's :class:`Actor`): it must have
    ``get_dist(tensordict)`` returning a distribution with ``rsample`` and ``log_prob``,
    and exactly one in-key, the latent features ``[..., feature_dim]``.
    """
    if not (callable(getattr(actor, "get_dist", None)) and hasattr(actor, "in_keys")):
        raise TypeError(f"{owner}: the actor ({type(actor).__name__}) must be a TorchRL probabilistic actor with "
                        f"in_keys and get_dist(tensordict) (e.g. ProbabilisticActor or coworld_trl.modules.Actor).")
    if len(actor.in_keys) != 1:
        raise ValueError(f"{owner}: the actor reads {list(actor.in_keys)}; it must read one entry, the latent "
                         f"features (e.g. in_keys=['features']).")


def policy_distribution(actor, features: torch.Tensor):
    """``pi(. | features)`` for any actor of the :func:`check_policy_actor` contract.

    The library's :class:`Actor` is called on the tensor; any other actor through
    ``get_dist`` on a TensorDict holding ``features`` under its one in-key.
    """
    if isinstance(actor, Actor):
        return actor(features)
    return actor.get_dist(TensorDict({actor.in_keys[0]: features}, batch_size=features.shape[:-1]))


EVAL_ACTIONS = ("mode", "mean", "sample")


def evaluation_action(dist, kind: str = "mode") -> torch.Tensor:
    """The action evaluation takes from ``dist``.

    ``"mode"`` (DreamerV2's evaluation): the most likely action. For the truncated Normal
    that is its location clipped to ``[-1, 1]``; its mean is pulled toward 0 wherever the
    scale is large (location 0.9, scale 1: mean 0.25). ``"mean"``: TorchRL's
    ``deterministic_sample`` (the mean of a truncated Normal). A distribution without an
    analytical mode (``TanhNormal``) uses ``deterministic_sample`` for both. ``"sample"``:
    a draw, as the policy acts when it collects (without ``expl_noise``), to tell how much
    of a return comes from the policy's spread rather than its most likely action.
    """
    if kind == "sample":
        return dist.sample()
    if kind == "mode":
        try:
            return dist.mode
        except (RuntimeError, NotImplementedError):
            pass
    return dist.deterministic_sample


def latent_state_primer(world_model: WorldModel) -> TensorDictPrimer:
    """Env transform that adds the policy's recurrent state, zeroed at every reset."""
    rssm = world_model.rssm
    return TensorDictPrimer(
        latent_stoch=Unbounded(shape=(rssm.stoch_dim,)),
        latent_deter=Unbounded(shape=(rssm.deter,)),
        prev_action=Unbounded(shape=(rssm.action_dim,)),
        reset_key="_reset",
    )


class LatentPolicy(TensorDictModuleBase):
    """Filter ``o_t`` into the posterior ``s_t`` and sample ``a_t ~ pi(. | s_t)``.

    Under ``ExplorationType.RANDOM`` (collectors set it) it samples the actor and adds
    ``expl_noise`` Gaussian noise; otherwise (evaluation) it takes the posterior mode and
    the action :func:`evaluation_action` gives for ``eval_action``.

    In keys: the world model's observation and ``is_init`` keys and the state keys of
    :func:`latent_state_primer`. Out keys: ``action`` and the updated state keys.

    ``actor``: any actor of the :func:`check_policy_actor` contract.
    """

    def __init__(self, world_model: WorldModel, actor: torch.nn.Module, *, expl_noise: float = 0.0,
                 eval_action: str = "mode"):
        super().__init__()
        check_policy_actor(actor, "LatentPolicy")
        if eval_action not in EVAL_ACTIONS:
            raise ValueError(f"eval_action={eval_action!r} is unknown; use one of {', '.join(EVAL_ACTIONS)}.")
        self.world_model, self.actor, self.expl_noise, self.eval_action = world_model, actor, expl_noise, eval_action
        self.in_keys = [world_model.tensor_keys.obs, world_model.tensor_keys.is_init, *STATE_KEYS]
        self.out_keys = ["action", *STATE_KEYS]

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        wm = self.world_model
        explore = exploration_type() == ExplorationType.RANDOM
        param = next(wm.parameters())
        fix = "add latent_state_primer(world_model) to the env's transforms"

        def read(key, fix=fix):
            return require(tensordict, key, "LatentPolicy", fix, what="env step")

        obs_fix = "the world model reads it: set_keys(obs=...) on the WorldModel"
        stoch, deter = wm.rssm.filter_step(
            read("latent_stoch").to(param),
            read("latent_deter").to(param),
            read("prev_action").to(param),
            wm.embed(read(wm.tensor_keys.obs, obs_fix).to(param.device)),
            read(wm.tensor_keys.is_init, "add TorchRL's InitTracker to the env's transforms").to(param.device),
            sample=explore,
        )
        dist = policy_distribution(self.actor, wm.rssm.features(stoch, deter))
        if explore:
            action = dist.sample()
            if self.expl_noise > 0:
                action = (action + self.expl_noise * torch.randn_like(action)).clamp(-1, 1)
        else:
            action = evaluation_action(dist, self.eval_action)
        device = tensordict.device
        tensordict.set("action", action.to(device) if device is not None else action)
        for key, value in zip(STATE_KEYS, (stoch, deter, action)):
            tensordict.set(key, value.to(device) if device is not None else value)
        return tensordict
