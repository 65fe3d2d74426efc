"""Eq. 3 (second term): state alignment of the target encoder to the source encoder, and
Eq. 12: choosing among several sources by the same divergence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule

from coworld_trl.modules.coworld import AlignmentHead, check_same_latent_size
from coworld_trl.modules.world_model import WorldModel

AlignmentReduction = Literal["sum_time", "mean"]


def embedding_kl(source_log_probs: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_src || p_tgt)`` per step, over the last (embedding) dim."""
    return (source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(-1)


class StateAlignmentLoss(LossModule):
    """Eq. 3, second term: ``beta2 * KL[ sg(g(e'(o_T))) || g(e(o_T)) ]``.

    ``g`` is the softmax :class:`AlignmentHead`, ``e'`` the source encoder (run without
    gradient: it is the teacher) and ``e`` the target encoder; only the target encoder
    receives gradients. The target embedding is read from the batch when the target world
    model has already written it (``embedding``, as :meth:`DreamerV2Agent.update_world_model`
    leaves it), so the target encoder runs once.

    Args:
        target, source: the two world models (identical sizes).

    Keyword Args:
        beta: ``beta2`` (1.5 for DMC, 1.0 for Meta-World/RoboDesk in Table 7).
        reduction: ``"sum_time"`` sums the per-step KL over time and averages over the
            batch, as the official code does, which is the weighting the paper's ``beta2``
            values were tuned with (about ``T`` times a per-step mean); ``"mean"``
            averages over batch and time.

    Returns:
        TensorDict with ``loss_alignment`` and the detached per-step mean ``alignment_kl``.
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the target batch.

        Attributes:
            pixels: target observations.
            embedding: the target encoder's output, if already computed.
        """

        pixels: str = "pixels"
        embedding: str = "embedding"

    default_keys = _AcceptedKeys

    def __init__(self, target: WorldModel, source: WorldModel, *, beta: float = 1.5,
                 reduction: AlignmentReduction = "sum_time"):
        super().__init__()
        check_same_latent_size(source, target)
        if reduction not in ("sum_time", "mean"):
            raise ValueError(f"reduction={reduction!r}; use 'sum_time' (official weighting) or 'mean'.")
        self.target_encoder, self.source_encoder = target.encoder, source.encoder
        self.beta, self.reduction = beta, reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        pixels = batch.get(keys.pixels)
        embedding = batch.get(keys.embedding, None)
        if embedding is None:
            embedding = self.target_encoder(pixels)
        with torch.no_grad():
            source_log_probs = AlignmentHead.log_probs(self.source_encoder(pixels))
        kl = embedding_kl(source_log_probs, AlignmentHead.log_probs(embedding))  # [B, T]
        loss = kl.sum(-1).mean() if self.reduction == "sum_time" else kl.mean()
        return TensorDict(loss_alignment=self.beta * loss, alignment_kl=kl.detach().mean())


@torch.no_grad()
def select_source(target: WorldModel, sources: Sequence[WorldModel], pixels: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Eq. 12: the source whose softmax embedding of the target observations is closest
    to the target's, ``argmin_i KL[g(e_i(o_T)) || g(e(o_T))]`` (one-hot weights omega).

    Returns ``(index, kls)`` with the mean KL of every candidate.
    """
    target_log_probs = AlignmentHead.log_probs(target.encoder(pixels))
    kls = torch.stack([embedding_kl(AlignmentHead.log_probs(s.encoder(pixels)), target_log_probs).mean()
                       for s in sources])
    return int(kls.argmin()), kls
