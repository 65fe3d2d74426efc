"""Environments by name, with one pixel pipeline (see :mod:`coworld_trl.envs.registry`)."""
from coworld_trl.envs.registry import EnvInfo, env_info, list_envs, make_batched_env, make_env
from coworld_trl.envs.transforms import PadAction

__all__ = ["EnvInfo", "PadAction", "env_info", "list_envs", "make_batched_env", "make_env"]
