"""Eq. 5: the source reward head learns source rewards and relabelled target rewards."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule

from coworld_trl.modules.coworld import RewardRelabeler
from coworld_trl.modules.networks import normal_nll
from coworld_trl.objectives.world_model import WorldModelLoss


@dataclass
class EtaSchedule:
    """``eta`` of Eq. 5 as a function of the source update count.

    Linear decay from ``start`` to ``end`` over ``steps`` updates, then ``end`` (the
    paper: 1 -> 0.1). The official code meant ``max(1 - step / 2e5, 0.2)`` but never
    advanced its step, so it stayed near 0.98; ``EtaSchedule.constant(0.98)`` reproduces
    that behaviour.
    """

    start: float = 1.0
    end: float = 0.1
    steps: int = 200_000

    @classmethod
    def constant(cls, value: float) -> "EtaSchedule":
        return cls(start=value, end=value, steps=1)

    def __post_init__(self):
        if not (0.0 <= self.end <= 1.0 and 0.0 <= self.start <= 1.0) or self.steps < 1:
            raise ValueError(f"EtaSchedule(start={self.start}, end={self.end}, steps={self.steps}): "
                             f"start and end must be in [0, 1] and steps >= 1.")

    def __call__(self, step: int) -> float:
        fraction = min(max(step, 0) / self.steps, 1.0)
        return self.start + (self.end - self.start) * fraction


class MixedRewardLoss(LossModule):
    """Eq. 2 for the source world model with the reward term of Eq. 5:

    ``L = L_image + L_kl + eta * L_reward(r' ; r_S on B(S)) + (1 - eta) * L_reward(r' ; r~ on B(T))``

    with ``r~`` from :class:`RewardRelabeler` (Eq. 4) on target sequences. The relabelled
    term trains the source model (its posterior over target observations and its reward
    head); the source's own terms are those of its :class:`WorldModelLoss`.

    Args:
        world_model_loss: the source's Eq. 2 loss.
        relabeler: the Eq. 4 relabeler on the same source world model.

    Keyword Args:
        eta: :class:`EtaSchedule` (paper: 1 -> 0.1).

    Call with a TensorDict holding ``source`` and ``target`` ``[B, T]`` batches and
    ``step`` (the source update count, for ``eta``).

    Returns:
        TensorDict with the source's ``loss_image``, ``loss_kl`` (and ``loss_discount``),
        ``loss_reward`` (``eta``-weighted), ``loss_reward_relabelled`` (``(1 - eta)``-weighted),
        ``eta`` and diagnostics.
    """

    @dataclass
    class _AcceptedKeys:
        """Attributes:
            source, target: the two batches.
        """

        source: str = "source"
        target: str = "target"

    default_keys = _AcceptedKeys

    def __init__(self, world_model_loss: WorldModelLoss, relabeler: RewardRelabeler, *, eta: EtaSchedule | None = None):
        super().__init__()
        if relabeler.source is not world_model_loss.world_model:
            raise ValueError("the relabeler must run the same source world model that world_model_loss trains.")
        self.world_model_loss, self.relabeler = world_model_loss, relabeler
        self.eta = eta or EtaSchedule()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase, step: int = 0) -> TensorDict:
        eta = self.eta(step)
        out = self.world_model_loss(tensordict.get(self.tensor_keys.source))
        target = self.relabeler(tensordict.get(self.tensor_keys.target))
        mask = target.get("relabel_mask").float()
        nll = normal_nll(target.get("source_reward"), target.get("relabelled_reward"))
        relabelled = (nll * mask).sum() / mask.sum().clamp_min(1)
        out["loss_reward"] = eta * out["loss_reward"]
        out["loss_reward_relabelled"] = (1 - eta) * self.world_model_loss.reward_scale * relabelled
        out["eta"] = torch.tensor(eta)
        out["relabelled_reward"] = (target.get("relabelled_reward") * mask).sum() / mask.sum().clamp_min(1)
        return out
