"""TorchRL transforms used by the registry."""
from __future__ import annotations

import torch
from torchrl.data import Bounded, Composite
from torchrl.envs import Transform


class PadAction(Transform):
    """Pad the action space with dimensions the environment ignores.

    Cross-domain transfer needs one action space for source and target (Meta-World's 4-d
    arm to RoboDesk's 5-d one): the env's ``action_spec`` becomes ``padded_dim``-d, with
    the extra dimensions bounded in ``[-1, 1]``, and only the first ``env_dim`` entries of
    an action reach the environment. The stored ``action`` keeps all ``padded_dim``
    entries, so an agent learns the same shapes in both domains.
    """

    def __init__(self, padded_dim: int, *, action_key: str = "action"):
        super().__init__(in_keys_inv=[action_key], out_keys_inv=[action_key])
        self.padded_dim = padded_dim
        self.env_dim: int | None = None

    def _inv_apply_transform(self, action: torch.Tensor) -> torch.Tensor:
        if self.env_dim is None:  # specs not computed yet: read the env's own action size
            self.env_dim = self.parent.full_action_spec[self.in_keys_inv[0]].shape[-1]
        if action.shape[-1] != self.padded_dim:
            raise ValueError(f"action has {action.shape[-1]} dimensions; this env takes {self.padded_dim} "
                             f"(padded from {self.env_dim}).")
        return action[..., : self.env_dim]

    def transform_input_spec(self, input_spec: Composite) -> Composite:
        input_spec = input_spec.clone()
        key = ("full_action_spec", self.in_keys_inv[0])
        spec = input_spec[key]
        self.env_dim = spec.shape[-1]
        if self.padded_dim < self.env_dim:
            raise ValueError(f"pad_action_dim={self.padded_dim} is smaller than the env's action dim "
                             f"{self.env_dim}; use pad_action_dim >= {self.env_dim}.")
        extra = self.padded_dim - self.env_dim
        low = torch.cat([spec.space.low, -torch.ones(*spec.shape[:-1], extra, dtype=spec.dtype, device=spec.device)], -1)
        high = torch.cat([spec.space.high, torch.ones(*spec.shape[:-1], extra, dtype=spec.dtype, device=spec.device)], -1)
        input_spec[key] = Bounded(low, high, shape=(*spec.shape[:-1], self.padded_dim), dtype=spec.dtype,
                                  device=spec.device)
        return input_spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env_dim={self.env_dim}, padded_dim={self.padded_dim})"
