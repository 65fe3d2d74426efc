"""One registry of environments by name: ``make_env("dmc/walker_downhill", seed=0)``.

Every environment comes out as a TorchRL env with the same pixel pipeline: ``pixels``
uint8 ``[3, H, W]``, ``reward`` ``[1]``, ``done``/``terminated``/``truncated``,
``is_init`` (set on the first step of an episode), actions in ``[-1, 1]``; ``success``
where the domain defines it (Meta-World, RoboDesk) and, on request, a float32 ``observation``
vector (the simulator's proprioceptive/object state), so any source can be paired with
any target.

=============  ===========================================  =====  ===============  =============
family         names                                        act.   episode          reward / step
=============  ===========================================  =====  ===============  =============
``dmc``        every dm_control suite task                  task   1000 frames,     [0, 1]
               (``dmc/walker_walk``), and the six variants         repeat 2
               ``walker_{uphill,downhill,nofoot}``,
               ``cheetah_{uphill,downhill,nopaw}``
``metaworld``  every Meta-World 3.x MT1 task                4      500 steps,       [0, 10]
               (``metaworld/button-press``)                        repeat 1
``robodesk``   every RoboDesk task (``robodesk/push_green``) 5      500 steps,       about [0, 1]
                                                                   repeat 1         (dense)
=============  ===========================================  =====  ===============  =============
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

import torch

import coworld_trl  # noqa: F401  (sets MUJOCO_GL before dm_control is imported)

from torchrl.envs import (Compose, DoubleToFloat, EnvBase, EnvCreator, ExcludeTransform, GymWrapper, InitTracker,
                          ParallelEnv, PermuteTransform, SerialEnv, TransformedEnv)
from torchrl.data import Categorical
from torchrl.envs.libs.gym import default_info_dict_reader

from coworld_trl.errors import ConfigError, MissingDependencyError
from coworld_trl.envs.transforms import PadAction

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
MAX_ACTION_REPEAT = 100
FAMILIES = ("dmc", "metaworld", "robodesk")
DEFAULT_ACTION_REPEAT = {"dmc": 2, "metaworld": 1, "robodesk": 1}
SUCCESS_SPEC = Categorical(2, shape=(1,), dtype=torch.bool)
INSTALL_HINTS = {"dmc": "pip install dm_control==1.0.28 mujoco==3.3.0", "metaworld": "pip install metaworld==3.1.1",
                 "robodesk": "pip install 'coworld_trl[robodesk]'"}


@dataclass(frozen=True)
class EnvInfo:
    """What :func:`list_envs` reports about a name (at the default action repeat)."""

    name: str
    action_dim: int
    episode_frames: int | None  # simulator control steps per episode; None: no time limit
    action_repeat: int  # the family's default
    reward_per_step: str  # per simulator control step
    success: bool  # whether the env reports ``success``
    paper: bool  # one of the paper's tasks

    @property
    def episode_steps(self) -> int | None:
        """Agent steps per episode at the default action repeat."""
        return None if self.episode_frames is None else -(-self.episode_frames // self.action_repeat)


def paper_env_names() -> set[str]:
    """The names of the paper's tasks (DMC base tasks and variants, six Meta-World, four RoboDesk)."""
    from coworld_trl.envs import dmc, metaworld, robodesk

    return ({"dmc/walker_walk", "dmc/cheetah_run"} | {f"dmc/{v}" for v in dmc.VARIANTS}
            | {f"metaworld/{t}" for t in metaworld.PAPER_TASKS} | {f"robodesk/{t}" for t in robodesk.PAPER_TASKS})


def _family_names(family: str) -> list[str]:
    """Names of one family; ``ImportError`` naming the extra when it is not installed."""
    if family == "dmc":
        from coworld_trl.envs.dmc import VARIANTS, suite_task_names

        return sorted(f"dmc/{t}" for t in [*suite_task_names(), *VARIANTS])
    if family == "metaworld":
        from coworld_trl.envs.metaworld import task_names

        return [f"metaworld/{t}" for t in task_names()]
    from coworld_trl.envs.robodesk import task_names

    return [f"robodesk/{t}" for t in task_names()]


def list_envs(family: str | None = None) -> list[str]:
    """Every name :func:`make_env` accepts (families whose extra is missing are left out)."""
    names = []
    for fam in FAMILIES if family is None else (family,):
        try:
            names += _family_names(fam)
        except ImportError:
            if family is not None:
                raise
    return names


@functools.lru_cache(maxsize=None)
def env_info(name: str) -> EnvInfo:
    """Action dim, episode length and reward range of ``name`` (builds the env once, no rendering)."""
    family, task = _parse(name)
    if family == "dmc":
        from dm_control import suite

        from coworld_trl.envs.dmc import VARIANTS, load_variant, split_suite_task

        env = load_variant(task, seed=0) if task in VARIANTS else suite.load(*split_suite_task(task))
        limit = env._step_limit  # dm_control: time_limit / control_timestep (inf without a limit)
        return EnvInfo(name, env.action_spec().shape[0], None if limit == float("inf") else int(limit),
                       DEFAULT_ACTION_REPEAT["dmc"], "[0, 1]", False, name in paper_env_names())
    if family == "metaworld":
        from coworld_trl.envs.metaworld import EPISODE_STEPS

        return EnvInfo(name, 4, EPISODE_STEPS, 1, "[0, 10]", True, name in paper_env_names())
    from coworld_trl.envs.robodesk import EPISODE_STEPS

    return EnvInfo(name, 5, EPISODE_STEPS, 1, "about [0, 1] (dense)", True, name in paper_env_names())


