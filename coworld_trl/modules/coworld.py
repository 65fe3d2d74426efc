"""CoWorld's modules: the state alignment head ``g`` and reward relabelling (Eq. 4).

Both work on ``[B, T]`` target sequences in TED layout (see ``modules/world_model.py``).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch.nn import functional as F

from coworld_trl.modules.keys import require
from coworld_trl.modules.world_model import WorldModel, previous_step


class AlignmentHead(TensorDictModuleBase):
    """The state alignment head ``g``: a softmax over the encoder embedding (Eq. 3).

    Writes log-probabilities (the KL of Eq. 3 is computed from them, stably).

    In keys: ``embedding`` ``[..., E]``. Out keys: ``embedding_log_probs`` ``[..., E]``.
    """

    def __init__(self, *, in_key: str = "embedding", out_key: str = "embedding_log_probs"):
        super().__init__()
        self.in_keys, self.out_keys = [in_key], [out_key]

    @staticmethod
    def log_probs(embedding: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(embedding.float(), dim=-1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set(self.out_keys[0], self.log_probs(tensordict.get(self.in_keys[0])))
        return tensordict


def check_same_latent_size(source: WorldModel, target: WorldModel) -> None:
    """The source critic scores target latents and the models' embeddings are compared:
    both need identical feature and embedding sizes."""
    if source.feature_dim != target.feature_dim or source.encoder.embed_dim != target.encoder.embed_dim:
        raise ValueError(
            f"source and target world models differ in size (features {source.feature_dim} vs {target.feature_dim}, "
            f"embedding {source.encoder.embed_dim} vs {target.encoder.embed_dim}); CoWorld needs identical "
            f"model configs for both agents (same latent, stoch, classes, deter, cnn_depth)."
        )


def relabel_rewards(
    source: WorldModel,
    tensordict: TensorDictBase,
    *,
    k: float,
    reward_key: NestedKey = ("next", "reward"),
    owner: str = "RewardRelabeler",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4: ``r~ = (1 - k) sg(r'(h~, z~)) + k r_T`` on a ``[B, T]`` target batch.

    Runs the source world model's encoder and posterior over the target observations,
    driven by the TARGET actions (read with the source model's keys), on a view holding
    only those inputs, so the target's own latents in ``tensordict`` stay untouched.

    Returns:
        ``(relabelled, predicted, mask)``, each ``[B, T]``: the relabelled reward
        (detached), the source head's prediction ``r'`` (with its graph, for Eq. 5) and the
        rows that carry a reward (not an episode start).
    """
    keys = source.tensor_keys
    fix = "the source world model reads the target batch with its own keys: set_keys(...) on its WorldModelLoss"
    action = require(tensordict, keys.action, owner, fix, what="target batch")
    if action.shape[-1] != source.action_dim:
        raise ValueError(f"{owner}: target actions are {action.shape[-1]}-d but the source world model takes "
                         f"{source.action_dim}-d ({keys.action!r} has shape {tuple(action.shape)}); pad both domains "
                         f"to one action dim (make_env(..., pad_action_dim=...)).")
    view = tensordict.empty()
    for key in (keys.obs, keys.action, keys.is_init):
        view.set(key, require(tensordict, key, owner, fix, what="target batch"))
    source(view)
    is_first = source.is_first(view)
    predicted = source.reward_head(source.features(view))
    reward = require(tensordict, reward_key, owner, "rename it with set_keys(reward=...)", what="target batch")
    target_reward = previous_step(reward.reshape(is_first.shape), is_first)
    return (1 - k) * predicted.detach() + k * target_reward, predicted, ~is_first


class RewardRelabeler(TensorDictModuleBase):
    """Eq. 4 as a TensorDictModule: relabel target rewards with the source world model.

    Runs the source world model's encoder and posterior over the target observations,
    driven by the TARGET actions, and predicts the reward ``r'(h~, z~)`` at each state.
    The relabelled reward is ``r~ = (1 - k) sg(r'(h~, z~)) + k r_T`` (:func:`relabel_rewards`,
    which :class:`~coworld_trl.objectives.MixedRewardLoss` calls too).

    Everything is aligned with the states (``s_t`` and the reward that led to ``o_t``,
    i.e. ``previous_step`` of ``("next", "reward")``); rows that start an episode carry no
    reward and are masked.

    Args:
        source: the source :class:`WorldModel` (its action dim must equal the target's;
            pad the source env's actions with ``make_env(..., pad_action_dim=...)``).

    Keyword Args:
        k: weight of the target's own reward (0.3 for Meta-World/RoboDesk, 0.9 for DMC in
            Table 7; the official code uses 0.3 everywhere).
        reward_key: the target reward (TED ``("next", "reward")``).
        out_keys: the three entries written (defaults below).

    In keys: the source model's observation, action and ``is_init`` keys, ``reward_key``.
    Out keys: ``relabelled_reward`` ``[B, T]`` (detached), ``source_reward`` ``[B, T]``
    (the source head's prediction, with its graph, for Eq. 5), ``relabel_mask`` ``[B, T]``.
    """

    def __init__(self, source: WorldModel, *, k: float = 0.3, reward_key: NestedKey = ("next", "reward"),
                 out_keys: tuple[NestedKey, NestedKey, NestedKey] = ("relabelled_reward", "source_reward",
                                                                     "relabel_mask")):
        super().__init__()
        check_relabel_weight(k)
        self.source, self.k, self.reward_key = source, k, reward_key
        self.out_keys = list(out_keys)

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.source.tensor_keys
        return [keys.obs, keys.action, keys.is_init, self.reward_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        outputs = relabel_rewards(self.source, tensordict, k=self.k, reward_key=self.reward_key)
        for key, value in zip(self.out_keys, outputs):
            tensordict.set(key, value)
        return tensordict


def check_relabel_weight(k: float) -> None:
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"k={k} is outside [0, 1]; it weighs the target reward against the source prediction.")
