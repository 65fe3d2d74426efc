"""The one place that builds envs, collectors, replays, the offline dataset and the evaluator
from a recipe config. Schedules call these; agents and losses receive what they return."""
from __future__ import annotations

import functools
import logging
import random
from pathlib import Path
from typing import Callable

import torch
from tensordict import TensorDictBase
from torch.nn import functional as F
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, RewardSum
from torchrl.record.loggers import Logger

from coworld_trl.data import DatasetError, OfflineDataset
from coworld_trl.envs import env_info, make_env
from coworld_trl.modules.policy import latent_state_primer, policy_distribution
from coworld_trl.training.config import DataConfig, EnvConfig, action_repeat
from coworld_trl.training.evaluation import Evaluator
from coworld_trl.training.replay import OnlineReplay

log = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 10_000


def make_run_env(env: EnvConfig, seed: int, *, name: str | None = None, action_dim: int | None = None) -> EnvBase:
    """``name`` (default ``env.name``) rendered as ``env`` says, its actions padded to ``action_dim``
    when it takes fewer."""
    name = name or env.name
    pad = action_dim if action_dim is not None and env_info(name).action_dim < action_dim else None
    return make_env(name, seed=seed, image_size=env.image_size, action_repeat=action_repeat(env),
                    fast_render=env.fast_render, pad_action_dim=pad)


def make_collector(env: EnvBase, agent, *, random_steps: int, steps_per_batch: int,
                   device: torch.device) -> Collector:
    """An endless TorchRL collector of ``agent``'s acting policy (random actions for the first
    ``random_steps``), ``steps_per_batch`` agent steps per batch, batches kept on the CPU."""
    env.append_transform(latent_state_primer(agent.world_model))
    env.append_transform(RewardSum())
    return Collector(env, agent.policy(), frames_per_batch=steps_per_batch, total_frames=-1,
                     init_random_frames=random_steps, device=device, storing_device="cpu")


def collector_seed(base: int) -> int:
    """A fresh env seed per collector start, so a resumed run does not replay the same episodes."""
    return base + random.randrange(1_000)


def make_replay(path: Path, data: DataConfig, *, device: torch.device | None = None) -> OnlineReplay:
    """An online replay in ``path``; with ``data.replay_on_device`` its rows are mirrored on ``device``."""
    return OnlineReplay(path, capacity=data.buffer_capacity, seq_len=data.seq_len, whole_episodes=data.whole_episodes,
                        device=device if data.replay_on_device else None)


def make_eval_env(config, agent, env_name: str) -> EnvBase:
    """The env evaluations run ``agent`` in: ``env_name`` with the run's settings and evaluation
    seed, carrying the policy's latent state."""
    env_config = config.env if hasattr(config, "env") else config.target
    env = make_run_env(env_config, config.train.seed + EVAL_SEED_OFFSET, name=env_name,
                       action_dim=agent.world_model.action_dim)
    env.append_transform(latent_state_primer(agent.world_model))
    return env


def make_evaluator(config, agent, env_name: str, *, logger: Logger, device: torch.device) -> Evaluator:
    """Evaluation episodes of ``agent`` on ``env_name``: return, success, value bias, actor spread, one video."""
    env = make_eval_env(config, agent, env_name)
    world_model = agent.world_model

    def features(rollout: TensorDictBase) -> torch.Tensor:  # of the posterior states the policy acted from
        return world_model.rssm.features(rollout["latent_stoch"].to(device), rollout["latent_deter"].to(device))

    def state_value(rollout: TensorDictBase) -> torch.Tensor:
        return agent.critic(features(rollout)).cpu()

    def actor_scale(rollout: TensorDictBase) -> torch.Tensor | None:
        dist = policy_distribution(agent.actor, features(rollout))
        return dist.scale.cpu() if hasattr(dist, "scale") else None  # an actor without a scale parameter

    return Evaluator(env, episodes=config.eval.episodes, logger=logger, video=config.eval.video,
                     state_value=state_value, actor_scale=actor_scale, gamma=config.agent.gamma)