def _parse(name: str) -> tuple[str, str]:
    """``"dmc/walker_walk"`` -> ``("dmc", "walker_walk")``, or a one-line error listing the valid names."""
    family, _, task = name.partition("/")
    if family not in FAMILIES:
        raise ConfigError(f"unknown environment {name!r}: the family must be one of {', '.join(FAMILIES)} "
                         f"(e.g. dmc/walker_walk); `python -m coworld_trl.envs list` prints every name.")
    try:
        names = _family_names(family)
    except ImportError as err:
        raise MissingDependencyError(f"{name!r} needs the {family} package, which could not be imported ({err}); "
                                     f"{INSTALL_HINTS[family]}") from err
    if name not in names:
        close = difflib.get_close_matches(name, names, n=2)
        guess = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown environment {name!r}{guess}; valid {family} names: {', '.join(names)}")
    return family, task


def make_env(
    name: str,
    *,
    seed: int = 0,
    image_size: int = 64,
    action_repeat: int | None = None,
    pad_action_dim: int | None = None,
    fast_render: bool = False,
    state: bool = False,
) -> EnvBase:
    """Build a named environment.

    Args:
        name: ``family/task``, e.g. ``dmc/walker_downhill``; :func:`list_envs` lists them.

    Keyword Args:
        seed: environment seed (initial states, Meta-World goals, RoboDesk layouts).
        image_size: square render size (64 in the paper).
        action_repeat: simulator steps per agent step, rewards summed, one render per
            agent step (2 for DMC, 1 for Meta-World and RoboDesk by default).
        pad_action_dim: pad the action space to this many dimensions; the extra entries
            are ignored by the env (:class:`~coworld_trl.envs.transforms.PadAction`).
        fast_render: no shadows and no reflections (3-4x faster on CPU, slightly
            different pixels); the default renders what the paper saw.
        state: also return the simulator state vector as float32 ``observation``.
    """
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size={image_size} is out of range; use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} (64 in the paper).")
    family, task = _parse(name)
    action_repeat = DEFAULT_ACTION_REPEAT[family] if action_repeat is None else action_repeat
    if not 1 <= action_repeat <= MAX_ACTION_REPEAT:
        raise ConfigError(f"action_repeat={action_repeat} is out of range; use 1..{MAX_ACTION_REPEAT} "
                         f"({DEFAULT_ACTION_REPEAT[family]} for {family}).")
    kwargs = dict(seed=seed, image_size=image_size, action_repeat=action_repeat, fast_render=fast_render)
    transforms = [PermuteTransform((-1, -3, -2), in_keys=["pixels"]), InitTracker(), DoubleToFloat()]
    if family == "dmc":
        from coworld_trl.envs.dmc import make_dmc

        env = make_dmc(task, state=state, **kwargs)
    else:
        if family == "metaworld":
            from coworld_trl.envs.metaworld import make_metaworld_gym

            gym_env = make_metaworld_gym(task, **kwargs)
        else:
            from coworld_trl.envs.robodesk import RoboDeskEnv

            gym_env = RoboDeskEnv(task, **kwargs)
        env = GymWrapper(gym_env)
        env.set_info_dict_reader(default_info_dict_reader(["success"], spec={"success": SUCCESS_SPEC}))
        env.set_seed(seed)
        if not state:
            transforms.append(ExcludeTransform("observation"))
    if pad_action_dim is not None:
        transforms.append(PadAction(pad_action_dim))
    return TransformedEnv(env, Compose(*transforms))


class _KeepsThreads:
    """Closing restores the process's torch threads to what they were when the env was made.
    TorchRL 0.14's batched envs set them on close to ``min(initial pool, current + workers)``,
    so a ``SerialEnv``, which never took any, leaves one more thread per copy behind: a run
    at ``train.threads=1`` sharing a machine with another would then oversubscribe it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["_threads_when_made"] = torch.get_num_threads()

    def close(self, *args, **kwargs):
        super().close(*args, **kwargs)
        torch.set_num_threads(self.__dict__["_threads_when_made"])


class _SerialEnv(_KeepsThreads, SerialEnv):
    pass


class _ParallelEnv(_KeepsThreads, ParallelEnv):
    pass


def make_batched_env(name: str, num_envs: int, *, parallel: bool = True, seed: int = 0, **kwargs) -> EnvBase:
    """``num_envs`` copies of ``name`` in TorchRL's ``ParallelEnv`` (one process each) or
    ``SerialEnv``; copy ``i`` is seeded ``seed + i``. Keyword args go to :func:`make_env`.
    Closing it leaves the process's torch threads as they were when it was made."""
    if num_envs < 1:
        raise ConfigError(f"num_envs={num_envs}; use at least 1.")
    _parse(name)  # fail here, not in a worker process
    creators = [EnvCreator(functools.partial(make_env, name, seed=seed + i, **kwargs)) for i in range(num_envs)]
    return (_ParallelEnv if parallel else _SerialEnv)(num_envs, creators)
