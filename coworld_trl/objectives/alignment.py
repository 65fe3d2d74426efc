"""Eq. 3 (second term): state alignment of the target encoder to the source encoder, and
Eq. 12: choosing among several sources by the same divergence."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from coworld_trl.modules.coworld import AlignmentHead
from coworld_trl.modules.keys import require
from coworld_trl.modules.world_model import WorldModel

AlignmentReduction = Literal["sum_time", "mean"]


def embedding_kl(source_log_probs: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_src || p_tgt)`` per step, over the last (embedding) dim."""
    return (source_log_probs.exp() * (source_log_probs - target_log_probs)).sum(-1)


class StateAlignmentLoss(LossModule):
    """Eq. 3, second term: ``beta2 * KL[ sg(g(e'(o_T))) || g(e(o_T)) ]``.

    ``g`` is the softmax :class:`~coworld_trl.modules.AlignmentHead`, ``e'`` the source
    encoder (the teacher) and ``e`` the target encoder. The loss holds no network: it
    reads the target embedding ``embedding`` (with its graph: the target world model
    writes it when it filters the batch, as :meth:`DreamerV2Agent.update_world_model`
    does before calling extra losses) and the source embedding ``source_embedding`` of the
    same observations (treated as a constant; :meth:`write_source_embedding` computes it
    without gradient). So only the target encoder receives gradients, and neither model's
    tensors are in this loss's parameters or ``state_dict``.

    Keyword Args:
        beta: ``beta2`` (1.5 for DMC, 1.0 for Meta-World/RoboDesk in Table 7).
        reduction: ``"sum_time"`` sums the per-step KL over time and averages over the
            batch, as the official code does, which is the weighting the paper's ``beta2``
            values were tuned with (about ``T`` times a per-step mean); ``"mean"``
            averages over batch and time.

    Returns:
        TensorDict with ``loss_alignment`` and the detached per-step mean ``alignment_kl``.

    Examples:
        >>> alignment = StateAlignmentLoss(beta=1.5)
        >>> target_world_model(batch)                       # writes "embedding"
        >>> alignment.write_source_embedding(batch, source_world_model)
        >>> alignment(batch)["loss_alignment"].backward()  # reaches the target encoder only
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the target batch.

        Attributes:
            pixels: target observations (read by :meth:`write_source_embedding` only).
            embedding: the target encoder's output (with its graph).
            source_embedding: the source encoder's output on the same observations.
        """

        pixels: NestedKey = "pixels"
        embedding: NestedKey = "embedding"
        source_embedding: NestedKey = "source_embedding"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(self, *, beta: float = 1.5, reduction: AlignmentReduction = "sum_time"):
        super().__init__()
        if reduction not in ("sum_time", "mean"):
            raise ValueError(f"reduction={reduction!r}; use 'sum_time' (official weighting) or 'mean'.")
        self.beta, self.reduction = beta, reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.embedding, self.tensor_keys.source_embedding]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_alignment", "alignment_kl"]

    @torch.no_grad()
    def write_source_embedding(self, batch: TensorDictBase, source: WorldModel) -> TensorDictBase:
        """Encode ``batch[pixels]`` with the source world model (no gradient) into ``source_embedding``."""
        pixels = require(batch, self.tensor_keys.pixels, "StateAlignmentLoss", "rename it with set_keys(pixels=...)")
        batch.set(self.tensor_keys.source_embedding, source.embed(pixels))
        return batch

    def forward(self, batch: TensorDictBase) -> TensorDict:
        keys, owner = self.tensor_keys, "StateAlignmentLoss"
        embedding = require(batch, keys.embedding, owner,
                            "run the target world model on the batch first (it writes it), or set_keys(embedding=...)")
        source_embedding = require(batch, keys.source_embedding, owner,
                                   "write it with write_source_embedding(batch, source_world_model), "
                                   "or set_keys(source_embedding=...)")
        if source_embedding.shape != embedding.shape:
            raise ValueError(f"{owner}: {keys.source_embedding!r} has shape {tuple(source_embedding.shape)} but "
                             f"{keys.embedding!r} has {tuple(embedding.shape)}; source and target world models differ "
                             f"in size (CoWorld needs identical model configs for both agents).")
        source_log_probs = AlignmentHead.log_probs(source_embedding.detach())
        kl = embedding_kl(source_log_probs, AlignmentHead.log_probs(embedding))  # [B, T]
        loss = kl.sum(-1).mean() if self.reduction == "sum_time" else kl.mean()
        return TensorDict(loss_alignment=self.beta * loss, alignment_kl=kl.detach().mean())


@torch.no_grad()
def select_source(target: WorldModel, sources: Sequence[WorldModel], pixels: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Eq. 12: the source whose softmax embedding of the target observations is closest
    to the target's, ``argmin_i KL[g(e_i(o_T)) || g(e(o_T))]`` (one-hot weights omega).

    Returns ``(index, kls)`` with the mean KL of every candidate (``index`` is a Python
    int: choosing a source is a host decision, made once per offline phase).
    """
    target_log_probs = AlignmentHead.log_probs(target.embed(pixels))
    kls = torch.stack([embedding_kl(AlignmentHead.log_probs(s.embed(pixels)), target_log_probs).mean()
                       for s in sources])
    return int(kls.argmin()), kls