def open_target_dataset(config) -> OfflineDataset:
    """The target dataset of an offline agent's config. When it is missing and
    ``make_dataset_episodes`` > 0, a small random-policy dataset is made next to it, named for
    what it is (``<dataset parent>/random-<N>ep``), and used instead; ``config.dataset`` then
    names the dataset used, so the run's ``config.yaml`` records it."""
    path = Path(config.dataset)
    if path.exists() and not (path / "metadata.json").exists():  # never replaced by a random dataset
        raise DatasetError(f"dataset={path} is not a coworld_trl dataset (no metadata.json); convert npz or hdf5 "
                           f"episodes with `python -m coworld_trl.data convert {path} NEW_FOLDER` and pass "
                           f"dataset=NEW_FOLDER.")
    if not path.exists():
        if config.make_dataset_episodes <= 0:
            raise DatasetError(
                f"target dataset {path} does not exist; make it with `python recipes/collect_dataset.py "
                f"env.name={config.target.name} collect.output={path} collect.kind=medium-replay`, "
                f"or pass make_dataset_episodes=N for a small random one.")
        path = path.parent / f"random-{config.make_dataset_episodes}ep"
        if not (path / "metadata.json").exists():
            from coworld_trl.training.collect import collect_dataset
            from coworld_trl.training.config import CollectConfig, CollectDatasetConfig, OnlineTrainConfig

            log.info("%s is missing: making a random target dataset of %d episodes at %s", config.dataset,
                     config.make_dataset_episodes, path)
            train = OnlineTrainConfig(seed=config.train.seed, device=config.train.device)
            collect_dataset(CollectDatasetConfig(env=config.target, train=train, collect=CollectConfig(
                kind="random", output=str(path), episodes=config.make_dataset_episodes)))
        log.info("target dataset: %s", path)
    dataset = OfflineDataset(path)
    if dataset.metadata.env not in (None, config.target.name):
        raise DatasetError(f"{path} was made on {dataset.metadata.env}, but the target env is {config.target.name}; "
                           f"point dataset= at a {config.target.name} dataset.")
    size, wanted = dataset.metadata.image_size, config.target.image_size
    if size != wanted:
        raise DatasetError(f"{path} holds {size}x{size} images, but target.image_size={wanted}; use a dataset "
                           f"rendered at {wanted}x{wanted}.")
    config.dataset = str(path)
    return dataset


def dataset_sampler(dataset: OfflineDataset, data: DataConfig, *, env_name: str, action_dim: int,
                    device: torch.device) -> Callable[[], TensorDictBase]:
    """``() -> [B, T]`` sequences of ``env_name``'s dataset on ``device``, actions zero-padded to
    the agent's ``action_dim`` (the widest of the run's domains). With ``data.replay_on_device``
    the dataset is loaded onto ``device`` once and batches are gathered there (the same
    sequences; :class:`~coworld_trl.data.dataset.DeviceSampler`); otherwise they are sampled
    from the memory-mapped files, two ahead in background threads, and copied over."""
    env_dim = env_info(env_name).action_dim
    if dataset.metadata.action_dim not in (env_dim, action_dim):
        raise DatasetError(f"{dataset.path} has {dataset.metadata.action_dim}-d actions, but {env_name} takes "
                           f"{env_dim}-d; use a dataset of {env_name}.")
    pad = action_dim - dataset.metadata.action_dim
    if data.replay_on_device:
        draw = functools.partial(dataset.device_sampler(batch_size=data.batch_size, seq_len=data.seq_len,
                                                        device=device).sample, data.batch_size * data.seq_len)
    else:
        draw = dataset.replay_buffer(batch_size=data.batch_size, seq_len=data.seq_len, prefetch=2).sample

    def sample() -> TensorDictBase:
        batch = draw().reshape(data.batch_size, data.seq_len)
        if pad:
            batch["action"] = F.pad(batch["action"], (0, pad))
        return batch.to(device)

    return sample
