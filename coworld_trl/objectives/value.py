"""The DreamerV2 critic loss with a slow target critic and an extension point for penalties."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictParams
from torch import nn
from torch.func import functional_call
from torchrl.objectives import HardUpdate, LossModule

from coworld_trl.objectives.imagination import discount_weights, lambda_return


class ValueLoss(LossModule):
    """Critic regression to the lambda-return (DreamerV2 Eq. 5; the first term of CoWorld Eq. 6).

    ``L_v = E[ sum_k w_k (0.5 (v(s_k) - sg(R_k))^2 + penalty_k) ]``, where ``R_k`` is the
    lambda-return bootstrapped with a slow copy of the critic and ``w_k`` the cumulative
    discount. ``penalty`` is the extension point: a module called as
    ``penalty(imagined, value)`` returning a ``[N, H]`` tensor, or a TensorDict with that
    tensor under ``"penalty"`` plus scalar diagnostics; the penalty is added per step under
    the same weights and reported as ``loss_value_penalty``, the diagnostics as they are
    (CoWorld's min-max constraint, Eq. 6, is one). Use :meth:`make_target_updater` for
    the slow critic's hard copy.

    Call :meth:`targets` first (it writes ``value_target``, ``state_value`` and
    ``weight`` into the imagined TensorDict; the target keeps its graph for the actor's
    dynamics backprop), then the actor loss, then this loss.

    Args:
        critic: ``features -> value`` module.

    Keyword Args:
        lmbda: lambda of the return (0.95).
        penalty: optional per-step penalty module.

    Examples:
        >>> value_loss = ValueLoss(critic)
        >>> updater = value_loss.make_target_updater(interval=100)
        >>> imagined = value_loss.targets(imagine(world_model, actor, stoch, deter))
        >>> value_loss(imagined)["loss_value"].backward(); updater.step()
    """

    value_network: nn.Module
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    @dataclass
    class _AcceptedKeys:
        """Keys of the imagined TensorDict.

        Attributes:
            features, next_features, reward, discount: imagined trajectory (see ``imagine``).
            value_target: lambda-return written by :meth:`targets`.
            state_value: slow-critic value of ``features`` written by :meth:`targets`.
            weight: cumulative discount written by :meth:`targets`.
        """

        features: str = "features"
        next_features: tuple = ("next", "features")
        reward: tuple = ("next", "reward")
        discount: tuple = ("next", "discount")
        value_target: str = "value_target"
        state_value: str = "state_value"
        weight: str = "weight"

    default_keys = _AcceptedKeys

    def __init__(self, critic: nn.Module, *, lmbda: float = 0.95, penalty: nn.Module | None = None):
        super().__init__()
        self.convert_to_functional(critic, "value_network", create_target_params=True)
        self.lmbda = lmbda
        self.penalty = penalty

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def make_target_updater(self, interval: int = 100) -> HardUpdate:
        """Hard copy of the critic into the slow critic every ``interval`` calls of ``step()``."""
        # HardUpdate copies when its counter reaches the interval, then restarts from 0,
        # i.e. on every (interval + 1)-th step.
        return HardUpdate(self, value_network_update_interval=interval - 1)

    def slow_value(self, features: torch.Tensor) -> torch.Tensor:
        """Slow-critic value: differentiable in ``features`` (the actor backprops through the
        bootstrap, as in DreamerV2), never in the slow critic's weights."""
        # functional_call with detached tensors: ``to_module`` would re-wrap them as
        # Parameters that require grad, and the actor's backward would compute weight
        # gradients for the slow critic (about 6% of a behaviour update) only to drop them.
        params = self.target_value_network_params.detach().flatten_keys(".").to_dict()
        return functional_call(self.value_network, params, (features,))

    def targets(self, imagined: TensorDictBase) -> TensorDictBase:
        """Write the lambda-return, the slow value of each state and the step weights."""
        keys = self.tensor_keys
        discount = imagined.get(keys.discount)
        features, next_features = imagined.get(keys.features), imagined.get(keys.next_features)
        # s_0..s_{H-1} and s_1..s_H share H-1 states: one slow-critic pass over s_0..s_H.
        values = self.slow_value(torch.cat([features[:, :1], next_features], 1))
        state_value, next_value = values[:, :-1], values[:, 1:]
        target = lambda_return(imagined.get(keys.reward), next_value, discount, self.lmbda)
        imagined.set(keys.value_target, target)
        imagined.set(keys.state_value, state_value)
        imagined.set(keys.weight, discount_weights(discount))
        return imagined

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        weight = imagined.get(keys.weight)
        value = self.value_network(imagined.get(keys.features).detach())
        target = imagined.get(keys.value_target).detach()
        out = TensorDict(
            loss_value=(weight * 0.5 * (value - target).pow(2)).mean(),
            value=value.detach().mean(),
            value_target=target.mean(),
        )
        if self.penalty is not None:
            penalty = self.penalty(imagined, value)
            if isinstance(penalty, TensorDictBase):
                out.update(penalty.exclude("penalty"))
                penalty = penalty.get("penalty")
            out["loss_value_penalty"] = (weight * penalty).mean()
        return out
