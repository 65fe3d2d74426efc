"""DreamerV2 encoders, decoders, heads and actor (plain ``nn.Module`` on tensors).

The world model wires these together and exposes them through TensorDict keys; the
modules themselves stay tensor-in/tensor-out so the hot loops carry no dict overhead.
"""
from __future__ import annotations

import math
import functools
from numbers import Number
from typing import Literal

import torch
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all
from torch.nn import functional as F
from torchrl.modules import MLP, TanhNormal

_CHANNELS_LAST = torch.channels_last


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` pixels to float ``[-0.5, 0.5]`` (DreamerV2's scaling)."""
    if pixels.dtype == torch.uint8:
        # Same ops as ``pixels.float() / 255.0 - 0.5``, in place on the fresh float copy.
        return pixels.float().div_(255.0).sub_(0.5)
    return pixels.float() / 255.0 - 0.5


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
        return _run_conv_stack(self.net, x).reshape(*lead, self.embed_dim)


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


def _grad_mode_cached(fn):
    """Cache a method's result per distribution and per grad mode.

    A value first computed under ``no_grad`` (e.g. by ``sample()``) has no graph, so it is
    not reused when gradients are enabled later (e.g. by ``log_prob``).
    """

    @functools.wraps(fn)
    def wrapper(self):
        key = (fn.__name__, torch.is_grad_enabled())
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = fn(self)
        return cache[key]

    return property(wrapper)


_SQRT_2 = math.sqrt(2)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_LOG_INV_SQRT_2PI = math.log(_INV_SQRT_2PI)
_LOG_SQRT_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


class TruncNormal(torch.distributions.Distribution):
    """Normal ``(loc, scale)`` truncated to ``[low, high]``, independent over the last dim.

    The same distribution, with the same values, gradients and random stream, as
    ``torchrl.modules.TruncatedNormal(loc, scale, low=low, high=high, tanh_loc=False)``
    (``rsample``, ``sample``, ``log_prob``, ``entropy``, ``mean``, ``variance``, ``mode``,
    ``deterministic_sample``), written as plain tensor ops: the quantities are computed
    when first used (and cached) rather than all at construction, and nothing reads tensors back to the
    host (TorchRL's constructor and ``log_prob`` each synchronise once), which matters in
    the imagination loop where a distribution is built and sampled every step.

    As in TorchRL, ``scale`` is clamped at ``1e-6``; a sample keeps the gradient of the
    unclipped reparameterised value while its value is clipped to ``[low, high]``;
    ``log_prob`` clamps the value ``1e-6`` inside the bounds and is ``-inf`` outside them.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.greater_than(1e-6)}
    has_rsample = True
    eps = 1e-6

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, low: float | torch.Tensor = -1.0,
                 high: float | torch.Tensor = 1.0):
        if isinstance(low, Number) and isinstance(high, Number) and not high > low:
            raise RuntimeError("TruncNormal high values must be strictly greater than low values")
        self.loc, self.scale = loc, scale
        self.low = torch.as_tensor(low, device=loc.device, dtype=loc.dtype)
        self.high = torch.as_tensor(high, device=loc.device, dtype=loc.dtype)
        shape = torch.broadcast_shapes(loc.shape, scale.shape)
        super().__init__(shape[:-1], shape[-1:], validate_args=False)

    # ------------------------------------------------- standardised parameters
    @_grad_mode_cached
    def _params(self) -> tuple[torch.Tensor, ...]:
        """``(loc, scale, a, b, alpha, beta)`` broadcast, with the clamped scale."""
        scale = self.scale.clamp_min(self.eps)
        loc, scale, a, b = broadcast_all(self.loc, scale, self.low.expand_as(self.loc), self.high.expand_as(scale))
        return loc, scale, a, b, (a - loc) / scale, (b - loc) / scale

    @staticmethod
    def _little_phi(x: torch.Tensor) -> torch.Tensor:
        return (-(x**2) * 0.5).exp() * _INV_SQRT_2PI

    def _big_phi(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 * (1 + (x * _INV_SQRT_2).erf())).clamp(self.eps, 1 - self.eps)

    @_grad_mode_cached
    def _big_phi_a(self) -> torch.Tensor:
        return self._big_phi(self._params[4])

    @_grad_mode_cached
    def _Z(self) -> torch.Tensor:
        return (self._big_phi(self._params[5]) - self._big_phi_a).clamp(self.eps, 1 - self.eps)

    @_grad_mode_cached
    def _log_Z(self) -> torch.Tensor:
        return self._Z.log()

    @_grad_mode_cached
    def _log_scale(self) -> torch.Tensor:
        return self._params[1].log()

    @_grad_mode_cached
    def _moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(little_phi_b - little_phi_a, (little_phi_b b - little_phi_a a) / Z)`` of the standard normal."""
        alpha, beta = self._params[4:]
        phi_a, phi_b = self._little_phi(alpha), self._little_phi(beta)
        return phi_b - phi_a, (phi_b * beta - phi_a * alpha) / self._Z

    # ------------------------------------------------------------- statistics
    @property
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    @property
    def mean(self) -> torch.Tensor:
        loc, scale = self._params[:2]
        return (-self._moments[0] / self._Z) * scale + loc

    @property
    def variance(self) -> torch.Tensor:
        d_phi, lpbb_m_lpaa_d_z = self._moments
        return (1 - lpbb_m_lpaa_d_z - (d_phi / self._Z) ** 2) * self._params[1] ** 2

    @property
    def mode(self) -> torch.Tensor:
        loc, _, a, b = self._params[:4]
        return torch.clamp(loc, a + self.eps, b - self.eps)

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mean

    def entropy(self) -> torch.Tensor:
        entropy = _LOG_SQRT_2PI_E + self._log_Z - 0.5 * self._moments[1]
        return (entropy + self._log_scale).sum(-1)

    # --------------------------------------------------------------- sampling
    def rsample(self, sample_shape: torch.Size | tuple = torch.Size()) -> torch.Tensor:
        loc, scale, a, b, alpha, _ = self._params
        p = alpha.new_empty(self._extended_shape(sample_shape)).uniform_(self.eps, 1 - self.eps)
        y = (self._big_phi_a + p * self._Z).clamp(self.eps, 1 - self.eps)
        sample = (_SQRT_2 * (2 * y - 1).erfinv()) * scale + loc
        # Clip the value into [low, high] but keep the gradient of the unclipped sample.
        sample.data.copy_(torch.minimum(torch.maximum(sample.detach(), a.detach()), b.detach()))
        return sample

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale, a, b = self._params[:4]
        outside = ((self.low > value) | (self.high < value)).any(-1)
        value = torch.clamp(value, (a + self.eps).expand_as(value), (b - self.eps).expand_as(value))
        z = (value - loc) / scale
        log_prob = ((_LOG_INV_SQRT_2PI - self._log_Z - (z**2) * 0.5) - self._log_scale).sum(-1)
        return log_prob.masked_fill(outside, -math.inf)


ActorDist = Literal["trunc_normal", "tanh_normal"]


class Actor(nn.Module):
    """DreamerV2 continuous actor ``pi(a | features)``.

    ``trunc_normal`` (DreamerV2's default for continuous control): ``loc = tanh(mean)``,
    ``scale = 2 * sigmoid(std / 2) + min_std``, a Normal truncated to ``[-1, 1]``.
    ``tanh_normal``: ``loc = 5 * tanh(mean / 5)``, ``scale = softplus(std + init_std) +
    min_std``, squashed by tanh.

    Keyword Args:
        layers, units: hidden MLP size (4 x 400 in DreamerV2).
        dist: ``"trunc_normal"`` or ``"tanh_normal"``.
        min_std: lower bound of the scale.
        init_std: softplus offset for ``tanh_normal``.
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
    ):
        super().__init__()
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
            return TruncNormal(loc, scale, low=-1.0, high=1.0)
        loc = 5 * torch.tanh(mean / 5)
        scale = nn.functional.softplus(std + self.init_std) + self.min_std
        return TanhNormal(loc, scale, low=-1.0, high=1.0, upscale=1.0, tanh_loc=False)

    def forward(self, features: torch.Tensor):
        return self.distribution(self.params(features))


def normal_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    """NLL of ``target`` under a unit-variance Normal at ``mean``, summed over the last ``event_dims``."""
    nll = 0.5 * (target - mean).pow(2) + 0.5 * math.log(2 * math.pi)
    return nll.sum(tuple(range(-event_dims, 0))) if event_dims else nll
