"""The DreamerV2 world model as a TensorDictModule, and the one place data is aligned.

Data alignment
--------------
Buffers and datasets store transitions in TorchRL's TED layout: row ``t`` holds the
observation ``o_t``, the action ``a_t`` taken there, and under ``"next"`` the reward
``r_{t+1}`` and done flags that followed. The RSSM filters ``o_t`` with the action that
LED to it, and the reward head at ``s_t`` predicts the reward that LED to ``o_t``. The
world model therefore reads each sampled slice shifted by one row::

    row t            0       1       2      ...   T-1
    TED   pixels     o_0     o_1     o_2          o_{T-1}
          action     a_0     a_1     a_2          a_{T-1}   (a_{T-1} unused)
          next.rew   r_1     r_2     r_3          r_T       (r_T unused)
    model prev_act   0*      a_0     a_1          a_{T-2}   = previous_step(action)
          reward tgt  -      r_1     r_2          r_{T-1}   = previous_step(next.reward)
          state      s_0     s_1     s_2          s_{T-1}

    * the state, the previous action and the reward target are reset wherever
      ``is_init`` is set (always at row 0 of a slice, and at episode starts).

``previous_step`` is the only function that shifts data; both the world model and its
loss call it.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from coworld_trl.modules.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, ScalarHead
from coworld_trl.modules.rssm import RSSM


def previous_step(x: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
    """Shift ``x [B, T, ...]`` one step later in time; zero at row 0 and where ``is_first``."""
    shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    mask = is_first.reshape(*is_first.shape[:2], *([1] * (x.ndim - 2)))
    return torch.where(mask, torch.zeros_like(shifted), shifted)


class WorldModel(TensorDictModuleBase):
    """DreamerV2 world model: encoder, RSSM, decoder, reward head, optional discount head.

    Reads a ``[B, T]`` TensorDict in TED layout and writes the filtered latents.

    In keys: ``obs_key`` (uint8 pixels ``[B, T, 3, 64, 64]`` or a vector), ``action``
    ``[B, T, A]``, ``is_init`` ``[B, T, 1]`` or ``[B, T]``.

    Out keys: ``embedding`` ``[B, T, E]`` (what CoWorld's alignment head reads),
    ``stoch``, ``deter``, ``post_stats``, ``prior_stats`` (see :class:`RSSM`).

    Args:
        encoder, decoder: observation encoder (``embed_dim`` attribute) and decoder.
        rssm: the latent dynamics.
        reward_head: scalar head on features.
        discount_head: optional Bernoulli-logit head on features (continuation).

    Keyword Args:
        obs_key, action_key, is_init_key: TensorDict keys.
    """

    def __init__(
        self,
        encoder: nn.Module,
        rssm: RSSM,
        decoder: nn.Module,
        reward_head: nn.Module,
        discount_head: nn.Module | None = None,
        *,
        obs_key="pixels",
        action_key="action",
        is_init_key="is_init",
    ):
        super().__init__()
        self.encoder, self.rssm, self.decoder = encoder, rssm, decoder
        self.reward_head, self.discount_head = reward_head, discount_head
        self.obs_key, self.action_key, self.is_init_key = obs_key, action_key, is_init_key
        self.in_keys = [obs_key, action_key, is_init_key]
        self.out_keys = ["embedding", "stoch", "deter", "post_stats", "prior_stats"]

    @property
    def feature_dim(self) -> int:
        return self.rssm.feature_dim

    @property
    def action_dim(self) -> int:
        return self.rssm.action_dim

    def is_first(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[B, T]`` bool reset mask; row 0 of every slice always starts from zeros."""
        is_init = tensordict.get(self.is_init_key).reshape(tensordict.shape).clone()
        is_init[:, 0] = True
        return is_init

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim != 2:
            raise ValueError(f"WorldModel expects a [batch, time] TensorDict, got batch_size={tuple(tensordict.shape)}.")
        is_first = self.is_first(tensordict)
        embed = self.encoder(tensordict.get(self.obs_key))
        prev_action = previous_step(tensordict.get(self.action_key), is_first)
        latents = self.rssm.observe(embed, prev_action, is_first)
        tensordict.set("embedding", embed)
        for key, value in latents.items():
            tensordict.set(key, value)
        return tensordict

    def features(self, tensordict: TensorDictBase) -> torch.Tensor:
        return self.rssm.features(tensordict.get("stoch"), tensordict.get("deter"))


def make_world_model(
    *,
    action_dim: int,
    obs_shape: tuple[int, ...] = (3, 64, 64),
    latent: str = "discrete",
    stoch: int = 32,
    classes: int = 32,
    deter: int = 600,
    hidden: int = 600,
    norm_gru: bool = True,
    cnn_depth: int = 48,
    mlp_layers: int = 4,
    mlp_units: int = 400,
    reward_layers: int = 4,
    discount_head: bool = False,
    obs_key="pixels",
) -> WorldModel:
    """Build a :class:`WorldModel` for image (``[3, 64, 64]``) or vector (``[D]``) observations."""
    if len(obs_shape) == 3:
        encoder = ConvEncoder(depth=cnn_depth, in_channels=obs_shape[0], image_size=obs_shape[-1])
    elif len(obs_shape) == 1:
        encoder = MLPEncoder(obs_shape[0], layers=mlp_layers, units=mlp_units)
    else:
        raise ValueError(f"obs_shape={obs_shape} is neither an image [C, H, W] nor a vector [D].")
    rssm = RSSM(action_dim, encoder.embed_dim, latent=latent, stoch=stoch, classes=classes, deter=deter,
                hidden=hidden, norm_gru=norm_gru)
    if len(obs_shape) == 3:
        decoder = ConvDecoder(rssm.feature_dim, depth=cnn_depth, out_channels=obs_shape[0])
    else:
        decoder = MLPDecoder(rssm.feature_dim, obs_shape[0], layers=mlp_layers, units=mlp_units)
    reward = ScalarHead(rssm.feature_dim, layers=reward_layers, units=mlp_units)
    discount = ScalarHead(rssm.feature_dim, layers=reward_layers, units=mlp_units) if discount_head else None
    return WorldModel(encoder, rssm, decoder, reward, discount, obs_key=obs_key)
