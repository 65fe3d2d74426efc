"""Agents composed from modules and losses."""
from coworld_trl.agents.coworld import CoWorldAgent, CouplingConfig, make_coworld_agent
from coworld_trl.agents.dreamer import DreamerV2Agent, build_networks, make_dreamer_agent

__all__ = ["CoWorldAgent", "CouplingConfig", "DreamerV2Agent", "build_networks", "make_coworld_agent",
           "make_dreamer_agent"]
