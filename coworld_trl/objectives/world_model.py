"""Eq. 2: the DreamerV2 world-model loss."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import normal_nll, pixels_to_float
from coworld_trl.modules.world_model import WorldModel, previous_step

FreeNatsPlacement = Literal["mean", "step"]


def _mean_normal_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``normal_nll(mean, target, event_dims).mean()`` in one fused reduction.

    ``mean_i sum_e (0.5 (t - m)^2 + 0.5 ln 2 pi) = 0.5 sum (t - m)^2 / n + 0.5 ln(2 pi) E``
    with ``n`` items of ``E`` elements: one pass over the image instead of five
    elementwise ops (and their backward) on the largest tensors of the update.
    """
    event = math.prod(target.shape[target.ndim - event_dims:]) if event_dims else 1
    items = target.numel() // event
    return 0.5 * F.mse_loss(mean, target, reduction="sum") / items + event * (0.5 * math.log(2 * math.pi))


def balanced_kl(
    kl_fn,
    post_stats: torch.Tensor,
    prior_stats: torch.Tensor,
    *,
    balance: float = 0.8,
    free_nats: float = 1.0,
    free_nats_placement: FreeNatsPlacement = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2's balanced KL: ``balance * KL(sg(q) || p) + (1 - balance) * KL(q || sg(p))``.

    Args:
        kl_fn: per-step ``KL(lhs || rhs)`` on stats tensors (``RSSM.kl``).
        post_stats, prior_stats: ``[..., stats_dim]``.

    Keyword Args:
        balance: weight of the prior-training side (0.8 in DreamerV2).
        free_nats: each side is clamped from below at this many nats.
        free_nats_placement: ``"mean"`` clamps after averaging over batch and time
            (DreamerV2's ``free_avg=True`` and the official CoWorld code); ``"step"``
            clamps every step before averaging (DreamerV3's placement).

    Returns:
        ``(loss, kl)``: the balanced, clamped loss and the mean raw KL (a diagnostic).
    """
    dyn = kl_fn(post_stats.detach(), prior_stats)
    rep = kl_fn(post_stats, prior_stats.detach())
    if free_nats_placement == "mean":
        dyn_loss, rep_loss = dyn.mean().clamp_min(free_nats), rep.mean().clamp_min(free_nats)
    elif free_nats_placement == "step":
        dyn_loss, rep_loss = dyn.clamp_min(free_nats).mean(), rep.clamp_min(free_nats).mean()
    else:
        raise ValueError(f"free_nats_placement={free_nats_placement!r} is unknown; use 'mean' or 'step'.")
    return balance * dyn_loss + (1 - balance) * rep_loss, dyn.detach().mean()


_MODEL_KEYS = {"pixels": "obs", "action": "action", "is_init": "is_init", "embedding": "embedding",
               "stoch": "stoch", "deter": "deter", "post_stats": "post_stats", "prior_stats": "prior_stats"}


class WorldModelLoss(LossModule):
    """Eq. 2 of CoWorld (the DreamerV2 world-model objective).

    ``L_M = E[ -ln p(o_t | s_t) - ln p(r_t | s_t) - ln p(gamma_t | s_t) + beta_1 KL_bal(q || p) ]``

    Runs the world model over a ``[B, T]`` TED batch (writing its latents into the
    batch, so the behaviour update can start from them) and returns the loss terms.
    Reward and discount targets are aligned by :func:`previous_step`; rows where the
    state is reset carry no reward target.

    Keys: the world model's keys (observation, action, ``is_init``, and the embedding and
    latents it writes) are the loss's ``pixels``, ``action``, ``is_init``, ``embedding``,
    ``stoch``, ``deter``, ``post_stats``, ``prior_stats``: the loss starts from the
    model's :attr:`~coworld_trl.modules.WorldModel.tensor_keys` and ``set_keys`` writes
    them back to the model, so there is one observation key for the encoder and the
    decoder target. ``reward`` and ``terminated`` are the loss's own.

    Args:
        world_model: the :class:`~coworld_trl.modules.WorldModel` to train.

    Keyword Args:
        kl_scale: ``beta_1`` (1.0).
        kl_balance: prior-side weight of the balanced KL (0.8).
        free_nats: free nats (1.0).
        free_nats_placement: ``"mean"`` (after averaging, DreamerV2) or ``"step"``.
        image_scale, reward_scale, discount_scale: loss scales (reward 2.0 in the
            official code on DMC, 1.0 in the paper).

    Returns:
        TensorDict with ``loss_image``, ``loss_reward``, ``loss_kl`` (and
        ``loss_discount`` when the model has a discount head), plus detached
        ``kl``, ``post_entropy``, ``prior_entropy``.

    Examples:
        >>> from coworld_trl.modules import make_world_model
        >>> loss = WorldModelLoss(make_world_model(action_dim=6))
        >>> loss.set_keys(pixels="observation")  # the encoder now reads "observation" too
        >>> losses = loss(batch)                 # batch: TensorDict [B, T]
        >>> sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from and written to the batch.

        Attributes:
            pixels: observation (the world model's ``obs`` key: the encoder input and the
                decoder target).
            action: the TED action ``a_t``.
            is_init: episode-start flag.
            reward: reward that followed row t (TED ``("next", "reward")``).
            terminated: termination that followed row t (read with a discount head).
            embedding, stoch, deter, post_stats, prior_stats: written by the world model.
        """

        pixels: NestedKey = "pixels"
        action: NestedKey = "action"
        is_init: NestedKey = "is_init"
        reward: NestedKey = ("next", "reward")
        terminated: NestedKey = ("next", "terminated")
        embedding: NestedKey = "embedding"
        stoch: NestedKey = "stoch"
        deter: NestedKey = "deter"
        post_stats: NestedKey = "post_stats"
        prior_stats: NestedKey = "prior_stats"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        world_model: WorldModel,
        *,
        kl_scale: float = 1.0,
        kl_balance: float = 0.8,
        free_nats: float = 1.0,
        free_nats_placement: FreeNatsPlacement = "mean",
        image_scale: float = 1.0,
        reward_scale: float = 1.0,
        discount_scale: float = 1.0,
    ):
        super().__init__()
        if free_nats_placement not in ("mean", "step"):
            raise ValueError(f"free_nats_placement={free_nats_placement!r} is unknown; use 'mean' or 'step'.")
        self.world_model = world_model
        self.kl_scale, self.kl_balance = kl_scale, kl_balance
        self.free_nats, self.free_nats_placement = free_nats, free_nats_placement
        self.image_scale, self.reward_scale, self.discount_scale = image_scale, reward_scale, discount_scale
        model_keys = world_model.tensor_keys
        for name, model_name in _MODEL_KEYS.items():  # the model's keys are the loss's
            setattr(self.tensor_keys, name, getattr(model_keys, model_name))

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # set_keys calls this: the world model reads and writes under the loss's names.
        self.world_model.set_keys(**{model_name: getattr(self.tensor_keys, name)
                                     for name, model_name in _MODEL_KEYS.items() if name in kwargs})

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        extra = [keys.terminated] if self.world_model.discount_head is not None else []
        return [keys.pixels, keys.action, keys.is_init, keys.reward, *extra]

    @property
    def out_keys(self) -> list[str]:
        extra = ["loss_discount"] if self.world_model.discount_head is not None else []
        return ["loss_image", "loss_reward", "loss_kl", *extra, "kl", "post_entropy", "prior_entropy"]

    def _fix(self, name: str) -> str:
        return f"rename it with set_keys({name}=...)"

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys, owner = self.tensor_keys, type(self).__name__
        model = self.world_model
        # Missing inputs are named here, by the loss, before the model runs.
        for name in ("pixels", "action", "is_init", "reward"):
            require(tensordict, getattr(keys, name), owner, self._fix(name))
        model(tensordict)
        features = model.features(tensordict)
        is_first = model.is_first(tensordict)

        obs = tensordict.get(keys.pixels)
        target = pixels_to_float(obs) if obs.dtype == torch.uint8 else obs
        loss_image = _mean_normal_nll(model.decoder(features), target, event_dims=target.ndim - 2)

        has_target = (~is_first).float()
        reward = previous_step(tensordict.get(keys.reward).reshape(is_first.shape), is_first)
        reward_nll = normal_nll(model.reward_head(features), reward)
        loss_reward = (reward_nll * has_target).sum() / has_target.sum().clamp_min(1)

        post_stats, prior_stats = tensordict.get(keys.post_stats), tensordict.get(keys.prior_stats)
        loss_kl, kl = balanced_kl(
            model.rssm.kl, post_stats, prior_stats,
            balance=self.kl_balance, free_nats=self.free_nats, free_nats_placement=self.free_nats_placement,
        )
        out = TensorDict(
            loss_image=self.image_scale * loss_image,
            loss_reward=self.reward_scale * loss_reward,
            loss_kl=self.kl_scale * loss_kl,
            kl=kl,
            post_entropy=model.rssm.entropy(post_stats).mean().detach(),
            prior_entropy=model.rssm.entropy(prior_stats).mean().detach(),
        )
        if model.discount_head is not None:
            terminated = require(tensordict, keys.terminated, owner, self._fix("terminated"))
            terminated = terminated.reshape(is_first.shape).float()
            continues = 1.0 - previous_step(terminated, is_first)
            out["loss_discount"] = self.discount_scale * torch.nn.functional.binary_cross_entropy_with_logits(
                model.discount_head(features), continues
            )
        return out
