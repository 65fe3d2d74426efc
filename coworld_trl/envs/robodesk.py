"""RoboDesk 1.0.0 (optional extra) on the project's pins, as a gymnasium env.

RoboDesk was written for gym and Pillow < 10. Its two compatibility problems are handled
here, and only here, when it is imported:

1. ``import gym``: RoboDesk only uses ``gym.Env`` and ``gym.spaces``; it is given a stand-in
   module with gymnasium's, so the unmaintained gym package is never imported.
2. ``Image.ANTIALIAS`` (removed in Pillow 10) is aliased to ``Image.LANCZOS``, the same filter.

RoboDesk draws its random initial state from numpy's global generator; each env here
owns a generator and swaps it in around ``reset``, so seeds are reproducible and other
code's use of ``np.random`` is left alone.
"""
from __future__ import annotations

import contextlib
import sys
import types

import gymnasium as gym
import numpy as np

from coworld_trl.envs.dmc import disable_shadows_and_reflections
from coworld_trl.envs.gl import exclusive_render

EPISODE_STEPS = 500
# RoboDesk's own names; the paper writes "drawer_open" for RoboDesk's "open_drawer".
ALIASES = {"drawer_open": "open_drawer"}
PAPER_TASKS = ("push_green", "open_slide", "drawer_open", "upright_block_off_table")


def import_robodesk():
    """Import RoboDesk with the two fixes above; a clear error when the extra is missing."""
    from PIL import Image

    if not hasattr(Image, "ANTIALIAS"):  # also when something else imported RoboDesk first
        Image.ANTIALIAS = Image.LANCZOS
    module = sys.modules.get("robodesk.robodesk")
    if module is not None:
        return module
    gym_stand_in = types.ModuleType("gym")
    gym_stand_in.Env, gym_stand_in.spaces = gym.Env, gym.spaces
    previous = sys.modules.get("gym")
    sys.modules["gym"] = gym_stand_in
    try:
        import robodesk.robodesk as module
    except ImportError as err:
        raise ImportError("RoboDesk is not installed; install the extra: pip install 'coworld_trl[robodesk]'.") from err
    finally:
        if previous is None:
            sys.modules.pop("gym", None)
        else:
            sys.modules["gym"] = previous
    return module


# RoboDesk 1.0.0's task table (``RoboDesk.reward_functions``): 9 core tasks, 9 extra.
TASKS = ("open_slide", "open_drawer", "push_green", "stack", "upright_block_off_table", "flat_block_in_bin",
         "flat_block_in_shelf", "lift_upright_block", "lift_ball", "push_blue", "push_red", "flat_block_off_table",
         "ball_off_table", "upright_block_in_bin", "ball_in_bin", "upright_block_in_shelf", "ball_in_shelf",
         "lift_flat_block")


def task_names() -> list[str]:
    """Every task name, RoboDesk's own and the paper's aliases."""
    return sorted([*TASKS, *ALIASES])


@contextlib.contextmanager
def _global_numpy_rng(rng: np.random.RandomState):
    """Run a block with ``np.random``'s global state replaced by ``rng``'s (and advance ``rng``)."""
    saved = np.random.get_state()
    np.random.set_state(rng.get_state())
    try:
        yield
    finally:
        rng.set_state(np.random.get_state())
        np.random.set_state(saved)


class RoboDeskEnv(gym.Env):
    """A RoboDesk task with observations ``{"pixels": uint8 [H, W, 3], "observation": float32}``.

    Dense reward (RoboDesk's default), 500 steps per episode (truncation), ``success``
    in ``info`` from RoboDesk's own success test. Action repeat is RoboDesk's: it renders
    once per agent step.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str, *, seed: int, image_size: int, action_repeat: int, fast_render: bool = False):
        module = import_robodesk()
        self.task = ALIASES.get(task, task)
        self._env = module.RoboDesk(task=self.task, reward="dense", action_repeat=action_repeat,
                                    episode_length=EPISODE_STEPS, image_size=image_size)
        if fast_render:
            disable_shadows_and_reflections(self._env.physics.model)
        self._rng = np.random.RandomState(seed)
        state_size = 9 + 9 + 3 + 26 + 26
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self._env.action_dim,), np.float32)
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "observation": gym.spaces.Box(-np.inf, np.inf, (state_size,), np.float32),
        })

    def _observe(self, obs: dict) -> dict:
        state = np.concatenate([np.ravel(obs[k]) for k in
                                ("qpos_robot", "qvel_robot", "end_effector", "qpos_objects", "qvel_objects")])
        return {"pixels": np.array(obs["image"], np.uint8), "observation": state.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options=None):
        if seed is not None:
            self._rng = np.random.RandomState(seed)
        with _global_numpy_rng(self._rng), exclusive_render():  # RoboDesk renders inside reset/step (envs/gl.py)
            obs = self._env.reset()
        return self._observe(obs), {"success": np.array([False])}

    def step(self, action):
        with exclusive_render():
            obs, reward, done, _ = self._env.step(np.asarray(action, np.float64))
        success = bool(self._env._get_task_reward(self.task, "success"))
        return self._observe(obs), float(reward), False, bool(done), {"success": np.array([success])}
