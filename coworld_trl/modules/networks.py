"""DreamerV2 encoders, decoders, heads and actor (plain ``nn.Module`` on tensors).

The world model wires these together and exposes them through TensorDict keys; the
modules themselves stay tensor-in/tensor-out so the hot loops carry no dict overhead.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torchrl.modules import MLP, TanhNormal

from coworld_trl.modules.distributions import TruncatedNormal

_CHANNELS_LAST = torch.channels_last


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` pixels to float ``[-0.5, 0.5]`` (DreamerV2's scaling)."""
    return pixels.float().div_(255.0).sub_(0.5)  # in place on the fresh float copy


def _run_conv_stack(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Apply a conv/ELU ``Sequential``, with the ELUs in place.

    Each ELU reads a fresh convolution output, which no backward needs (convolutions save
    their input), so overwriting it is safe; it saves a large allocation per layer and its
    backward reuses the output instead of recomputing ``exp``.
    """
    for layer in layers:
        x = F.elu(x, layer.alpha, inplace=True) if isinstance(layer, nn.ELU) else layer(x)
    return x


def _conv_transpose2d_stride2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """``conv(x)`` for a stride-2, unpadded ``ConvTranspose2d``, as one ordinary convolution.

    Output pixel ``2a + p`` only sees kernel taps ``p, p + 2, ...``: the four output parities
    are convolutions of ``x`` with the (flipped) sub-kernels, computed together as one
    convolution with ``4 * c_out`` channels and interleaved (a pixel shuffle). Odd kernels
    are padded with a zero tap and the extra output row/column is cropped. Same sums, in a
    layout oneDNN runs much faster for few output channels (the RGB layer).
    """
    weight, bias = conv.weight, conv.bias
    c_in, c_out, kh, kw = weight.shape
    ph, pw = kh % 2, kw % 2
    if ph or pw:
        weight = F.pad(weight, (0, pw, 0, ph))
    mh, mw = (kh + ph) // 2, (kw + pw) // 2
    # weight[c, o, 2s + py, 2t + px] -> w[o, py, px, c, mh - 1 - s, mw - 1 - t]
    w = weight.reshape(c_in, c_out, mh, 2, mw, 2).flip(2, 4).permute(1, 3, 5, 0, 2, 4)
    w = w.reshape(4 * c_out, c_in, mh, mw)
    b = bias.repeat_interleave(4) if bias is not None else None
    if x.is_contiguous(memory_format=_CHANNELS_LAST):
        w = w.contiguous(memory_format=_CHANNELS_LAST)
    y = F.conv2d(x, w, b, padding=(mh - 1, mw - 1))
    # pixel_shuffle(y, 2), as one strided copy (about 2x faster on channels-last y).
    n, _, h, w_ = y.shape
    out = y.view(n, c_out, 2, 2, h, w_).permute(0, 1, 4, 2, 5, 3).reshape(n, c_out, 2 * h, 2 * w_)
    oh, ow = (x.shape[-2] - 1) * 2 + kh, (x.shape[-1] - 1) * 2 + kw
    return out[..., :oh, :ow] if (ph or pw) else out


def _conv2d_as_matmul(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for an unpadded ``Conv2d`` on a channels-last ``x``, as one matrix product
    over the input patches (each row one output pixel's ``kh x kw x C`` patch).

    Used for the encoder's last layer (6x6 -> 2x2): there it is about 1.6x faster than
    oneDNN's convolution forward + backward on AVX2 CPUs, whose weight gradient is slow
    for so few output pixels. Returns the output as ``[N, oh, ow, C_out]`` (NHWC, contiguous).
    """
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    patches = x.permute(0, 2, 3, 1).unfold(1, kh, sh).unfold(2, kw, sw)  # [N, oh, ow, C, kh, kw]
    n, oh, ow = patches.shape[:3]
    rows = patches.permute(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # same (kh, kw, C) order
    out = torch.addmm(conv.bias, rows, weight.t()) if conv.bias is not None else rows @ weight.t()
    return out.view(n, oh, ow, -1)


class ConvEncoder(nn.Module):
    """DreamerV2 image encoder: four ``k=4, s=2`` convolutions with ELU.

    Reads uint8 ``[..., 3, 64, 64]`` pixels (float input is taken as already scaled to
    ``[-0.5, 0.5]``) and returns a ``32 * depth`` embedding (1024 for depth 32).
    """

    def __init__(self, *, depth: int = 48, in_channels: int = 3, image_size: int = 64):
        super().__init__()
        if image_size != 64:
            raise ValueError(f"ConvEncoder expects 64x64 images, got image_size={image_size}; render at 64.")
        chans = [in_channels, depth, 2 * depth, 4 * depth, 8 * depth]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2), nn.ELU()]
        self.net = nn.Sequential(*layers)
        self.embed_dim = 32 * depth

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        lead = pixels.shape[:-3]
        x = pixels.reshape(-1, *pixels.shape[-3:])
        if x.device.type == "cpu":
            # oneDNN's convolutions are faster on NHWC activations (no layout reorders).
            x = x.contiguous(memory_format=_CHANNELS_LAST)
        x = pixels_to_float(x) if x.dtype == torch.uint8 else x
        # Under torch.compile inductor lowers the convolutions itself (and, in torch 2.13, the
        # compiled backward of the overlapping patch gather crashes with a double free).
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            x = _run_conv_stack(self.net[:-2], x)
            x = F.elu(_conv2d_as_matmul(x, self.net[-2]), inplace=True).permute(0, 3, 1, 2)
        else:
            x = _run_conv_stack(self.net, x)
        return x.reshape(*lead, self.embed_dim)


