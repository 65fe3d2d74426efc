"""Eq. 5: the source reward head learns source rewards and relabelled target rewards."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from coworld_trl.modules.coworld import check_relabel_weight, relabel_rewards
from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import normal_nll
from coworld_trl.modules.world_model import WorldModel
from coworld_trl.objectives.world_model import FreeNatsPlacement, WorldModelLoss


@dataclass
class EtaSchedule:
    """``eta`` of Eq. 5 as a function of the number of relabelled source updates done.

    Linear decay from ``start`` (step 0) to ``end`` (step ``steps`` and after); the paper:
    1 -> 0.1. :meth:`over_updates` spreads it over a run's N relabelled updates (the first
    uses ``start``, the N-th ``end``). The official code meant ``max(1 - step / 2e5, 0.2)``
    but never advanced its step, so it stayed near 0.98; ``EtaSchedule.constant(0.98)``
    reproduces that behaviour. Both endpoints are exact (no float round-off at ``end``).
    """

    start: float = 1.0
    end: float = 0.1
    steps: int = 200_000

    @classmethod
    def constant(cls, value: float) -> "EtaSchedule":
        return cls(start=value, end=value, steps=1)

    @classmethod
    def over_updates(cls, updates: int, *, start: float = 1.0, end: float = 0.1) -> "EtaSchedule":
        """``start`` at the first of ``updates`` relabelled updates, ``end`` at the last."""
        if updates < 1:
            raise ValueError(f"eta decays over {updates} updates; give a positive number of relabelled updates.")
        return cls(start=start, end=end, steps=max(updates - 1, 1))

    def __post_init__(self):
        if not (0.0 <= self.end <= 1.0 and 0.0 <= self.start <= 1.0) or self.steps < 1:
            raise ValueError(f"EtaSchedule(start={self.start}, end={self.end}, steps={self.steps}): "
                             f"start and end must be in [0, 1] and steps >= 1.")

    def __call__(self, step):
        """``eta`` after ``step`` updates: a float for an int, a tensor (on its device, no host sync) for a tensor."""
        if isinstance(step, torch.Tensor):
            fraction = (step.float() / self.steps).clamp(0.0, 1.0)
            # Interpolate from the nearer endpoint so that both are exact (as torch.lerp does).
            return torch.where(fraction < 0.5, self.start + (self.end - self.start) * fraction,
                               self.end - (self.end - self.start) * (1 - fraction))
        fraction = min(max(step, 0) / self.steps, 1.0)
        if fraction < 0.5:
            return self.start + (self.end - self.start) * fraction
        return self.end - (self.end - self.start) * (1 - fraction)


class MixedRewardLoss(WorldModelLoss):
    """Eq. 5: Eq. 2 for the source world model with the reward term mixed:

    ``L = L_image + L_kl + eta * L_reward(r' ; r_S on B(S)) + (1 - eta) * L_reward(r' ; r~ on B(T))``

    with ``r~`` from :func:`~coworld_trl.modules.relabel_rewards` (Eq. 4) on target
    sequences. The relabelled term trains the source model (its posterior over target
    observations and its reward head). It is a :class:`WorldModelLoss` (the source's own
    terms are computed by it, with the same keys and scales) and is the source agent's
    world-model loss in CoWorld: ``DreamerV2Agent(..., world_model_loss=MixedRewardLoss(...))``;
    :meth:`source_only` gives plain Eq. 2 on a source batch alone (pretraining).

    ``eta`` follows an :class:`EtaSchedule` of the buffer ``eta_step`` (the number of
    relabelled updates done; checkpointed with the loss's ``state_dict``), which
    :meth:`advance` moves on by one after each relabelled update (``CoWorldAgent`` does).

    Args:
        world_model: the source world model.

    Keyword Args:
        k: target-reward weight of the relabelled reward (0.9 DMC, 0.3 Meta-World/RoboDesk).
        eta: :class:`EtaSchedule` (paper: 1 -> 0.1).
        kl_scale, kl_balance, free_nats, free_nats_placement, image_scale, reward_scale,
            discount_scale: those of :class:`WorldModelLoss`.

    Call with a TensorDict holding the ``source`` and ``target`` ``[B, T]`` batches (any
    batch sizes; the source batch receives the latents, the target batch the relabelled
    entries).

    Returns:
        TensorDict with the source's ``loss_image``, ``loss_kl`` (and ``loss_discount``),
        ``loss_reward`` (``eta``-weighted), ``loss_reward_relabelled`` (``(1 - eta)``-weighted),
        ``eta``, ``relabelled_reward`` (mean) and the diagnostics of :class:`WorldModelLoss`.

    Examples:
        >>> loss = MixedRewardLoss(source_world_model, k=0.9, eta=EtaSchedule.over_updates(120_000))
        >>> losses = loss(TensorDict({"source": source_batch, "target": target_batch}))
        >>> sum(v for k, v in losses.items() if k.startswith("loss_")).backward(); loss.advance()
    """

    @dataclass
    class _AcceptedKeys(WorldModelLoss._AcceptedKeys):
        """Keys: those of :class:`WorldModelLoss` (read in both batches) and

        Attributes:
            source, target: the two batches in the loss's input.
            relabelled_reward, source_reward, relabel_mask: written into the target batch
                (see :class:`~coworld_trl.modules.RewardRelabeler`).
        """

        source: NestedKey = "source"
        target: NestedKey = "target"
        relabelled_reward: NestedKey = "relabelled_reward"
        source_reward: NestedKey = "source_reward"
        relabel_mask: NestedKey = "relabel_mask"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    eta_step: torch.Tensor

    def __init__(
        self,
        world_model: WorldModel,
        *,
        k: float = 0.9,
        eta: EtaSchedule | None = None,
        kl_scale: float = 1.0,
        kl_balance: float = 0.8,
        free_nats: float = 1.0,
        free_nats_placement: FreeNatsPlacement = "mean",
        image_scale: float = 1.0,
        reward_scale: float = 1.0,
        discount_scale: float = 1.0,
    ):
        super().__init__(world_model, kl_scale=kl_scale, kl_balance=kl_balance, free_nats=free_nats,
                         free_nats_placement=free_nats_placement, image_scale=image_scale,
                         reward_scale=reward_scale, discount_scale=discount_scale)
        check_relabel_weight(k)
        self.k = k
        self.eta = eta or EtaSchedule()
        device = next(world_model.parameters()).device
        self.register_buffer("eta_step", torch.zeros((), dtype=torch.long, device=device))

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        source = [_join(keys.source, key) for key in super().in_keys]
        target = [_join(keys.target, key) for key in (keys.pixels, keys.action, keys.is_init, keys.reward)]
        return source + target

    @property
    def out_keys(self) -> list[str]:
        return [*super().out_keys, "loss_reward_relabelled", "eta", "relabelled_reward"]

    @torch.no_grad()
    def advance(self, updates: int = 1) -> None:
        """Count ``updates`` more relabelled updates (on the device: no host sync)."""
        self.eta_step.add_(updates)

    def current_eta(self) -> torch.Tensor:
        """``eta`` at :attr:`eta_step` (a 0-d tensor)."""
        return self.eta(self.eta_step)

    def source_only(self, batch: TensorDictBase) -> TensorDict:
        """Eq. 2 on a source batch alone (Eq. 5 without target sequences): the source's loss
        while pretraining and whenever no target batch is given."""
        return super().forward(batch)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys, owner = self.tensor_keys, type(self).__name__
        fix = ("call it on TensorDict({'source': source_batch, 'target': target_batch}) (names: set_keys(source=..., "
               "target=...)); source_only(batch) is Eq. 2 on a source batch alone")
        source = require(tensordict, keys.source, owner, fix, what="input")
        target = require(tensordict, keys.target, owner, fix, what="input")
        eta = self.current_eta()
        out = super().forward(source)
        relabelled, predicted, mask = relabel_rewards(self.world_model, target, k=self.k, reward_key=keys.reward,
                                                      owner=owner)
        target.set(keys.relabelled_reward, relabelled)
        target.set(keys.source_reward, predicted)
        target.set(keys.relabel_mask, mask)
        weights = mask.float()
        count = weights.sum().clamp_min(1)
        nll = normal_nll(predicted, relabelled)
        out["loss_reward"] = eta * out["loss_reward"]
        out["loss_reward_relabelled"] = (1 - eta) * self.reward_scale * (nll * weights).sum() / count
        out["eta"] = eta
        out["relabelled_reward"] = (relabelled * weights).sum() / count
        return out


def _join(prefix: NestedKey, key: NestedKey) -> tuple[str, ...]:
    def as_tuple(k: NestedKey) -> tuple[str, ...]:
        return (k,) if isinstance(k, str) else tuple(k)

    return (*as_tuple(prefix), *as_tuple(key))
