"""Latent imagination and the lambda-return (DreamerV2, Sec. 3 / Eq. 4 of DreamerV2).

Imagined trajectories use the TED layout of the rest of the library::

    k              0        1       ...   H-1
    features       s_0      s_1           s_{H-1}     (s_0 = a posterior state)
    action         a_0      a_1           a_{H-1}     (a_k ~ pi(. | sg(s_k)))
    next.features  s_1      s_2           s_H         (prior samples)
    next.reward    r(s_1)   r(s_2)        r(s_H)
    next.discount  g(s_1)   g(s_2)        g(s_H)      (gamma * continuation)
    next.ensemble_stats  [E heads' prior stats at s_1 .. s_H]  (RSSMs with an ensemble only)

so that ``R_k = r_{k+1} + g_{k+1} ((1 - lambda) v(s_{k+1}) + lambda R_{k+1})`` with
``R_{H-1} = r_H + g_H v(s_H)``. (DreamerV2 also sums the reward of the start state,
which was earned before it; it is a constant for the policy, so it is left out here.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict
from tensordict.utils import NestedKey
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value.functional import td_lambda_return_estimate

from coworld_trl.modules.networks import Actor
from coworld_trl.modules.policy import check_policy_actor, policy_distribution
from coworld_trl.modules.world_model import WorldModel


@dataclass
class ImaginedKeys:
    """Where :func:`imagine` writes the trajectory (the keys ``ActorLoss`` and ``ValueLoss`` read).

    Attributes:
        features, action: ``s_k`` and ``a_k``.
        policy_params: the library :class:`~coworld_trl.modules.Actor`'s distribution
            parameters at ``s_k`` (written for that actor only).
        next_features, reward, discount: ``s_{k+1}``, ``r(s_{k+1})``, ``gamma c(s_{k+1})``.
        ensemble_stats: every prior head's stats at ``s_{k+1}``, ``[N, H, E, stats_dim]``
            (written when the RSSM has an ensemble of prior heads; Offline DV2's reward
            penalty reads it).
    """

    features: NestedKey = "features"
    action: NestedKey = "action"
    policy_params: NestedKey = "policy_params"
    next_features: NestedKey = ("next", "features")
    reward: NestedKey = ("next", "reward")
    discount: NestedKey = ("next", "discount")
    ensemble_stats: NestedKey = ("next", "ensemble_stats")


def imagine(
    world_model: WorldModel,
    actor: torch.nn.Module,
    stoch: torch.Tensor,
    deter: torch.Tensor,
    *,
    horizon: int = 15,
    gamma: float = 0.995,
    keys: ImaginedKeys | None = None,
) -> TensorDict:
    """Roll the actor out in the world model's prior for ``horizon`` steps.

    The world model's parameters are held out (no gradient reaches them) while its
    activations stay differentiable, so the actor learns through the dynamics.

    The actor contract (:func:`~coworld_trl.modules.check_policy_actor`): any TorchRL
    probabilistic actor, i.e. ``in_keys`` with one entry (the latent features) and
    ``get_dist(tensordict)`` returning a distribution with ``rsample`` (e.g. a
    ``ProbabilisticActor`` with a ``TanhNormal``). It reads ``sg(s_k)``. For the library's
    :class:`~coworld_trl.modules.Actor` the distribution parameters of every step are also
    written (``policy_params``, with their graph), so ``ActorLoss`` needs no second actor pass.

    Args:
        world_model: provides the RSSM prior, reward head and optional discount head.
        actor: see above.
        stoch, deter: ``[N, ...]`` start states (posterior states, detached).

    Keyword Args:
        horizon: ``H`` (15).
        gamma: discount; multiplied by the discount head's continuation probability
            when the model has one.
        keys: where to write the trajectory (:class:`ImaginedKeys`).

    With an ensemble of prior heads (``RSSM(ensemble=E)``) each step samples ``s_{k+1}``
    from one random head (V-D4RL) and ``ensemble_stats`` holds all ``E`` heads' stats at
    ``s_{k+1}``, with their graph in the imagined states (the reward penalty built on them
    reaches the actor through the dynamics, as in V-D4RL where it is computed inside the
    actor's gradient tape).

    Returns:
        TensorDict ``[N, H]`` with ``features``, ``action``, ``policy_params`` (library
        actor only) and ``("next", ...)`` ``features``, ``reward``, ``discount``, and
        ``ensemble_stats`` with an ensemble.

    Examples:
        >>> imagined = imagine(world_model, actor, batch["stoch"], batch["deter"], horizon=15)
        >>> imagined["next", "reward"].shape   # [B * T, 15]
    """
    check_policy_actor(actor, "imagine")
    keys = keys or ImaginedKeys()
    rssm = world_model.rssm
    fast = isinstance(actor, Actor)
    stoch, deter = stoch.detach().flatten(0, -2), deter.detach().flatten(0, -2)
    features, actions, policy_params, deters = [rssm.features(stoch, deter)], [], [], []
    with hold_out_net(world_model):
        for _ in range(horizon):
            if fast:
                params = actor.params(features[-1].detach())
                action = actor.distribution(params).rsample()
                policy_params.append(params)
            else:
                action = policy_distribution(actor, features[-1].detach()).rsample()
            deter, _, stoch = rssm.img_step(stoch, deter, action)
            actions.append(action)
            deters.append(deter)
            features.append(rssm.features(stoch, deter))
        features = torch.stack(features, 1)
        next_features = features[:, 1:]
        # The heads read a contiguous copy: a strided [N, H, F] input makes the linear
        # layers fall back to batched matmuls with expanded weights.
        heads_in = next_features.contiguous()
        reward = world_model.reward_head(heads_in)
        if world_model.discount_head is not None:
            discount = gamma * torch.sigmoid(world_model.discount_head(heads_in))
        else:
            discount = torch.full_like(reward, gamma)
        # All heads at once, after the loop (they are not on the recurrent path).
        ensemble_stats = rssm.ensemble_stats(torch.stack(deters, 1)) if rssm.ensemble else None
    out = TensorDict(batch_size=[features.shape[0], horizon])
    out.set(keys.features, features[:, :-1])
    out.set(keys.action, torch.stack(actions, 1))
    if fast:
        out.set(keys.policy_params, torch.stack(policy_params, 1))
    out.set(keys.next_features, next_features)
    out.set(keys.reward, reward)
    out.set(keys.discount, discount)
    if ensemble_stats is not None:
        out.set(keys.ensemble_stats, ensemble_stats)
    return out


def lambda_return(reward: torch.Tensor, next_value: torch.Tensor, discount: torch.Tensor, lmbda: float) -> torch.Tensor:
    """TD(lambda) return with a per-step discount, ``[N, H]`` in and out (TorchRL's estimator)."""
    done = torch.zeros_like(reward, dtype=torch.bool).unsqueeze(-1)
    return td_lambda_return_estimate(
        discount.unsqueeze(-1), lmbda, next_value.unsqueeze(-1), reward.unsqueeze(-1), done, done
    ).squeeze(-1)


def discount_weights(discount: torch.Tensor) -> torch.Tensor:
    """Weight of step k: ``prod_{i<k} discount_i`` (1 at k = 0), detached."""
    ones = torch.ones_like(discount[:, :1])
    return torch.cumprod(torch.cat([ones, discount[:, :-1]], 1), 1).detach()
