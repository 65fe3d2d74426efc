"""Offline DV2's reward penalty (Lu et al. 2023, V-D4RL): imagined rewards minus the
disagreement of an ensemble of prior heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from coworld_trl.modules.keys import require
from coworld_trl.modules.rssm import RSSM, LatentSpec

UncertaintyKind = Literal["meandis", "log_prob_ens", "mixstd_mean"]
UNCERTAINTY_KINDS = ("meandis", "log_prob_ens", "mixstd_mean")


class RewardUncertaintyPenalty(LossModule):
    """Offline DV2's penalised reward ``r_pen = r_hat - lmbda * u`` on imagined trajectories.

    ``u`` is the disagreement of the RSSM's ``E`` prior heads at each imagined next state
    (``RSSM(ensemble=E)``; imagination writes all heads' stats under ``ensemble_stats``,
    ``[N, H, E, stats]``). Kinds, as ``compute_penalty`` in V-D4RL's
    ``offlinedv2/dreamerv2/agent.py``:

    * ``"meandis"`` (default; the V-D4RL README's command): ``m_e`` each head's mean (the
      class probabilities ``stoch x classes`` for discrete latents, the mean for Gaussian
      ones), ``m_bar = mean_e m_e``, ``u = mean_e ||m_e - m_bar||_F`` over the latent dims.
      Zero when the heads agree. (On Gaussian latents the reference's norm over the last
      two axes also spans the batch; here it is per state, as for discrete latents.)
    * ``"log_prob_ens"``: ``u = std_e ln p_e(z_{k+1})`` (population std over heads of each
      head's log-likelihood of the sampled next latent, read from ``next_features``). Zero
      when the heads agree.
    * ``"mixstd_mean"``: the mean over latent dims of the standard deviation of the uniform
      mixture of the heads, ``sqrt(mean_e(var_e + m_e^2) - m_bar^2)``. Not a pure
      disagreement: with agreeing heads it is each head's own std, and it grows with their
      spread. (The reference also averages over the batch axis for Gaussian latents; here
      per state.)

    Called on the imagined TensorDict BEFORE the value targets (``ValueLoss.targets``): it
    replaces ``reward`` by ``r_pen`` in place and keeps ``r_hat`` under ``raw_reward`` (a
    second call starts again from ``raw_reward``, so the penalty is never applied twice).
    ``u`` keeps its graph through the imagined states, so with dynamics backprop the actor
    is also pushed away from disagreement, as in the reference (whose penalty is computed
    inside the actor's gradient tape); the world model is held out of imagination and gets
    no gradient. No ``loss_*`` term: it returns detached diagnostics only.

    ``lmbda``: 10 in the V-D4RL README's command (``--offline_lmbd 10``), the default here;
    the reference's ``configs.yaml`` default is 5 (``offline_lmbd``). ``lmbda = 0`` leaves the
    rewards unchanged.

    The penalty reads the latent kind and sizes (:class:`~coworld_trl.modules.LatentSpec`),
    never the RSSM's weights: give ``rssm`` (an RSSM, a world model or a ``LatentSpec``), or
    let :class:`~coworld_trl.agents.DreamerV2Agent` set it from its world model.

    Args:
        rssm: the RSSM (or a world model holding it, or its ``latent_spec``) whose stats
            are read; optional (see above).

    Keyword Args:
        kind: ``"meandis"``, ``"log_prob_ens"`` or ``"mixstd_mean"``.
        lmbda: penalty weight (10).

    Returns:
        TensorDict with detached ``uncertainty`` (mean ``u``) and ``reward_penalty`` (mean
        ``lmbda * u``). Writes ``reward`` (penalised), ``raw_reward`` and ``uncertainty``
        (per step, ``[N, H]``) into the imagined TensorDict.

    Examples:
        >>> world_model = make_world_model(action_dim=6, ensemble=7)
        >>> penalty = RewardUncertaintyPenalty(world_model, kind="meandis", lmbda=10.0)
        >>> imagined = imagine(world_model, actor, stoch, deter, horizon=5)
        >>> penalty(imagined)                     # uncertainty, reward_penalty
        >>> imagined = value_loss.targets(imagined)  # lambda-returns of the penalised rewards
    """

    @dataclass
    class _AcceptedKeys:
        """Keys of the imagined TensorDict.

        Attributes:
            ensemble_stats: every prior head's stats at ``s_{k+1}`` (``imagine`` writes it).
            next_features: ``s_{k+1}`` (``log_prob_ens`` reads the sampled latent from it).
            reward: the imagined reward, replaced by the penalised one.
            raw_reward: where the unpenalised reward is kept.
            uncertainty: where the per-step ``u`` is written.
        """

        ensemble_stats: NestedKey = ("next", "ensemble_stats")
        next_features: NestedKey = ("next", "features")
        reward: NestedKey = ("next", "reward")
        raw_reward: NestedKey = ("next", "raw_reward")
        uncertainty: NestedKey = ("next", "uncertainty")

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(self, rssm: RSSM | LatentSpec | None = None, *, kind: UncertaintyKind = "meandis",
                 lmbda: float = 10.0):
        super().__init__()
        if kind not in UNCERTAINTY_KINDS:
            raise ValueError(f"kind={kind!r}; use one of {', '.join(UNCERTAINTY_KINDS)} (V-D4RL's penalty types).")
        if lmbda < 0:
            raise ValueError(f"lmbda={lmbda} is negative; the penalty lowers rewards: use lmbda >= 0.")
        self.kind, self.lmbda = kind, lmbda
        self.latent_spec: LatentSpec | None = None
        if rssm is not None:
            self.set_latent(rssm)

    def set_latent(self, rssm) -> "RewardUncertaintyPenalty":
        """Read stats as ``rssm``'s latents (an RSSM, a world model or a ``LatentSpec``)."""
        rssm = getattr(rssm, "rssm", rssm)
        spec = rssm if isinstance(rssm, LatentSpec) else getattr(rssm, "latent_spec", None)
        if not isinstance(spec, LatentSpec):
            raise TypeError(f"RewardUncertaintyPenalty.set_latent takes an RSSM, a world model or a LatentSpec, "
                            f"got {type(rssm).__name__}.")
        self.latent_spec = spec
        return self

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        extra = [keys.next_features] if self.kind == "log_prob_ens" else []
        return [keys.ensemble_stats, keys.reward, *extra]

    @property
    def out_keys(self) -> list[str]:
        return ["uncertainty", "reward_penalty"]

    def _spec(self) -> LatentSpec:
        if self.latent_spec is None:
            raise ValueError("RewardUncertaintyPenalty does not know the latent kind; build it with "
                             "RewardUncertaintyPenalty(rssm, ...) or call set_latent(rssm) (DreamerV2Agent does).")
        return self.latent_spec

    def uncertainty(self, ensemble_stats: torch.Tensor, next_stoch: torch.Tensor | None = None) -> torch.Tensor:
        """``u`` from ``ensemble_stats [..., E, stats]`` (and, for ``log_prob_ens``, the
        sampled latents ``next_stoch [..., stoch_dim]``): one value per state ``[...]``."""
        spec = self._spec()
        if self.kind == "log_prob_ens":
            if next_stoch is None:
                raise ValueError("kind='log_prob_ens' needs the sampled next latents (next_stoch).")
            log_prob = spec.log_prob(ensemble_stats, next_stoch.unsqueeze(-2))
            return log_prob.std(-1, correction=0)  # tf.math.reduce_std: the population std
        mean = spec.mean(ensemble_stats)
        mean_bar = mean.mean(-2, keepdim=True)
        if self.kind == "meandis":
            # ||.||_F over (stoch, classes) is the 2-norm of the flattened probabilities.
            return torch.linalg.vector_norm(mean - mean_bar, dim=-1).mean(-1)
        second_moment = (spec.variance(ensemble_stats) + mean.pow(2)).mean(-2)
        variance = (second_moment - mean_bar.squeeze(-2).pow(2)).clamp_min(1e-12)  # round-off below 0; sqrt'(0)
        return variance.sqrt().mean(-1)

    def forward(self, imagined: TensorDictBase) -> TensorDict:
        keys, owner, what = self.tensor_keys, type(self).__name__, "imagined TensorDict"
        stats = require(imagined, keys.ensemble_stats, owner,
                        "imagine() writes it when the RSSM has prior heads: build the world model with ensemble > 0 "
                        "(ModelConfig.ensemble, 7 in Offline DV2), or set_keys(ensemble_stats=...)", what)
        raw = imagined.get(keys.raw_reward, None)
        if raw is None:
            raw = require(imagined, keys.reward, owner, "rename it with set_keys(reward=...)", what)
        next_stoch = None
        if self.kind == "log_prob_ens":
            features = require(imagined, keys.next_features, owner, "rename it with set_keys(next_features=...)", what)
            next_stoch = features[..., : self._spec().stoch_dim]  # features = cat(stoch, deter)
        u = self.uncertainty(stats, next_stoch).to(raw.dtype).reshape(raw.shape)
        penalty = self.lmbda * u
        imagined.set(keys.raw_reward, raw)
        imagined.set(keys.reward, raw - penalty)
        imagined.set(keys.uncertainty, u)
        return TensorDict(uncertainty=u.detach().mean(), reward_penalty=penalty.detach().mean())
