"""Losses, one LossModule per equation, plus imagination and lambda-return helpers."""
from coworld_trl.objectives.actor import ActorLoss
from coworld_trl.objectives.imagination import discount_weights, imagine, lambda_return
from coworld_trl.objectives.value import ValueLoss
from coworld_trl.objectives.world_model import WorldModelLoss, balanced_kl

__all__ = ["ActorLoss", "ValueLoss", "WorldModelLoss", "balanced_kl", "discount_weights", "imagine", "lambda_return"]
