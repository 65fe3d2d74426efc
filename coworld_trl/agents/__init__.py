"""Agents composed from modules and losses."""
from coworld_trl.agents.dreamer import DreamerV2Agent, build_networks, make_dreamer_agent

__all__ = ["DreamerV2Agent", "build_networks", "make_dreamer_agent"]
