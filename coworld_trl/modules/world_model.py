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

from dataclasses import dataclass, fields

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, ScalarHead
from coworld_trl.modules.rssm import RSSM


def previous_step(x: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
    """Shift ``x [B, T, ...]`` one step later in time; zero at row 0 and where ``is_first``."""
    shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    mask = is_first.reshape(*is_first.shape[:2], *([1] * (x.ndim - 2)))
    return torch.where(mask, torch.zeros_like(shifted), shifted)


@dataclass
class WorldModelKeys:
    """The TensorDict keys a :class:`WorldModel` reads and writes.

    Attributes:
        obs: observation (uint8 pixels or a vector) it encodes.
        action: the TED action ``a_t`` (the model feeds ``previous_step(action)`` to the RSSM).
        is_init: episode-start flag.
        embedding: encoder output (written; CoWorld's state alignment reads it).
        stoch, deter, post_stats, prior_stats: the filtered latents (written).
    """

    obs: NestedKey = "pixels"
    action: NestedKey = "action"
    is_init: NestedKey = "is_init"
    embedding: NestedKey = "embedding"
    stoch: NestedKey = "stoch"
    deter: NestedKey = "deter"
    post_stats: NestedKey = "post_stats"
    prior_stats: NestedKey = "prior_stats"


class WorldModel(TensorDictModuleBase):
    """DreamerV2 world model: encoder, RSSM, decoder, reward head, optional discount head.

    Reads a ``[B, T]`` TensorDict in TED layout and writes the filtered latents. Its keys
    live in one place, :attr:`tensor_keys` (a :class:`WorldModelKeys`): a
    :class:`~coworld_trl.objectives.WorldModelLoss` built on this model starts from them,
    and its ``set_keys(pixels=..., action=..., stoch=..., ...)`` writes them here, so
    renaming the observation through the loss changes what the encoder reads.

    In keys: ``obs`` (uint8 pixels ``[B, T, 3, 64, 64]`` or a vector), ``action``
    ``[B, T, A]``, ``is_init`` ``[B, T, 1]`` or ``[B, T]``.

    Out keys: ``embedding`` ``[B, T, E]`` (what CoWorld's alignment head reads),
    ``stoch``, ``deter``, ``post_stats``, ``prior_stats`` (see :class:`RSSM`).

    Inputs are checked cheaply (shapes only, no host sync): a missing key, pixels of
    another size or channel order (HWC instead of CHW), or actions of another dimension
    raise a one-line error with the expected and the actual shape.

    Args:
        encoder, decoder: observation encoder (``embed_dim`` attribute) and decoder.
        rssm: the latent dynamics.
        reward_head: scalar head on features.
        discount_head: optional Bernoulli-logit head on features (continuation).

    Keyword Args:
        obs_shape: shape of one observation (``(3, 64, 64)``, ``(D,)``); checked against
            every batch when given (:func:`make_world_model` gives it).
        obs_key, action_key, is_init_key: initial :attr:`tensor_keys` of the inputs.

    Examples:
        >>> model = make_world_model(action_dim=6, obs_key="pixels")
        >>> model.set_keys(obs="observation")   # or WorldModelLoss(model).set_keys(pixels="observation")
        >>> model(batch)["stoch"].shape          # batch: TED TensorDict [B, T]
    """

    def __init__(
        self,
        encoder: nn.Module,
        rssm: RSSM,
        decoder: nn.Module,
        reward_head: nn.Module,
        discount_head: nn.Module | None = None,
        *,
        obs_shape: tuple[int, ...] | None = None,
        obs_key: NestedKey = "pixels",
        action_key: NestedKey = "action",
        is_init_key: NestedKey = "is_init",
    ):
        super().__init__()
        self.encoder, self.rssm, self.decoder = encoder, rssm, decoder
        self.reward_head, self.discount_head = reward_head, discount_head
        self.obs_shape = tuple(obs_shape) if obs_shape is not None else None
        self.tensor_keys = WorldModelKeys(obs=obs_key, action=action_key, is_init=is_init_key)

    def set_keys(self, **keys: NestedKey) -> None:
        """Rename entries: ``set_keys(obs="observation", stoch="latent_stoch")`` (see :class:`WorldModelKeys`)."""
        names = {f.name for f in fields(WorldModelKeys)}
        for name, key in keys.items():
            if name not in names:
                raise ValueError(f"WorldModel.set_keys: {name!r} is not one of its keys {sorted(names)}.")
            setattr(self.tensor_keys, name, key if key is not None else getattr(WorldModelKeys, name))

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.obs, k.action, k.is_init]

    @property
    def out_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.embedding, k.stoch, k.deter, k.post_stats, k.prior_stats]

    @property
    def obs_key(self) -> NestedKey:
        return self.tensor_keys.obs

    @property
    def action_key(self) -> NestedKey:
        return self.tensor_keys.action

    @property
    def is_init_key(self) -> NestedKey:
        return self.tensor_keys.is_init

    @property
    def feature_dim(self) -> int:
        return self.rssm.feature_dim

    @property
    def action_dim(self) -> int:
        return self.rssm.action_dim

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _fix(name: str) -> str:
        loss_name = "pixels" if name == "obs" else name
        return f"rename it with set_keys({loss_name}=...) on the WorldModelLoss (or set_keys({name}=...) on the WorldModel)"

    def check_obs(self, obs: torch.Tensor, owner: str = "WorldModel") -> None:
        """Raise a one-line ``ValueError`` when ``obs`` is not ``[..., *obs_shape]`` (shapes only)."""
        expected, key = self.obs_shape, self.tensor_keys.obs
        if obs.dtype == torch.float64 or not (obs.dtype == torch.uint8 or obs.is_floating_point()):
            raise ValueError(f"{owner}: {key!r} has dtype {obs.dtype}; the model takes uint8 pixels in [0, 255] or "
                             f"float32 inputs: cast it with .to(torch.uint8) or .float()")
        if expected is None or tuple(obs.shape[obs.ndim - len(expected):]) == expected:
            return
        message = f"{owner}: {key!r} has shape {tuple(obs.shape)} but the model takes [..., {', '.join(map(str, expected))}]"
        if len(expected) == 3 and tuple(obs.shape[-3:]) == (*expected[1:], expected[0]):
            message += "; the images are channels-last (HWC): permute them to CHW (TorchRL's ToTensorImage does)"
        elif len(expected) == 3:
            message += (f"; render or resize the images to {expected[1]}x{expected[2]} with {expected[0]} channels "
                        f"(TorchRL's Resize)")
        else:
            message += f"; build the model with obs_shape={tuple(obs.shape[-1:])}"
        raise ValueError(message)

    def check_action(self, action: torch.Tensor, owner: str = "WorldModel") -> None:
        """Raise a one-line ``ValueError`` when ``action`` is not float ``[..., action_dim]``."""
        if action.dtype == torch.float64 or not action.is_floating_point():
            raise ValueError(f"{owner}: {self.tensor_keys.action!r} has dtype {action.dtype}; the model takes float32 "
                             f"actions: cast them with .float()")
        if action.shape[-1] != self.action_dim:
            raise ValueError(
                f"{owner}: {self.tensor_keys.action!r} has shape {tuple(action.shape)} ({action.shape[-1]}-d actions) "
                f"but the model takes {self.action_dim}-d actions [..., {self.action_dim}]; pad the env's actions "
                f"(make_env(..., pad_action_dim=...)) or build the model with action_dim={action.shape[-1]}"
            )

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """The encoder's embedding of ``obs`` ``[..., *obs_shape]``, after the shape check."""
        self.check_obs(obs)
        return self.encoder(obs)

    # ---------------------------------------------------------------- forward
    def is_first(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[B, T]`` bool reset mask; row 0 of every slice always starts from zeros."""
        key = self.tensor_keys.is_init
        is_init = require(tensordict, key, "WorldModel", self._fix("is_init"))
        if tuple(is_init.shape[:2]) != tuple(tensordict.shape) or is_init.numel() != tensordict.numel():
            raise ValueError(f"WorldModel: {key!r} has shape {tuple(is_init.shape)} but the batch is "
                             f"{tuple(tensordict.shape)}; it takes [B, T] or [B, T, 1].")
        is_init = is_init.reshape(tensordict.shape).clone()
        is_init[:, 0] = True
        return is_init

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if tensordict.ndim != 2:
            raise ValueError(f"WorldModel expects a [batch, time] TensorDict, got batch_size={tuple(tensordict.shape)}.")
        if 0 in tensordict.shape:
            raise ValueError(f"WorldModel: the batch is empty (batch_size={tuple(tensordict.shape)}); give it at least "
                             f"one sequence of one step (data.batch_size >= 1).")
        keys = self.tensor_keys
        obs = require(tensordict, keys.obs, "WorldModel", self._fix("obs"))
        action = require(tensordict, keys.action, "WorldModel", self._fix("action"))
        self.check_action(action)
        is_first = self.is_first(tensordict)
        embed = self.embed(obs)
        prev_action = previous_step(action, is_first)
        latents = self.rssm.observe(embed, prev_action, is_first)
        tensordict.set(keys.embedding, embed)
        tensordict.set(keys.stoch, latents["stoch"])
        tensordict.set(keys.deter, latents["deter"])
        tensordict.set(keys.post_stats, latents["post_stats"])
        tensordict.set(keys.prior_stats, latents["prior_stats"])
        return tensordict

    def features(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``cat(stoch, deter)`` of the latents in ``tensordict`` (run the model first)."""
        keys, fix = self.tensor_keys, "run the world model on it first (it writes the latents)"
        return self.rssm.features(require(tensordict, keys.stoch, "WorldModel.features", fix),
                                  require(tensordict, keys.deter, "WorldModel.features", fix))


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
    ensemble: int = 0,
) -> WorldModel:
    """Build a :class:`WorldModel` for image (``[3, 64, 64]``) or vector (``[D]``) observations.

    ``ensemble`` > 0 gives the RSSM that many prior heads (Offline DV2; see :class:`RSSM`).
    """
    if len(obs_shape) == 3:
        encoder = ConvEncoder(depth=cnn_depth, in_channels=obs_shape[0], image_size=obs_shape[-1])
    elif len(obs_shape) == 1:
        encoder = MLPEncoder(obs_shape[0], layers=mlp_layers, units=mlp_units)
    else:
        raise ValueError(f"obs_shape={obs_shape} is neither an image [C, H, W] nor a vector [D].")
    rssm = RSSM(action_dim, encoder.embed_dim, latent=latent, stoch=stoch, classes=classes, deter=deter,
                hidden=hidden, norm_gru=norm_gru, ensemble=ensemble)
    if len(obs_shape) == 3:
        decoder = ConvDecoder(rssm.feature_dim, depth=cnn_depth, out_channels=obs_shape[0])
    else:
        decoder = MLPDecoder(rssm.feature_dim, obs_shape[0], layers=mlp_layers, units=mlp_units)
    reward = ScalarHead(rssm.feature_dim, layers=reward_layers, units=mlp_units)
    discount = ScalarHead(rssm.feature_dim, layers=reward_layers, units=mlp_units) if discount_head else None
    return WorldModel(encoder, rssm, decoder, reward, discount, obs_shape=tuple(obs_shape), obs_key=obs_key)
