"""CoWorld's modules: the state alignment head ``g`` and the reward relabeler (Eq. 4).

Both work on ``[B, T]`` target sequences in TED layout (see ``modules/world_model.py``).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch.nn import functional as F

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


class RewardRelabeler(TensorDictModuleBase):
    """Eq. 4: relabel target rewards with the source world model.

    Runs the source world model's encoder and posterior over the target observations,
    driven by the TARGET actions, and predicts the reward ``r'(h~, z~)`` at each state.
    The relabelled reward is ``r~ = (1 - k) sg(r'(h~, z~)) + k r_T``.

    Everything is aligned with the states (``s_t`` and the reward that led to ``o_t``,
    i.e. ``previous_step`` of ``("next", "reward")``); rows that start an episode carry no
    reward and are masked.

    Args:
        source: the source :class:`WorldModel` (its action dim must equal the target's;
            pad the source env's actions with ``make_env(..., pad_action_dim=...)``).

    Keyword Args:
        k: weight of the target's own reward (0.3 for Meta-World/RoboDesk, 0.9 for DMC in
            Table 7; the official code uses 0.3 everywhere).

    In keys: ``pixels``, ``action``, ``is_init``, ``("next", "reward")``.
    Out keys: ``relabelled_reward`` ``[B, T]`` (detached), ``source_reward`` ``[B, T]``
    (the source head's prediction, with its graph, for Eq. 5), ``relabel_mask`` ``[B, T]``.
    """

    def __init__(self, source: WorldModel, *, k: float = 0.3, reward_key=("next", "reward")):
        super().__init__()
        if not 0.0 <= k <= 1.0:
            raise ValueError(f"k={k} is outside [0, 1]; it weighs the target reward against the source prediction.")
        self.source, self.k, self.reward_key = source, k, reward_key
        self.in_keys = [source.obs_key, source.action_key, source.is_init_key, reward_key]
        self.out_keys = ["relabelled_reward", "source_reward", "relabel_mask"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        source = self.source
        action_dim = tensordict.get(source.action_key).shape[-1]
        if action_dim != source.action_dim:
            raise ValueError(f"target actions are {action_dim}-d but the source world model takes {source.action_dim}-d; "
                             f"pad both domains to one action dim (make_env(..., pad_action_dim=...)).")
        # The source model filters a view holding only the inputs, so the target's own
        # latents in ``tensordict`` are left untouched.
        view = tensordict.select(*self.in_keys[:3]).clone(False)
        source(view)
        is_first = source.is_first(view)
        predicted = source.reward_head(source.features(view))
        target_reward = previous_step(tensordict.get(self.reward_key).reshape(is_first.shape), is_first)
        tensordict.set("relabelled_reward", (1 - self.k) * predicted.detach() + self.k * target_reward)
        tensordict.set("source_reward", predicted)
        tensordict.set("relabel_mask", ~is_first)
        return tensordict
