"""Builds everything an online DreamerV2 run needs from a :class:`DreamerConfig`, then runs it.

This is the only place that constructs envs, buffers, collectors and loggers; the agent
and the loop receive them.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torchrl.collectors import Collector
from torchrl.envs import RewardSum

from coworld_trl.agents import make_dreamer_agent
from coworld_trl.envs import make_env
from coworld_trl.modules.policy import latent_state_primer
from coworld_trl.training.config import DreamerConfig, action_repeat, to_dict, validate
from coworld_trl.training.evaluation import Evaluator
from coworld_trl.training.logging import make_logger
from coworld_trl.training.loop import Counters, LoopSettings, OnlineTrainer
from coworld_trl.training.memory import keep_freed_memory
from coworld_trl.training.replay import OnlineReplay
from coworld_trl.training.run_dir import RunDirectory


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_process(train) -> torch.device:
    """Threads, allocator, seeds and device of a training process (``TrainConfig``); returns the device."""
    if train.threads:
        torch.set_num_threads(train.threads)
    if train.keep_freed_memory:
        keep_freed_memory()
    seed_everything(train.seed)
    return resolve_device(train.device)


def run_online_dreamer(config: DreamerConfig, *, on_collect: Callable | None = None,
                       stop_return: float | None = None) -> Counters:
    """Train DreamerV2 online on ``config.env`` and write everything to ``config.output_dir``.

    ``on_collect`` sees every collected batch (see :class:`OnlineTrainer`); ``stop_return``
    finishes the run once an evaluation reaches that mean return.
    """
    validate(config)
    run_dir = RunDirectory(config.output_dir, to_dict(config))
    train = config.train
    device = prepare_process(train)

    repeat = action_repeat(config.env)

    def env_factory(seed: int):
        return make_env(config.env.name, seed=seed, image_size=config.env.image_size,
                        action_repeat=repeat, fast_render=config.env.fast_render)

    probe = env_factory(train.seed)
    action_dim = probe.action_spec.shape[-1]
    obs_shape = tuple(probe.observation_spec["pixels"].shape)
    probe.close()

    agent = make_dreamer_agent(config.model, config.agent, action_dim=action_dim, obs_shape=obs_shape,
                               device=device, autocast=train.autocast)
    if train.compile:
        for module in (agent.world_model.encoder, agent.world_model.decoder):
            module.compile()

    logger = make_logger(config.logger.backend, run_dir.path, project=config.logger.project)
    eval_env = env_factory(train.seed + 10_000)
    eval_env.append_transform(latent_state_primer(agent.world_model))
    evaluator = Evaluator(eval_env, episodes=config.eval.episodes, logger=logger, video=config.eval.video)

    def make_collector(policy, steps: int, random_steps: int):
        env = env_factory(train.seed + random.randrange(1_000))
        env.append_transform(latent_state_primer(agent.world_model))
        env.append_transform(RewardSum())
        return Collector(env, policy, frames_per_batch=train.train_every, total_frames=steps,
                         init_random_frames=random_steps, device=device, storing_device="cpu")

    replay = OnlineReplay(run_dir.path / "replay", capacity=config.data.buffer_capacity, seq_len=config.data.seq_len)
    settings = LoopSettings(
        total_frames=train.total_frames, prefill_frames=train.prefill_frames,
        frames_per_step=repeat, train_every=train.train_every,
        updates_per_train=train.updates_per_train, batch_size=config.data.batch_size,
        eval_every_updates=config.eval.every_updates, checkpoint_every_updates=config.logger.checkpoint_every_updates,
        stop_return=stop_return,
    )
    trainer = OnlineTrainer(agent, make_collector=make_collector, replay=replay, evaluator=evaluator,
                            logger=logger, run_dir=run_dir, settings=settings, on_collect=on_collect)
    return trainer.run()
