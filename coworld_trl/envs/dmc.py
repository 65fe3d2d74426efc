"""DeepMind Control Suite tasks rendered to pixels at the agent's step rate."""
from __future__ import annotations

import dm_env
import numpy as np
from dm_control.suite.wrappers import pixels
from dm_env import specs


class PixelActionRepeat(pixels.Wrapper):
    """dm_env wrapper: repeat each action ``repeat`` times, sum the rewards, render once.

    dm_control's own ``pixels.Wrapper`` renders after every physics-level step, so an
    action repeat on top of it renders frames nobody sees; rendering dominates the cost on
    CPU. Frames are copied because dm_control reuses its render buffer.

    It subclasses ``pixels.Wrapper`` only because TorchRL's ``DMControlWrapper`` accepts
    that type; none of the parent's rendering runs (its ``__init__`` is not called).
    """

    def __init__(self, env, *, repeat: int, image_size: int, camera_id: int = 0):
        self._env, self._repeat = env, repeat
        self._render_kwargs = dict(height=image_size, width=image_size, camera_id=camera_id)
        self._pixels_spec = specs.Array((image_size, image_size, 3), np.uint8, name="pixels")

    def __getattr__(self, name):  # physics, task, ... of the wrapped env
        return getattr(self._env, name)

    def _observe(self, step: dm_env.TimeStep, reward) -> dm_env.TimeStep:
        pixels = np.array(self._env.physics.render(**self._render_kwargs), copy=True)
        return step._replace(observation={"pixels": pixels}, reward=reward)

    def reset(self) -> dm_env.TimeStep:
        return self._observe(self._env.reset(), None)

    def step(self, action) -> dm_env.TimeStep:
        reward = 0.0
        for _ in range(self._repeat):
            step = self._env.step(action)
            reward += step.reward or 0.0
            if step.last():
                break
        return self._observe(step, reward)

    def observation_spec(self):
        return {"pixels": self._pixels_spec}

    def action_spec(self):
        return self._env.action_spec()

    def reward_spec(self):
        return self._env.reward_spec()

    def discount_spec(self):
        return self._env.discount_spec()


def make_dmc(domain: str, task: str, *, seed: int, image_size: int, action_repeat: int):
    """A DMC task as a TorchRL ``DMControlWrapper`` with a uint8 HWC ``pixels`` observation."""
    from dm_control import suite
    from torchrl.envs import DMControlWrapper

    env = suite.load(domain, task, task_kwargs={"random": seed})
    return DMControlWrapper(PixelActionRepeat(env, repeat=action_repeat, image_size=image_size))
