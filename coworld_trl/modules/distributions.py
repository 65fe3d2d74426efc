"""A truncated Normal without host synchronisation, for compiled and CUDA-graphed updates.

TorchRL's ``TruncatedNormal`` checks its bounds with ``.tolist()`` when it is built and its
``log_prob`` branches on ``.any()`` of the samples out of bounds: a host sync each (16 per
behaviour update at horizon 15) and a graph break under ``torch.compile``. This one computes
the same quantities with the same formulas, the same constants and the same random draws (a
seed gives the same samples), with no data-dependent Python: the bounds are numbers fixed at
construction, out-of-bounds values get ``-inf`` through ``torch.where``.
"""
from __future__ import annotations

import math

import torch
from torch import distributions as D

EPS = 1e-6  # TorchRL's clamp of probabilities, scales and bounds
LOG_INV_SQRT_2PI = -0.5 * math.log(2 * math.pi)
LOG_SQRT_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def _standard_cdf(x: torch.Tensor) -> torch.Tensor:
    return (0.5 * (1 + torch.erf(x / math.sqrt(2)))).clamp(EPS, 1 - EPS)


def _standard_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)


class TruncatedNormal(D.Distribution):
    """``Normal(loc, scale)`` truncated to ``[low, high]`` in each action dim; the last dim is
    the event (log-probabilities and entropies are summed over it).

    The interface of TorchRL's ``TruncatedNormal`` that the agents use: ``rsample`` (by the
    inverse CDF; values clipped to the bounds with the gradient of the unclipped sample),
    ``sample``, ``log_prob`` (values clamped ``EPS`` inside the bounds, ``-inf`` outside),
    ``entropy``, ``mean`` (= ``deterministic_sample``) and ``mode`` (``loc`` clipped to the bounds).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, *, low: float = -1.0, high: float = 1.0):
        if not low < high:
            raise ValueError(f"TruncatedNormal bounds low={low}, high={high}: low must be < high.")
        scale = scale.clamp_min(EPS)
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.low, self.high = float(low), float(high)
        self._a = (self.low - self.loc) / self.scale  # the bounds in standard units
        self._b = (self.high - self.loc) / self.scale
        self._cdf_a = _standard_cdf(self._a)
        self._z = (_standard_cdf(self._b) - self._cdf_a).clamp(EPS, 1 - EPS)
        self._log_z = self._z.log()
        self._pdf_a, self._pdf_b = _standard_pdf(self._a), _standard_pdf(self._b)
        super().__init__(batch_shape=self.loc.shape[:-1], event_shape=self.loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc - self.scale * (self._pdf_b - self._pdf_a) / self._z

    @property
    def deterministic_sample(self) -> torch.Tensor:
        return self.mean

    @property
    def mode(self) -> torch.Tensor:
        return self.loc.clamp(self.low + EPS, self.high - EPS)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = self.loc.new_empty(shape).uniform_(EPS, 1 - EPS)
        p = (self._cdf_a + u * self._z).clamp(EPS, 1 - EPS)
        sample = self.loc + self.scale * math.sqrt(2) * torch.erfinv(2 * p - 1)
        # The clipped value, the unclipped sample's gradient (as TorchRL's in-place data copy).
        return sample.detach().clamp(self.low, self.high) + (sample - sample.detach())

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        inside = value.clamp(self.low + EPS, self.high - EPS)
        z = (inside - self.loc) / self.scale
        log_prob = (LOG_INV_SQRT_2PI - self._log_z - 0.5 * z**2 - self.scale.log()).sum(-1)
        outside = ((value < self.low) | (value > self.high)).any(-1)
        return torch.where(outside, torch.full_like(log_prob, -math.inf), log_prob)

    def entropy(self) -> torch.Tensor:
        tails = (self._pdf_b * self._b - self._pdf_a * self._a) / self._z
        return (LOG_SQRT_2PI_E + self._log_z - 0.5 * tails + self.scale.log()).sum(-1)
