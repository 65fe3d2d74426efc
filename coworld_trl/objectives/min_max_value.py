"""Eq. 6 (second term): the min-max value constraint on the target critic."""
from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

ConstraintMode = Literal["max", "linear"]


class MinMaxValuePenalty(nn.Module):
    """``alpha * max(v(z), sg(v'(z)))`` per imagined target state: a :class:`ValueLoss` penalty.

    The source critic ``v'`` scores the target's imagined latents ``z`` (both models have
    identical sizes). Where the source critic is higher the term is constant
    (``sg(v')``) and the target critic gets no extra gradient; where the target critic is
    higher it is pushed down with weight ``alpha``: the target critic is penalised only
    where it exceeds what the source, which has seen online data, believes.

    Args:
        source_critic: ``features -> value`` (the source's online critic, as in the
            official code).

    Keyword Args:
        alpha: 1 for DMC, 2 for Meta-World/RoboDesk (Table 7).
        mode: ``"max"`` (Eq. 6) or ``"linear"``: ``alpha * v(z)``, the "w/o Max" ablation.
        features_key: imagined states in the ``imagine`` TensorDict.

    Usage: ``ValueLoss(critic, penalty=MinMaxValuePenalty(source_critic, alpha=1.0))``.
    Returns a TensorDict with ``penalty`` ``[N, H]`` and ``value_exceeds_source`` (the
    fraction of imagined states where ``v > v'``).
    """

    def __init__(self, source_critic: nn.Module, *, alpha: float = 1.0, mode: ConstraintMode = "max",
                 features_key: str = "features"):
        super().__init__()
        if mode not in ("max", "linear"):
            raise ValueError(f"mode={mode!r}; use 'max' (Eq. 6) or 'linear' (the w/o Max ablation).")
        # Held outside this module's parameters: the target's optimiser must not see it.
        self.__dict__["source_critic"] = source_critic
        self.alpha, self.mode, self.features_key = alpha, mode, features_key

    def forward(self, imagined: TensorDictBase, value: torch.Tensor) -> TensorDict:
        with torch.no_grad():
            source_value = self.source_critic(imagined.get(self.features_key).detach())
        exceeds = value.detach() > source_value
        penalty = torch.maximum(value, source_value) if self.mode == "max" else value
        return TensorDict(penalty=self.alpha * penalty, value_exceeds_source=exceeds.float().mean(),
                          source_value=source_value.mean())
