"""DreamerV2's recurrent state-space model (RSSM) with discrete or Gaussian latents.

TorchRL ships RSSM cells (``RSSMPriorV3``/``RSSMPosteriorV3`` for DreamerV3 and
``RSSMPrior``/``RSSMPosterior`` for Dreamer v1), but both hard-code their activations
(SiLU / an extra prior layer) and use a plain ``GRUCell``. DreamerV2 needs ELU, a
layer-normalised GRU with an update-gate bias of -1 and the ``2*sigmoid(x/2) + min_std``
Gaussian scale, so the cell is written here. Everything around it (losses, value
estimates, target networks, buffers) is TorchRL's.

A latent state is the pair ``(stoch, deter)``; ``features = cat(stoch, deter)`` is
what every head reads. Two RSSMs built with the same ``latent``, ``stoch``,
``classes`` and ``deter`` produce features of the same size, so one model's heads can
score the other's latents (CoWorld's source critic reads target latents).

Distribution parameters travel as one flat "stats" tensor per step:
discrete latents store logits ``[..., stoch * classes]``; Gaussian latents store
``cat(mean, std)`` ``[..., 2 * stoch]``. :meth:`RSSM.kl` turns two stats tensors into a
per-step KL divergence.

Offline DV2 (Lu et al. 2023, V-D4RL) replaces the single prior head by an ensemble of
``ensemble`` heads (``RSSM(..., ensemble=7)``); see :class:`RSSM` for how they are trained
and :meth:`RSSM.ensemble_stats` for what the reward penalty reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

LatentKind = Literal["discrete", "gaussian"]


class GRUCell(nn.Module):
    """DreamerV2's GRU cell: one fused linear over ``[input, state]``.

    ``reset, cand, update = split(LN(W [x, h]))``; ``cand = tanh(sigmoid(reset) * cand)``;
    ``update = sigmoid(update + update_bias)``; ``h' = update * cand + (1 - update) * h``.

    Args:
        input_size: size of ``x``.
        hidden_size: size of ``h``.

    Keyword Args:
        norm: apply LayerNorm to the fused gates (DreamerV2 default, and the official
            CoWorld code on DMC); ``False`` gives the plain GRU used on Meta-World.
        update_bias: added to the update gate before the sigmoid; -1 keeps the state.
    """

    def __init__(self, input_size: int, hidden_size: int, *, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.update_bias = update_bias
        self.linear = nn.Linear(input_size + hidden_size, 3 * hidden_size, bias=not norm)
        self.norm = nn.LayerNorm(3 * hidden_size, eps=1e-3) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gates = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, cand, update = gates.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


def straight_through_one_hot(logits: torch.Tensor) -> torch.Tensor:
    """Sample one-hot vectors from ``logits [..., classes]`` with straight-through gradients."""
    probs = logits.softmax(-1)
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])
    one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()


@dataclass(frozen=True)
class LatentSpec:
    """What a stats tensor means: the latent kind and sizes of an :class:`RSSM`.

    Lets code outside the RSSM (e.g. the reward-uncertainty penalty) read distributions
    from stats tensors without holding the RSSM's weights (``rssm.latent_spec``).
    """

    latent: LatentKind = "discrete"
    stoch: int = 32
    classes: int = 32

    @property
    def stoch_dim(self) -> int:
        """Size of a latent sample (``stoch * classes`` one-hot entries, or ``stoch``)."""
        return self.stoch * self.classes if self.latent == "discrete" else self.stoch

    def _logits(self, stats: torch.Tensor) -> torch.Tensor:
        return stats.unflatten(-1, (self.stoch, self.classes))

    def mean(self, stats: torch.Tensor) -> torch.Tensor:
        """Mean of the latent ``[..., stoch_dim]``: class probabilities (flattened) or the Gaussian mean."""
        if self.latent == "discrete":
            return self._logits(stats).softmax(-1).flatten(-2)
        return stats.chunk(2, -1)[0]

    def variance(self, stats: torch.Tensor) -> torch.Tensor:
        """Per-dimension variance ``[..., stoch_dim]``: ``p (1 - p)`` of each one-hot entry, or ``std^2``."""
        if self.latent == "discrete":
            probs = self._logits(stats).softmax(-1).flatten(-2)
            return probs * (1 - probs)
        return stats.chunk(2, -1)[1].pow(2)

    def log_prob(self, stats: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
        """``ln p(stoch)`` summed over the latent dimensions, one value per step."""
        if self.latent == "discrete":
            log_p = self._logits(stats).log_softmax(-1)
            return (self._logits(stoch) * log_p).sum((-1, -2))
        mean, std = stats.chunk(2, -1)
        return (-0.5 * ((stoch - mean) / std).pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class EnsemblePriorHeads(nn.Module):
    """``heads`` prior heads ``deter -> Linear -> ELU -> Linear -> stats``, weights stacked per head.

    Each head has the layout of the single prior head (``RSSM.img_out``) and the same
    initialisation as ``nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``), stored as
    ``[heads, in, out]`` weights so that all heads (:meth:`forward`) or one head per step
    (:meth:`select`) run as one batched matmul.
    """

    def __init__(self, heads: int, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.in_weight = nn.Parameter(torch.empty(heads, in_dim, hidden))
        self.in_bias = nn.Parameter(torch.empty(heads, hidden))
        self.out_weight = nn.Parameter(torch.empty(heads, hidden, out_dim))
        self.out_bias = nn.Parameter(torch.empty(heads, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight, bias in ((self.in_weight, self.in_bias), (self.out_weight, self.out_bias)):
            bound = 1 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every head: ``x [..., in] -> [..., heads, out]``."""
        hidden = F.elu(torch.einsum("...d,edh->...eh", x, self.in_weight) + self.in_bias)
        return torch.einsum("...eh,eho->...eo", hidden, self.out_weight) + self.out_bias

    def select(self, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """One head: ``head`` a 0-d index for all of ``x [..., in]``, or ``[T]`` indices, one per
        row of ``x [..., T, in]``. Only the chosen heads' weights enter the graph."""
        # index_select with a tensor index: no data-dependent Python int (torch.compile traces it).
        index = head.reshape(-1)
        w_in, b_in, w_out, b_out = (p.index_select(0, index) for p in
                                    (self.in_weight, self.in_bias, self.out_weight, self.out_bias))
        if head.ndim == 0:
            hidden = F.elu(x @ w_in[0] + b_in[0])
            return hidden @ w_out[0] + b_out[0]
        hidden = F.elu(torch.einsum("...td,tdh->...th", x, w_in) + b_in)
        return torch.einsum("...th,tho->...to", hidden, w_out) + b_out


class RSSM(nn.Module):
    """DreamerV2 RSSM (Hafner et al. 2021, Sec. 2) with discrete or Gaussian latents.

    Prior (dynamics):   ``h_t = GRU(h_{t-1}, ELU(W[z_{t-1}, a_{t-1}]))``, ``z_t ~ p(z | h_t)``.
    Posterior:          ``z_t ~ q(z | h_t, e_t)`` where ``e_t`` is the image embedding.

    Ensemble of prior heads (Offline DV2, Lu et al. 2023): with ``ensemble = E > 0`` the
    prior ``p(z_t | h_t)`` has ``E`` heads (:class:`EnsemblePriorHeads`, module
    ``img_out_ensemble``, replacing ``img_out``), as V-D4RL's ``EnsembleRSSM``
    (``offlinedv2/dreamerv2/common/nets.py``, 7 heads in its ``configs.yaml``). As there,
    every prior step draws ONE head uniformly at random, shared by the whole batch: its
    ``img_step`` draws ``tf.random.uniform((), 0, ensemble)`` at each call, and ``observe``
    calls ``img_step`` once per time step, so during world-model training each time step of
    a batch uses (and trains, through the KL) a random head, and each imagination step
    samples the next state from a random head. :meth:`observe` draws the ``T`` heads of a
    sequence at once (``[T]`` indices) and :meth:`img_step` one per call. All heads are
    read only by :meth:`ensemble_stats` (the reward penalty's disagreement). With
    ``ensemble = 0`` (default) there is one head and no random draw: parameters, state_dict
    keys and numbers are those of the plain DreamerV2 RSSM.

    Args:
        action_dim: size of the action vector.
        embed_dim: size of the observation embedding.

    Keyword Args:
        latent: ``"discrete"`` (``stoch`` categoricals of ``classes`` classes,
            straight-through, Table 7) or ``"gaussian"`` (``stoch`` diagonal Normals, the
            official CoWorld code).
        stoch: number of categoricals, or Gaussian dimensions.
        classes: classes per categorical (ignored for Gaussian latents).
        deter: GRU state size.
        hidden: size of the MLP layers around the GRU.
        norm_gru: LayerNorm inside the GRU.
        min_std: lower bound of the Gaussian scale.
        ensemble: number of prior heads for Offline DV2 (0: the single DreamerV2 head).
    """

    def __init__(
        self,
        action_dim: int,
        embed_dim: int,
        *,
        latent: LatentKind = "discrete",
        stoch: int = 32,
        classes: int = 32,
        deter: int = 600,
        hidden: int = 600,
        norm_gru: bool = True,
        min_std: float = 0.1,
        ensemble: int = 0,
    ):
        super().__init__()
        if latent not in ("discrete", "gaussian"):
            raise ValueError(f"latent={latent!r} is not a latent kind; use 'discrete' or 'gaussian'.")
        if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 0:
            raise ValueError(f"ensemble={ensemble!r}; use 0 (one prior head) or the number of prior heads "
                             f"(7 in Offline DV2).")
        self.ensemble = ensemble
        self.latent = latent
        self.action_dim = action_dim
        self.stoch, self.classes, self.deter, self.min_std = stoch, classes, deter, min_std
        self.stoch_dim = stoch * classes if latent == "discrete" else stoch
        self.stats_dim = stoch * classes if latent == "discrete" else 2 * stoch
        self.feature_dim = self.stoch_dim + deter

        self.img_in = nn.Sequential(nn.Linear(self.stoch_dim + action_dim, hidden), nn.ELU())
        self.gru = GRUCell(hidden, deter, norm=norm_gru)
        if ensemble:
            self.img_out_ensemble = EnsemblePriorHeads(ensemble, deter, hidden, self.stats_dim)
        else:
            self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, self.stats_dim))
        # The posterior's first layer reads [h, e]; it is split so that the embedding
        # half is computed for a whole sequence in one matmul before the time loop.
        self.obs_in_deter = nn.Linear(deter, hidden)
        self.obs_in_embed = nn.Linear(embed_dim, hidden, bias=False)
        self.obs_out = nn.Sequential(nn.ELU(), nn.Linear(hidden, self.stats_dim))

    # ----------------------------------------------------------------- latents
    def initial(self, batch_shape: tuple[int, ...], device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero ``(stoch, deter)`` for a batch."""
        kw = dict(device=device, dtype=dtype)
        return torch.zeros(*batch_shape, self.stoch_dim, **kw), torch.zeros(*batch_shape, self.deter, **kw)

    @property
    def latent_spec(self) -> LatentSpec:
        """The latent kind and sizes (what a stats tensor means)."""
        return LatentSpec(self.latent, self.stoch, self.classes)

    def _stats(self, raw: torch.Tensor) -> torch.Tensor:
        if self.latent == "discrete":
            return raw
        mean, std = raw.chunk(2, -1)
        return torch.cat([mean, 2 * torch.sigmoid(std / 2) + self.min_std], -1)

    def sample(self, stats: torch.Tensor) -> torch.Tensor:
        """Draw a differentiable latent sample from ``stats``."""
        if self.latent == "discrete":
            logits = stats.unflatten(-1, (self.stoch, self.classes))
            return straight_through_one_hot(logits).flatten(-2)
        mean, std = stats.chunk(2, -1)
        return mean + std * torch.randn_like(std)

    def mode(self, stats: torch.Tensor) -> torch.Tensor:
        """Most likely latent under ``stats`` (one-hot argmax, or the mean)."""
        if self.latent == "discrete":
            logits = stats.unflatten(-1, (self.stoch, self.classes))
            return F.one_hot(logits.argmax(-1), self.classes).to(stats.dtype).flatten(-2)
        return stats.chunk(2, -1)[0]

    def kl(self, lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``KL(lhs || rhs)`` summed over latent dimensions, one value per step."""
        if self.latent == "discrete":
            lhs_log = lhs.unflatten(-1, (self.stoch, self.classes)).log_softmax(-1)
            rhs_log = rhs.unflatten(-1, (self.stoch, self.classes)).log_softmax(-1)
            return (lhs_log.exp() * (lhs_log - rhs_log)).sum((-1, -2))
        mean_l, std_l = lhs.chunk(2, -1)
        mean_r, std_r = rhs.chunk(2, -1)
        var_ratio = (std_l / std_r).pow(2)
        return 0.5 * (var_ratio + ((mean_l - mean_r) / std_r).pow(2) - 1 - var_ratio.log()).sum(-1)

    def entropy(self, stats: torch.Tensor) -> torch.Tensor:
        """Entropy of the latent distribution, one value per step."""
        if self.latent == "discrete":
            log_p = stats.unflatten(-1, (self.stoch, self.classes)).log_softmax(-1)
            return -(log_p.exp() * log_p).sum((-1, -2))
        std = stats.chunk(2, -1)[1]
        return (0.5 * math.log(2 * math.pi * math.e) + std.log()).sum(-1)

    @staticmethod
    def features(stoch: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        """What every head reads: ``cat(stoch, deter)``."""
        return torch.cat([stoch, deter], -1)

    # ------------------------------------------------------------------- steps
    def transition(self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Deterministic step ``h_t = GRU(h_{t-1}, ELU(W[z_{t-1}, a_{t-1}]))``."""
        return self.gru(self.img_in(torch.cat([stoch, action], -1)), deter)

    def prior(self, deter: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
        """Prior stats ``p(z_t | h_t)``.

        With an ensemble, ``head`` chooses the head: a 0-d index for all of ``deter``, or
        ``[T]`` indices, one per row of ``deter [..., T, deter]``; ``None`` draws one head
        uniformly at random for the call (V-D4RL's ``img_step``). Ignored without an ensemble.
        """
        if not self.ensemble:
            return self._stats(self.img_out(deter))
        if head is None:
            head = self.sample_heads((), deter.device)
        return self._stats(self.img_out_ensemble.select(deter, head))

    def sample_heads(self, shape: tuple[int, ...] = (), device=None) -> torch.Tensor:
        """Uniform random prior-head indices (on ``device``: no host sync)."""
        if not self.ensemble:
            raise ValueError("this RSSM has one prior head (ensemble=0); build it with ensemble > 0.")
        return torch.randint(self.ensemble, shape, device=device)

    def ensemble_stats(self, deter: torch.Tensor) -> torch.Tensor:
        """Every prior head's stats at ``deter [..., deter]``: ``[..., ensemble, stats_dim]``."""
        if not self.ensemble:
            raise ValueError("ensemble_stats needs an ensemble of prior heads; build the RSSM with ensemble > 0 "
                             "(ModelConfig.ensemble, 7 in Offline DV2).")
        return self._stats(self.img_out_ensemble(deter))

    def posterior(self, deter: torch.Tensor, embed_proj: torch.Tensor) -> torch.Tensor:
        """Posterior stats ``q(z_t | h_t, e_t)`` from ``embed_proj = project_embedding(e_t)``."""
        return self._stats(self.obs_out(self.obs_in_deter(deter) + embed_proj))

    def img_step(self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor,
                 head: torch.Tensor | None = None):
        """One imagination step: returns ``(deter, prior_stats, stoch)`` with a sampled ``stoch``.

        With an ensemble the prior is one head, random per call unless ``head`` is given.
        """
        deter = self.transition(stoch, deter, action)
        stats = self.prior(deter, head)
        return deter, stats, self.sample(stats)

    def project_embedding(self, embed: torch.Tensor) -> torch.Tensor:
        """The embedding half of the posterior's first layer (batched over time)."""
        return self.obs_in_embed(embed)

    def filter_step(
        self,
        stoch: torch.Tensor,
        deter: torch.Tensor,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
        *,
        sample: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One acting step: reset where ``is_first``, then prior and posterior.

        Returns the posterior ``(stoch, deter)`` at the current observation.
        """
        keep = (~is_first.reshape(*stoch.shape[:-1], 1)).to(stoch.dtype)
        deter = self.transition(stoch * keep, deter * keep, prev_action * keep)
        stats = self.posterior(deter, self.project_embedding(embed))
        return (self.sample(stats) if sample else self.mode(stats)), deter

    def observe(
        self,
        embed: torch.Tensor,
        prev_action: torch.Tensor,
        is_first: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Filter a batch of sequences.

        Args:
            embed: ``[B, T, E]`` embeddings of ``o_t``.
            prev_action: ``[B, T, A]`` the action that led to ``o_t`` (zero at starts).
            is_first: ``[B, T]`` bool, state is reset before step ``t`` where true.
            state: ``(stoch, deter)`` before step 0; zeros by default.

        Returns:
            dict of ``[B, T, ...]`` tensors: ``stoch``, ``deter``, ``post_stats``, ``prior_stats``
            (with an ensemble: one random head per time step, shared by the batch).
        """
        batch, steps = embed.shape[:2]
        stoch, deter = state if state is not None else self.initial((batch,), embed.device, embed.dtype)
        keep = (~is_first).to(embed.dtype).unsqueeze(-1)
        embed_proj = self.project_embedding(embed)
        stochs, deters, post_stats = [], [], []
        for t in range(steps):
            k = keep[:, t]
            deter = self.transition(stoch * k, deter * k, prev_action[:, t] * k)
            stats = self.posterior(deter, embed_proj[:, t])
            stoch = self.sample(stats)
            stochs.append(stoch)
            deters.append(deter)
            post_stats.append(stats)
        deter = torch.stack(deters, 1)
        # The prior is not on the recurrent path: compute it for all steps at once.
        head = self.sample_heads((steps,), embed.device) if self.ensemble else None
        return {
            "stoch": torch.stack(stochs, 1),
            "deter": deter,
            "post_stats": torch.stack(post_stats, 1),
            "prior_stats": self.prior(deter, head),
        }
