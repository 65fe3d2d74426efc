"""One registry of environments by name: ``make_env("dmc/walker_walk", seed=0)``.

Every environment comes out as a TorchRL env with the same pixel pipeline: ``pixels``
uint8 ``[3, H, W]``, ``reward`` ``[1]``, ``done``/``terminated``/``truncated`` and
``is_init`` (set on the first step of an episode), actions in ``[-1, 1]``.
"""
from __future__ import annotations

import coworld_trl  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)

from torchrl.envs import Compose, DoubleToFloat, EnvBase, InitTracker, PermuteTransform, TransformedEnv

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
DMC_DEFAULT_ACTION_REPEAT = 2


def dmc_task_names() -> list[str]:
    """``dmc/<domain>_<task>`` for every task of the dm_control suite."""
    from dm_control import suite

    return sorted(f"dmc/{domain}_{task}" for domain, task in suite.ALL_TASKS)


def list_envs() -> list[str]:
    """Every name :func:`make_env` accepts."""
    return dmc_task_names()


def _split_dmc(task: str) -> tuple[str, str]:
    from dm_control import suite

    for domain, name in suite.ALL_TASKS:
        if f"{domain}_{name}" == task:
            return domain, name
    raise ValueError(f"unknown environment 'dmc/{task}'; valid names: {', '.join(dmc_task_names())}")


def make_env(
    name: str,
    *,
    seed: int = 0,
    image_size: int = 64,
    action_repeat: int | None = None,
) -> EnvBase:
    """Build a named environment.

    Args:
        name: ``family/task``, e.g. ``dmc/walker_walk``; :func:`list_envs` lists them.

    Keyword Args:
        seed: environment seed.
        image_size: square render size (64 in the paper).
        action_repeat: frames per agent step (2 for DMC by default); rewards are summed.
    """
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is out of range; use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} (64 in the paper).")
    family, _, task = name.partition("/")
    if family != "dmc":
        raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(list_envs())}")
    action_repeat = DMC_DEFAULT_ACTION_REPEAT if action_repeat is None else action_repeat
    if not 1 <= action_repeat <= 100:
        raise ValueError(f"action_repeat={action_repeat} is out of range; use 1..100 (2 for DMC).")
    from coworld_trl.envs.dmc import make_dmc

    domain, task_name = _split_dmc(task)
    env = make_dmc(domain, task_name, seed=seed, image_size=image_size, action_repeat=action_repeat)
    return TransformedEnv(env, Compose(PermuteTransform((-1, -3, -2), in_keys=["pixels"]), InitTracker(), DoubleToFloat()))
