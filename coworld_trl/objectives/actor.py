"""Eq. 7: the DreamerV2 actor loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import Actor
from coworld_trl.modules.policy import check_policy_actor, policy_distribution


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
        actor: any TorchRL probabilistic actor over the latent features: one in-key and
            ``get_dist(tensordict)`` (e.g. ``ProbabilisticActor``; the contract of
            :func:`~coworld_trl.modules.check_policy_actor`). It is evaluated at
            ``sg(features)`` (the loss's ``features`` entry, given to the actor under its
            own in-key). With the library's :class:`~coworld_trl.modules.Actor` the
            distribution parameters ``imagine`` wrote (``policy_params``) are reused: no
            second actor pass.

    Keyword Args:
        rho: mix of dynamics backprop and REINFORCE (1.0).
        entropy_scale: entropy bonus (1e-4).

    Returns:
        TensorDict with ``loss_actor`` and detached ``entropy``.

    Examples:
        >>> actor_loss = ActorLoss(actor, rho=1.0)
        >>> imagined = value_loss.targets(imagine(world_model, actor, stoch, deter))
        >>> actor_loss(imagined)["loss_actor"].backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the imagined TensorDict.

        Attributes:
            features, action: imagined states and actions (``action`` read when ``rho < 1``).
            policy_params: the library actor's distribution parameters written by
                ``imagine`` (reused instead of a second actor pass; recomputed when absent).
            value_target: lambda-return (with graph).
            state_value: slow-critic baseline (read when ``rho < 1``).
            weight: cumulative discount.
        """

        features: NestedKey = "features"
        action: NestedKey = "action"
        policy_params: NestedKey = "policy_params"
        value_target: NestedKey = "value_target"
        state_value: NestedKey = "state_value"
        weight: NestedKey = "weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(self, actor: nn.Module, *, rho: float = 1.0, entropy_scale: float = 1e-4):
        super().__init__()
        check_policy_actor(actor, "ActorLoss")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho={rho} is outside [0, 1]; 1 is dynamics backprop, 0 is REINFORCE.")
        self.actor, self.rho, self.entropy_scale = actor, rho, entropy_scale

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        reinforce = [keys.action, keys.state_value] if self.rho < 1 else []
        return [keys.features, keys.value_target, keys.weight, *reinforce]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_actor", "entropy"]

    def _read(self, imagined: TensorDictBase, name: str, fix: str) -> torch.Tensor:
        return require(imagined, getattr(self.tensor_keys, name), "ActorLoss", fix, what="imagined TensorDict")

    def distribution(self, imagined: TensorDictBase):
        """``pi(. | sg(s_k))`` at every imagined state."""
        actor = self.actor
        if isinstance(actor, Actor):
            params = imagined.get(self.tensor_keys.policy_params, None)
            if params is not None:
                return actor.distribution(params)
        features = self._read(imagined, "features", "rename it with set_keys(features=...)")
        return policy_distribution(actor, features.detach())

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        written = "ValueLoss.targets(imagined) writes it"
        target = self._read(imagined, "value_target", written)
        weight = self._read(imagined, "weight", written)
        dist = self.distribution(imagined)
        entropy = policy_entropy(dist)
        objective = self.entropy_scale * entropy
        if self.rho > 0:
            objective = objective + self.rho * target
        if self.rho < 1:
            advantage = (target - self._read(imagined, "state_value", written)).detach()
            action = self._read(imagined, "action", "imagine writes it; or set_keys(action=...)").detach()
            objective = objective + (1 - self.rho) * dist.log_prob(action) * advantage
        return TensorDict(
            loss_actor=-(weight * objective).mean(),
            entropy=entropy.detach().mean(),
        )
