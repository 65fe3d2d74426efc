"""Losses, one LossModule per equation, plus imagination and lambda-return helpers, and the
baselines' pieces: Offline DV2's reward-uncertainty penalty and EWC."""
from coworld_trl.objectives.actor import ActorLoss
from coworld_trl.objectives.alignment import StateAlignmentLoss, embedding_kl, select_source
from coworld_trl.objectives.ewc import DEFAULT_EWC_LMBDA, EWCPenalty, diagonal_fisher
from coworld_trl.objectives.imagination import ImaginedKeys, discount_weights, imagine, lambda_return
from coworld_trl.objectives.min_max_value import MinMaxValuePenalty
from coworld_trl.objectives.mixed_reward import EtaSchedule, MixedRewardLoss
from coworld_trl.objectives.uncertainty import UNCERTAINTY_KINDS, RewardUncertaintyPenalty
from coworld_trl.objectives.value import ValueLoss
from coworld_trl.objectives.world_model import WorldModelLoss, balanced_kl

__all__ = [
    "ActorLoss", "DEFAULT_EWC_LMBDA", "EWCPenalty", "EtaSchedule", "ImaginedKeys", "MinMaxValuePenalty",
    "MixedRewardLoss", "RewardUncertaintyPenalty", "StateAlignmentLoss", "UNCERTAINTY_KINDS", "ValueLoss",
    "WorldModelLoss", "balanced_kl", "diagonal_fisher", "discount_weights", "embedding_kl", "imagine",
    "lambda_return", "select_source",
]
