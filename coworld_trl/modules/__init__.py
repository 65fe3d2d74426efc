"""Networks: DreamerV2 encoders/decoders, RSSM, heads, actor, world model; CoWorld's
alignment head and reward relabeler."""
from coworld_trl.modules.coworld import AlignmentHead, RewardRelabeler, check_same_latent_size
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
from coworld_trl.modules.rssm import RSSM, GRUCell
from coworld_trl.modules.world_model import WorldModel, make_world_model, previous_step

__all__ = [
    "Actor", "AlignmentHead", "RewardRelabeler", "check_same_latent_size", "ConvDecoder", "ConvEncoder", "GRUCell", "MLPDecoder", "MLPEncoder", "RSSM", "ScalarHead",
    "WorldModel", "make_world_model", "normal_nll", "pixels_to_float", "previous_step",
]
