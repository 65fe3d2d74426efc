"""Networks: DreamerV2 encoders/decoders, RSSM, heads, actor, world model; CoWorld's
alignment head and reward relabelling."""
from coworld_trl.modules.coworld import AlignmentHead, RewardRelabeler, check_same_latent_size, relabel_rewards
from coworld_trl.modules.keys import require
from coworld_trl.modules.networks import (
    Actor,
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    ScalarHead,
    normal_nll,
    pixels_to_float,
)
from coworld_trl.modules.policy import LatentPolicy, check_policy_actor, latent_state_primer, policy_distribution
from coworld_trl.modules.rssm import RSSM, EnsemblePriorHeads, GRUCell, LatentSpec
from coworld_trl.modules.world_model import WorldModel, WorldModelKeys, make_world_model, previous_step

__all__ = [
    "Actor", "AlignmentHead", "ConvDecoder", "ConvEncoder", "EnsemblePriorHeads", "GRUCell", "LatentPolicy",
    "LatentSpec", "MLPDecoder", "MLPEncoder",
    "RSSM", "RewardRelabeler", "ScalarHead", "WorldModel", "WorldModelKeys", "check_policy_actor",
    "check_same_latent_size", "latent_state_primer", "make_world_model", "normal_nll", "pixels_to_float",
    "policy_distribution", "previous_step", "relabel_rewards", "require",
]
