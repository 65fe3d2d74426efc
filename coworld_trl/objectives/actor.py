"""Eq. 7: the DreamerV2 actor loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule


def policy_entropy(dist) -> torch.Tensor:
    """Analytic entropy where the distribution has one, else a one-sample estimate."""
    try:
        return dist.entropy()
    except NotImplementedError:
        return -dist.log_prob(dist.rsample())


class ActorLoss(LossModule):
    """Eq. 7 of CoWorld (the DreamerV2 actor objective).

    ``L_pi = -E[ sum_k w_k ( rho R_k + (1 - rho) ln pi(a_k | s_k) sg(R_k - v_slow(s_k))
    + eta_ent H[pi(. | s_k)] ) ]``

    ``rho = 1`` is pure dynamics backprop (DreamerV2 on continuous control and the
    official CoWorld code), ``rho = 0`` pure REINFORCE. Reads an imagined TensorDict on
    which :meth:`ValueLoss.targets` has run.

    Args:
        actor: ``features -> distribution`` module.

    Keyword Args:
        rho: mix of dynamics backprop and REINFORCE (1.0).
        entropy_scale: entropy bonus (1e-4).

    Returns:
        TensorDict with ``loss_actor`` and detached ``entropy``, ``value_target``.
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the imagined TensorDict.

        Attributes:
            features, action: imagined states and actions.
            policy_params: the actor's distribution parameters written by ``imagine``
                (reused instead of a second actor pass; recomputed when absent).
            value_target: lambda-return (with graph).
            state_value: slow-critic baseline.
            weight: cumulative discount.
        """

        features: str = "features"
        action: str = "action"
        policy_params: str = "policy_params"
        value_target: str = "value_target"
        state_value: str = "state_value"
        weight: str = "weight"

    default_keys = _AcceptedKeys

    def __init__(self, actor: nn.Module, *, rho: float = 1.0, entropy_scale: float = 1e-4):
        super().__init__()
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho={rho} is outside [0, 1]; 1 is dynamics backprop, 0 is REINFORCE.")
        self.actor, self.rho, self.entropy_scale = actor, rho, entropy_scale

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        target = imagined.get(keys.value_target)
        params = imagined.get(keys.policy_params, None)
        if params is None:
            params = self.actor.params(imagined.get(keys.features).detach())
        dist = self.actor.distribution(params)
        entropy = policy_entropy(dist)
        objective = self.entropy_scale * entropy
        if self.rho > 0:
            objective = objective + self.rho * target
        if self.rho < 1:
            advantage = (target - imagined.get(keys.state_value)).detach()
            objective = objective + (1 - self.rho) * dist.log_prob(imagined.get(keys.action).detach()) * advantage
        return TensorDict(
            loss_actor=-(imagined.get(keys.weight) * objective).mean(),
            entropy=entropy.detach().mean(),
        )
