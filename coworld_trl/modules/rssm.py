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
"""
from __future__ import annotations

import math
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


class RSSM(nn.Module):
    """DreamerV2 RSSM (Hafner et al. 2021, Sec. 2) with discrete or Gaussian latents.

    Prior (dynamics):   ``h_t = GRU(h_{t-1}, ELU(W[z_{t-1}, a_{t-1}]))``, ``z_t ~ p(z | h_t)``.
    Posterior:          ``z_t ~ q(z | h_t, e_t)`` where ``e_t`` is the image embedding.

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
    ):
        super().__init__()
        if latent not in ("discrete", "gaussian"):
            raise ValueError(f"latent={latent!r} is not a latent kind; use 'discrete' or 'gaussian'.")
        self.latent = latent
        self.action_dim = action_dim
        self.stoch, self.classes, self.deter, self.min_std = stoch, classes, deter, min_std
        self.stoch_dim = stoch * classes if latent == "discrete" else stoch
        self.stats_dim = stoch * classes if latent == "discrete" else 2 * stoch
        self.feature_dim = self.stoch_dim + deter

        self.img_in = nn.Sequential(nn.Linear(self.stoch_dim + action_dim, hidden), nn.ELU())
        self.gru = GRUCell(hidden, deter, norm=norm_gru)
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

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        """Prior stats ``p(z_t | h_t)``."""
        return self._stats(self.img_out(deter))

    def posterior(self, deter: torch.Tensor, embed_proj: torch.Tensor) -> torch.Tensor:
        """Posterior stats ``q(z_t | h_t, e_t)`` from ``embed_proj = project_embedding(e_t)``."""
        return self._stats(self.obs_out(self.obs_in_deter(deter) + embed_proj))

    def img_step(self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor):
        """One imagination step: returns ``(deter, prior_stats, stoch)`` with a sampled ``stoch``."""
        deter = self.transition(stoch, deter, action)
        stats = self.prior(deter)
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
            dict of ``[B, T, ...]`` tensors: ``stoch``, ``deter``, ``post_stats``, ``prior_stats``.
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
        return {
            "stoch": torch.stack(stochs, 1),
            "deter": deter,
            "post_stats": torch.stack(post_stats, 1),
            "prior_stats": self.prior(deter),
        }
