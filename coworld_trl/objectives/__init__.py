"""Losses, one LossModule per equation, plus imagination and lambda-return helpers."""
from coworld_trl.objectives.actor import ActorLoss
from coworld_trl.objectives.alignment import StateAlignmentLoss, embedding_kl, select_source
from coworld_trl.objectives.imagination import ImaginedKeys, discount_weights, imagine, lambda_return
from coworld_trl.objectives.min_max_value import MinMaxValuePenalty
from coworld_trl.objectives.mixed_reward import EtaSchedule, MixedRewardLoss
from coworld_trl.objectives.value import ValueLoss
from coworld_trl.objectives.world_model import WorldModelLoss, balanced_kl

__all__ = [
    "ActorLoss", "EtaSchedule", "ImaginedKeys", "MinMaxValuePenalty", "MixedRewardLoss", "StateAlignmentLoss",
    "ValueLoss", "WorldModelLoss", "balanced_kl", "discount_weights", "embedding_kl", "imagine", "lambda_return",
    "select_source",
]
