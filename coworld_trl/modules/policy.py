"""The acting policy: filter the latent state one step at a time, then act.

Collectors carry the recurrent state in the TensorDict: :func:`latent_state_primer`
adds zero-initialised ``latent_stoch``, ``latent_deter`` and ``prev_action`` entries to
the env, and :class:`LatentPolicy` reads them with the current observation and writes
them back, so the same policy runs in a collector, in ``env.rollout`` or in a
``ParallelEnv`` without hidden Python state.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.envs.utils import ExplorationType, exploration_type

from coworld_trl.modules.world_model import WorldModel

STATE_KEYS = ("latent_stoch", "latent_deter", "prev_action")


def latent_state_primer(world_model: WorldModel) -> TensorDictPrimer:
    """Env transform that adds the policy's recurrent state, zeroed at every reset."""
    rssm = world_model.rssm
    return TensorDictPrimer(
        latent_stoch=Unbounded(shape=(rssm.stoch_dim,)),
        latent_deter=Unbounded(shape=(rssm.deter,)),
        prev_action=Unbounded(shape=(rssm.action_dim,)),
        reset_key="_reset",
    )


class LatentPolicy(TensorDictModuleBase):
    """Filter ``o_t`` into the posterior ``s_t`` and sample ``a_t ~ pi(. | s_t)``.

    Under ``ExplorationType.RANDOM`` (collectors set it) it samples the actor and adds
    ``expl_noise`` Gaussian noise; otherwise (evaluation) it takes the actor's mean and
    the posterior mode.

    In keys: ``pixels``, ``is_init`` and the state keys of :func:`latent_state_primer`.
    Out keys: ``action`` and the updated state keys.
    """

    def __init__(self, world_model: WorldModel, actor: torch.nn.Module, *, expl_noise: float = 0.0):
        super().__init__()
        self.world_model, self.actor, self.expl_noise = world_model, actor, expl_noise
        self.in_keys = [world_model.obs_key, "is_init", *STATE_KEYS]
        self.out_keys = ["action", *STATE_KEYS]

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        wm = self.world_model
        explore = exploration_type() == ExplorationType.RANDOM
        param = next(wm.parameters())
        stoch, deter = wm.rssm.filter_step(
            tensordict.get("latent_stoch").to(param),
            tensordict.get("latent_deter").to(param),
            tensordict.get("prev_action").to(param),
            wm.encoder(tensordict.get(wm.obs_key).to(param.device)),
            tensordict.get("is_init").to(param.device),
            sample=explore,
        )
        dist = self.actor(wm.rssm.features(stoch, deter))
        if explore:
            action = dist.sample()
            if self.expl_noise > 0:
                action = (action + self.expl_noise * torch.randn_like(action)).clamp(-1, 1)
        else:
            action = dist.deterministic_sample
        device = tensordict.device
        tensordict.set("action", action.to(device) if device is not None else action)
        for key, value in zip(STATE_KEYS, (stoch, deter, action)):
            tensordict.set(key, value.to(device) if device is not None else value)
        return tensordict
