"""Environments by name, with one pixel pipeline."""
from coworld_trl.envs.registry import list_envs, make_env

__all__ = ["list_envs", "make_env"]