class ConvDecoder(nn.Module):
    """DreamerV2 image decoder: linear, then transposed convolutions ``k = 5, 5, 6, 6``.

    Returns the mean image in ``[-0.5, 0.5]`` space, ``[..., 3, 64, 64]``.
    """

    def __init__(self, feature_dim: int, *, depth: int = 48, out_channels: int = 3):
        super().__init__()
        self.linear = nn.Linear(feature_dim, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, 2), nn.ELU(),
            nn.ConvTranspose2d(2 * depth, depth, 6, 2), nn.ELU(),
            nn.ConvTranspose2d(depth, out_channels, 6, 2),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = self.linear(features).reshape(-1, self.linear.out_features)
        # On a 1x1 input the first transposed convolution is one matrix product:
        # out[n, o, i, j] = b[o] + sum_c x[n, c] W[c, o, i, j] (oneDNN's deconvolution is slow here).
        first = self.net[0]
        c_out, kh, kw = first.weight.shape[1:]
        x = torch.addmm(first.bias.repeat_interleave(kh * kw), x, first.weight.flatten(1)).view(-1, c_out, kh, kw)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=_CHANNELS_LAST)
            out = _run_conv_stack(self.net[1:-1], x)
            out = _conv_transpose2d_stride2(out, self.net[-1])
        else:
            out = _run_conv_stack(self.net[1:], x)
        return out.reshape(*lead, *out.shape[1:])


class _FlatMLP(MLP):
    """TorchRL's ``MLP`` run on a 2-D view of the input (same modules, same state dict).

    A linear layer on a ``[N, T, F]`` input returns a view of a 2-D product; an in-place
    activation on that view makes autograd copy the whole gradient back through
    ``CopySlices``. Flattening first keeps every activation a plain tensor.
    """

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, -1) if len(inputs) > 1 else inputs[0]
        if x.dim() == 2:
            return super().forward(x)
        out = super().forward(x.reshape(-1, x.shape[-1]))
        return out.reshape(*x.shape[:-1], *out.shape[1:])


def mlp(in_features: int, out_features: int, *, layers: int, units: int) -> MLP:
    """DreamerV2 MLP: ``layers`` hidden ELU layers of ``units``, then a linear output."""
    # In-place ELU: it reads a fresh linear output, which no backward needs (and its
    # backward then reuses the output instead of recomputing exp).
    return _FlatMLP(in_features=in_features, out_features=out_features, depth=layers, num_cells=units,
                    activation_class=nn.ELU, activation_kwargs={"inplace": True})


class MLPEncoder(nn.Module):
    """Encoder for vector observations (DreamerV2 ``mlp_keys``)."""

    def __init__(self, obs_dim: int, *, layers: int = 4, units: int = 400):
        super().__init__()
        self.net = mlp(obs_dim, units, layers=layers - 1, units=units)
        self.embed_dim = units

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return nn.functional.elu(self.net(obs))


