"""Eq. 6 (second term): the min-max value constraint on the target critic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from coworld_trl.modules.keys import require

ConstraintMode = Literal["max", "linear"]


class MinMaxValuePenalty(LossModule):
    """Eq. 6, second term: ``alpha * E[ sum_k w_k max(v(z_k), sg(v'(z_k))) ]`` over imagined target states.

    The source critic ``v'`` scores the target's imagined latents ``z`` (both models have
    identical sizes). Where the source critic is higher the term is constant
    (``sg(v')``) and the target critic gets no extra gradient; where the target critic is
    higher it is pushed down with weight ``alpha``: the target critic is penalised only
    where it exceeds what the source, which has seen online data, believes.

    The penalty holds no critic. It reads, from the imagined TensorDict:

    * ``value``: the target critic's prediction with its graph (:class:`ValueLoss` writes
      it before calling its penalty);
    * ``source_value``: the source critic's value of the same states, treated as a
      constant. Whoever owns the source critic writes it, e.g. with
      :meth:`write_source_value` (``CoWorldAgent`` does, with the active source's
      critic, at every target behaviour update);
    * ``weight``: the discount weights (:meth:`ValueLoss.targets` writes them).

    So the source critic is never a parameter or buffer of the target's losses, and
    choosing another source is choosing which critic writes ``source_value``.
    ``ValueLoss(critic, penalty=...)`` owns the shared names: its ``set_keys(features=...,
    value=..., weight=...)`` reaches the penalty.

    Keyword Args:
        alpha: 1 for DMC, 2 for Meta-World/RoboDesk (Table 7).
        mode: ``"max"`` (Eq. 6) or ``"linear"``: ``alpha * v(z)``, the "w/o Max" ablation.

    Returns:
        TensorDict with ``loss_value_penalty``, and detached ``value_exceeds_source`` (the
        fraction of imagined states where ``v > v'``) and ``source_value`` (its mean).

    Examples:
        >>> penalty = MinMaxValuePenalty(alpha=1.0)
        >>> value_loss = ValueLoss(critic, penalty=penalty)
        >>> imagined = value_loss.targets(imagine(world_model, actor, stoch, deter))
        >>> penalty.write_source_value(imagined, source_critic)
        >>> losses = value_loss(imagined)  # loss_value, loss_value_penalty, value_exceeds_source, ...
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the imagined TensorDict.

        Attributes:
            features: imagined states (read by :meth:`write_source_value`).
            value: the target critic's prediction ``v(z)`` (with its graph).
            source_value: the source critic's ``v'(z)``.
            weight: cumulative discount.
        """

        features: NestedKey = "features"
        value: NestedKey = "value"
        source_value: NestedKey = "source_value"
        weight: NestedKey = "weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(self, *, alpha: float = 1.0, mode: ConstraintMode = "max"):
        super().__init__()
        if mode not in ("max", "linear"):
            raise ValueError(f"mode={mode!r}; use 'max' (Eq. 6) or 'linear' (the w/o Max ablation).")
        self.alpha, self.mode = alpha, mode

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [keys.value, keys.source_value, keys.weight]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_value_penalty", "value_exceeds_source", "source_value"]

    @torch.no_grad()
    def write_source_value(self, imagined: TensorDictBase, source_critic: nn.Module) -> TensorDictBase:
        """``imagined[source_value] = source_critic(imagined[features])``, without gradient."""
        features = require(imagined, self.tensor_keys.features, "MinMaxValuePenalty",
                           "rename it with set_keys(features=...) on the ValueLoss", what="imagined TensorDict")
        imagined.set(self.tensor_keys.source_value, source_critic(features))
        return imagined

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        keys, owner, what = self.tensor_keys, "MinMaxValuePenalty", "imagined TensorDict"
        value = require(imagined, keys.value, owner, "ValueLoss writes it before calling its penalty", what)
        source_value = require(imagined, keys.source_value, owner,
                               "write it with write_source_value(imagined, source_critic)", what).detach()
        weight = require(imagined, keys.weight, owner, "ValueLoss.targets(imagined) writes it", what)
        exceeds = value.detach() > source_value
        penalty = torch.maximum(value, source_value) if self.mode == "max" else value
        return TensorDict(loss_value_penalty=(weight * self.alpha * penalty).mean(),
                          value_exceeds_source=exceeds.float().mean(), source_value=source_value.mean())
