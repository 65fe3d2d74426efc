"""The DreamerV2 critic loss (the first term of Eq. 6) with a slow target critic and a penalty hook."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictParams
from tensordict.utils import NestedKey
from torch import nn
from torch.func import functional_call
from torchrl.objectives import HardUpdate, LossModule

from coworld_trl.modules.keys import require
from coworld_trl.objectives.imagination import discount_weights, lambda_return


class ValueLoss(LossModule):
    """Critic regression to the lambda-return (DreamerV2 Eq. 5; the first term of CoWorld Eq. 6).

    ``L_v = E[ sum_k w_k 0.5 (v(s_k) - sg(R_k))^2 ] (+ penalty)``, where ``R_k`` is the
    lambda-return bootstrapped with a slow copy of the critic and ``w_k`` the cumulative
    discount. Use :meth:`make_target_updater` for the slow critic's hard copy.

    ``penalty`` is the extension point: a LossModule (or any callable) called on the
    imagined TensorDict once this loss has written its prediction ``v(s_k)`` (with its
    graph) under ``value``; every entry it returns joins the output (its ``loss_*`` terms
    are optimised with the critic). CoWorld's min-max constraint, Eq. 6
    (:class:`MinMaxValuePenalty`), is one. The names both read (``features``, ``value``,
    ``weight``) are this loss's: ``set_keys`` forwards them to the penalty.

    Call :meth:`targets` first (it writes ``value_target``, ``state_value`` and
    ``weight`` into the imagined TensorDict; the target keeps its graph for the actor's
    dynamics backprop), then the actor loss, then this loss.

    Args:
        critic: ``features -> value`` module.

    Keyword Args:
        lmbda: lambda of the return (0.95).
        penalty: optional penalty LossModule.

    Returns:
        TensorDict with ``loss_value`` and detached ``value``, ``value_target`` (means),
        plus the penalty's entries.

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
            value: the critic's prediction, written by :meth:`forward` for the penalty.
        """

        features: NestedKey = "features"
        next_features: NestedKey = ("next", "features")
        reward: NestedKey = ("next", "reward")
        discount: NestedKey = ("next", "discount")
        value_target: NestedKey = "value_target"
        state_value: NestedKey = "state_value"
        weight: NestedKey = "weight"
        value: NestedKey = "value"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    _SHARED_WITH_PENALTY = ("features", "value", "weight")

    def __init__(self, critic: nn.Module, *, lmbda: float = 0.95, penalty: nn.Module | None = None):
        super().__init__()
        self.convert_to_functional(critic, "value_network", create_target_params=True)
        self.lmbda = lmbda
        self.penalty = penalty
        self._forward_value_estimator_keys(**{name: None for name in self._SHARED_WITH_PENALTY})

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # The penalty reads entries this loss writes or reads: one name for both.
        penalty_keys = getattr(self.penalty, "tensor_keys", None)
        if penalty_keys is None:
            return
        shared = {name: getattr(self.tensor_keys, name) for name in self._SHARED_WITH_PENALTY
                  if name in kwargs and hasattr(penalty_keys, name)}
        if shared:
            self.penalty.set_keys(**shared)

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        own = [keys.features, keys.value_target, keys.weight]
        penalty = [key for key in getattr(self.penalty, "in_keys", ()) if key != keys.value and key not in own]
        return own + penalty

    @property
    def out_keys(self) -> list[str]:
        return ["loss_value", "value", "value_target", *getattr(self.penalty, "out_keys", ())]

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

    def _read(self, imagined: TensorDictBase, name: str, fix: str | None = None) -> torch.Tensor:
        return require(imagined, getattr(self.tensor_keys, name), "ValueLoss",
                       fix or f"rename it with set_keys({name}=...)", what="imagined TensorDict")

    def targets(self, imagined: TensorDictBase) -> TensorDictBase:
        """Write the lambda-return, the slow value of each state and the step weights."""
        keys = self.tensor_keys
        discount = self._read(imagined, "discount")
        features, next_features = self._read(imagined, "features"), self._read(imagined, "next_features")
        # s_0..s_{H-1} and s_1..s_H share H-1 states: one slow-critic pass over s_0..s_H.
        values = self.slow_value(torch.cat([features[:, :1], next_features], 1))
        state_value, next_value = values[:, :-1], values[:, 1:]
        target = lambda_return(self._read(imagined, "reward"), next_value, discount, self.lmbda)
        imagined.set(keys.value_target, target)
        imagined.set(keys.state_value, state_value)
        imagined.set(keys.weight, discount_weights(discount))
        return imagined

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        written = "ValueLoss.targets(imagined) writes it"
        weight = self._read(imagined, "weight", written)
        value = self.value_network(self._read(imagined, "features").detach())
        target = self._read(imagined, "value_target", written).detach()
        out = TensorDict(
            loss_value=(weight * 0.5 * (value - target).pow(2)).mean(),
            value=value.detach().mean(),
            value_target=target.mean(),
        )
        if self.penalty is not None:
            imagined.set(self.tensor_keys.value, value)
            out.update(self.penalty(imagined))
        return out