class MLPDecoder(nn.Module):
    """Decoder for vector observations: unit-variance Normal mean."""

    def __init__(self, feature_dim: int, obs_dim: int, *, layers: int = 4, units: int = 400):
        super().__init__()
        self.net = mlp(feature_dim, obs_dim, layers=layers, units=units)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class ScalarHead(nn.Module):
    """MLP from latent features to one scalar per step (reward mean, value, discount logit)."""

    def __init__(self, feature_dim: int, *, layers: int, units: int):
        super().__init__()
        self.net = mlp(feature_dim, 1, layers=layers, units=units)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


ActorDist = Literal["trunc_normal", "tanh_normal"]


class Actor(nn.Module):
    """DreamerV2 continuous actor ``pi(a | features)``.

    ``trunc_normal`` (DreamerV2's default for continuous control): ``loc = tanh(mean)``,
    ``scale = 2 * sigmoid(std / 2) + min_std``, a Normal truncated to ``[-1, 1]``.
    ``tanh_normal``: ``loc = 5 * tanh(mean / 5)``, ``scale = softplus(std + init_std) +
    min_std``, squashed by tanh.

    Tensor in, distribution out (``actor(features)``), and it has the interface of a TorchRL
    probabilistic actor (``in_keys``, ``get_dist(tensordict)``), the contract that
    ``imagine``, ``ActorLoss`` and ``LatentPolicy`` accept. Those also use its split
    :meth:`params` / :meth:`distribution` to reuse the parameters computed in imagination
    (no second actor pass in the actor loss).

    Keyword Args:
        layers, units: hidden MLP size (4 x 400 in DreamerV2).
        dist: ``"trunc_normal"`` or ``"tanh_normal"``.
        min_std: lower bound of the scale.
        init_std: softplus offset for ``tanh_normal``.
        in_key: the features entry ``get_dist`` reads (``"features"``).
        out_key: the action entry (``"action"``).
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        *,
        layers: int = 4,
        units: int = 400,
        dist: ActorDist = "trunc_normal",
        min_std: float = 0.1,
        init_std: float = 0.0,
        in_key: str = "features",
        out_key: str = "action",
    ):
        super().__init__()
        self.in_keys, self.out_keys = [in_key], [out_key]
        if dist not in ("trunc_normal", "tanh_normal"):
            raise ValueError(f"actor dist={dist!r} is unknown; use 'trunc_normal' or 'tanh_normal'.")
        self.dist_kind, self.min_std, self.action_dim = dist, min_std, action_dim
        self.init_std = math.log(math.exp(1.0) - 1.0) + init_std if dist == "tanh_normal" else init_std
        self.net = mlp(feature_dim, 2 * action_dim, layers=layers, units=units)

    def params(self, features: torch.Tensor) -> torch.Tensor:
        """Raw distribution parameters ``[..., 2 * action_dim]``."""
        return self.net(features)

    def distribution(self, params: torch.Tensor):
        """The action distribution for :meth:`params` output."""
        mean, std = params.chunk(2, -1)
        if self.dist_kind == "trunc_normal":
            loc = torch.tanh(mean)
            scale = 2 * torch.sigmoid(std / 2) + self.min_std
            return TruncatedNormal(loc, scale, low=-1.0, high=1.0)
        loc = 5 * torch.tanh(mean / 5)
        scale = nn.functional.softplus(std + self.init_std) + self.min_std
        return TanhNormal(loc, scale, low=-1.0, high=1.0, upscale=1.0, tanh_loc=False)

    def forward(self, features: torch.Tensor):
        return self.distribution(self.params(features))

    def get_dist(self, tensordict):
        """TorchRL's probabilistic-actor interface: the distribution at ``tensordict[in_key]``."""
        return self(tensordict.get(self.in_keys[0]))


def normal_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    """NLL of ``target`` under a unit-variance Normal at ``mean``, summed over the last ``event_dims``."""
    nll = 0.5 * (target - mean).pow(2) + 0.5 * math.log(2 * math.pi)
    return nll.sum(tuple(range(-event_dims, 0))) if event_dims else nll
