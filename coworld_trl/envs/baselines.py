"""Random-policy baselines and snapshots of registered environments."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coworld_trl.envs.registry import make_env


def random_policy_stats(name: str, *, episodes: int = 10, seed: int = 0, fast_render: bool = False) -> dict:
    """Undiscounted return (mean, std) and success rate of uniformly random actions.

    ``fast_render`` changes only the pixels, never the physics or the rewards.
    """
    env = make_env(name, seed=seed, fast_render=fast_render)
    torch.manual_seed(seed)
    returns, successes = [], []
    for _ in range(episodes):
        rollout = env.rollout(100_000, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
        if ("next", "success") in rollout.keys(True):
            successes.append(rollout["next", "success"].any().item())
    env.close()
    result = dict(env=name, episodes=episodes, return_mean=float(np.mean(returns)), return_std=float(np.std(returns)))
    if successes:
        result["success_rate"] = float(np.mean(successes))
    return result


def first_frame(name: str, *, seed: int = 0, image_size: int = 64, steps: int = 0) -> np.ndarray:
    """``[H, W, 3]`` uint8 frame after reset (and ``steps`` zero actions)."""
    env = make_env(name, seed=seed, image_size=image_size)
    td = env.reset()
    for _ in range(steps):
        td["action"] = torch.zeros(env.action_spec.shape)
        td = env.step(td)["next"]
    env.close()
    return td["pixels"].permute(1, 2, 0).numpy()


def save_png(path: Path, image: np.ndarray) -> None:
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise ImportError("writing PNGs needs imageio; install the extra: pip install 'coworld_trl[video]'.") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
