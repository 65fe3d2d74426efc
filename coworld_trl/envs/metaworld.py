"""Meta-World 3.x (Farama, MuJoCo 3) MT1 tasks rendered to pixels.

``gymnasium.make("Meta-World/MT1", env_name="<task>-v3", camera_name="corner")`` with a
new goal sampled from the task's 50 training goals at every reset, 500 steps per episode
(truncation, no termination on success) and ``info["success"]`` reported as ``success``.
MuJoCo 3 renders the corner camera upside down compared with the mujoco-py version the
paper used, so frames are flipped vertically here.
"""
from __future__ import annotations

import atexit
import weakref

import gymnasium as gym
import numpy as np
import torch
from tensordict.nn import TensorDictModuleBase

from coworld_trl.envs.dmc import disable_shadows_and_reflections
from coworld_trl.envs.gl import exclusive_render, make_gymnasium_context_current

EPISODE_STEPS = 500
CAMERA = "corner"
PAPER_TASKS = ("door-close", "button-press", "window-close", "handle-press", "drawer-close", "button-press-topdown")


def require_metaworld():
    try:
        import metaworld
    except ImportError as err:
        raise ImportError("Meta-World is not installed: pip install metaworld==3.1.1") from err
    return metaworld


def task_names() -> list[str]:
    """Every MT1 task, without the ``-v3`` suffix."""
    return sorted(name.removesuffix("-v3") for name in require_metaworld().ALL_V3_ENVIRONMENTS)


class PixelRepeat(gym.Wrapper):
    """Render once per agent step, repeat actions, report ``success``.

    Observations become ``{"pixels": uint8 [H, W, 3], "observation": float32 [39]}``; rewards are
    summed over the repeats and ``success`` is true when any repeated step succeeded.
    """

    def __init__(self, env: gym.Env, *, repeat: int, flip: bool):
        super().__init__(env)
        self.repeat, self.flip = repeat, flip
        self._close_at_exit = False
        state_space = env.observation_space
        size = env.unwrapped.height
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "observation": gym.spaces.Box(-np.inf, np.inf, state_space.shape, np.float32),
        })

    def _observe(self, state) -> dict:
        with exclusive_render(lambda: make_gymnasium_context_current(self.env)):  # see envs/gl.py
            frame = self.env.render()
            if not frame.any():  # a lost GL context draws nothing: rebuild the viewer once (envs/gl.py)
                self.env.unwrapped.mujoco_renderer.close()
                self.env.unwrapped.mujoco_renderer._viewers.clear()
                make_gymnasium_context_current(self.env)
                frame = self.env.render()
        if not self._close_at_exit:
            # An env still open at exit must free its GL context before MuJoCo's exit hook
            # (registered at the first render) terminates EGL; gymnasium's renderer would
            # otherwise fail noisily in __del__. Exit hooks run last-registered first.
            alive = weakref.ref(self.env)
            atexit.register(lambda: (env := alive()) is not None and env.close())
            self._close_at_exit = True
        frame = frame[::-1] if self.flip else frame
        return {"pixels": np.ascontiguousarray(frame), "observation": np.asarray(state, np.float32)}

    def reset(self, **kwargs):
        state, _ = self.env.reset(**kwargs)
        return self._observe(state), {"success": np.array([False])}

    def step(self, action):
        total, success = 0.0, False
        for _ in range(self.repeat):
            state, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            success = success or bool(info.get("success", 0.0))
            if terminated or truncated:
                break
        return self._observe(state), total, terminated, truncated, {"success": np.array([success])}


def make_metaworld_gym(task: str, *, seed: int, image_size: int, action_repeat: int, fast_render: bool = False):
    """The MT1 task as a gymnasium env with dict observations (see :class:`PixelRepeat`)."""
    require_metaworld()
    env = gym.make("Meta-World/MT1", env_name=f"{task}-v3", seed=seed, render_mode="rgb_array",
                   camera_name=CAMERA, width=image_size, height=image_size, max_episode_steps=EPISODE_STEPS,
                   disable_env_checker=True)
    if fast_render:
        disable_shadows_and_reflections(env.unwrapped.model)
    return PixelRepeat(env, repeat=action_repeat, flip=True)


class ScriptedPolicy(TensorDictModuleBase):
    """Meta-World's bundled scripted policy for ``task``, with Gaussian action noise.

    A TensorDict module reading the 39-d ``observation`` (make the env with ``state=True``)
    and writing ``action`` (clipped to ``[-1, 1]``). The scripted policies solve all six
    paper tasks, which makes expert-like datasets quick to produce.
    """

    def __init__(self, task: str, *, noise: float = 0.1, seed: int = 0):
        super().__init__()
        from metaworld.policies import ENV_POLICY_MAP

        key = f"{task}-v3"
        if key not in ENV_POLICY_MAP:
            raise ValueError(f"Meta-World has no scripted policy for {task!r}; tasks with one: "
                             f"{', '.join(sorted(k.removesuffix('-v3') for k in ENV_POLICY_MAP))}")
        self.policy, self.noise = ENV_POLICY_MAP[key](), noise
        self.rng = np.random.default_rng(seed)
        self.in_keys, self.out_keys = ["observation"], ["action"]

    def forward(self, tensordict):
        state = tensordict.get("observation").detach().cpu().numpy().astype(np.float64)
        action = self.policy.get_action(state) + self.noise * self.rng.standard_normal(4)
        tensordict.set("action", torch.as_tensor(np.clip(action, -1.0, 1.0), dtype=torch.float32))
        return tensordict
