"""Agents composed from modules and losses, and the schemas that configure them."""
from coworld_trl.agents.coworld import CoWorldAgent, CouplingConfig, make_coworld_agent
from coworld_trl.agents.dreamer import (
    AgentConfig,
    DreamerV2Agent,
    ModelConfig,
    NonFiniteLossError,
    build_networks,
    make_dreamer_agent,
)

__all__ = ["AgentConfig", "CoWorldAgent", "CouplingConfig", "DreamerV2Agent", "ModelConfig", "NonFiniteLossError",
           "build_networks", "make_coworld_agent", "make_dreamer_agent"]
