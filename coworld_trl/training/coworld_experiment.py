"""Builds everything a CoWorld run needs from a :class:`CoWorldConfig`, then runs Algorithm 1.

The only place that constructs the CoWorld run's envs, buffers, collectors and logger.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

from torch.nn import functional as F
from torchrl.collectors import Collector
from torchrl.envs import RewardSum

from coworld_trl.agents.coworld import make_coworld_agent
from coworld_trl.data import DatasetError, OfflineDataset
from coworld_trl.envs import env_info, make_env
from coworld_trl.modules.policy import latent_state_primer
from coworld_trl.training.config import CoWorldConfig, action_repeat, to_dict
from coworld_trl.training.coworld_loop import CoWorldCounters, CoWorldTrainer
from coworld_trl.training.evaluation import Evaluator
from coworld_trl.training.experiment import prepare_process
from coworld_trl.training.logging import make_logger
from coworld_trl.training.replay import OnlineReplay
from coworld_trl.training.run_dir import RunDirectory

log = logging.getLogger(__name__)


def open_target_dataset(config: CoWorldConfig) -> OfflineDataset:
    """The target dataset. When it is missing and ``make_dataset_episodes`` > 0, a small
    random-policy dataset is made next to it, named for what it is
    (``<dataset parent>/random-<N>ep``), and used instead."""
    path = Path(config.dataset)
    if not (path / "metadata.json").exists():
        if config.make_dataset_episodes <= 0:
            raise DatasetError(
                f"target dataset {path} does not exist; make it with `python recipes/collect_dataset.py "
                f"env.name={config.target.name} collect.output={path} collect.kind=medium-replay "
                f"collect.reference_score=...`, or pass make_dataset_episodes=N for a small random one.")
        path = path.parent / f"random-{config.make_dataset_episodes}ep"
        if not (path / "metadata.json").exists():
            from coworld_trl.training.collect import collect_dataset
            from coworld_trl.training.config import CollectConfig, CollectDatasetConfig

            log.info("%s is missing: making a random target dataset of %d episodes at %s", config.dataset,
                     config.make_dataset_episodes, path)
            collect_dataset(CollectDatasetConfig(env=config.target, train=config.train, collect=CollectConfig(
                kind="random", output=str(path), episodes=config.make_dataset_episodes)))
        log.info("target dataset: %s", path)
    dataset = OfflineDataset(path)
    if dataset.metadata.env not in (None, config.target.name):
        raise DatasetError(f"{path} was made on {dataset.metadata.env}, but the target env is {config.target.name}; "
                           f"point dataset= at a {config.target.name} dataset.")
    return dataset


def validate_coworld(config: CoWorldConfig) -> None:
    checks = [
        (len(config.sources) >= 1, "sources is empty; give at least one source env, e.g. sources=[dmc/walker_walk]"),
        (config.schedule.rounds >= 1, f"schedule.rounds={config.schedule.rounds} must be >= 1"),
        (config.schedule.offline_updates >= 1 and config.schedule.online_updates >= 0,
         "schedule.offline_updates must be >= 1 and schedule.online_updates >= 0"),
        (min(config.schedule.warmup_rounds, config.schedule.warmup_world_model_updates,
             config.schedule.warmup_online_updates) >= 0,
         "schedule.warmup_rounds, warmup_world_model_updates and warmup_online_updates must be >= 0"),
        (config.data.batch_size >= 1 and config.data.seq_len >= 2, "data.batch_size >= 1 and data.seq_len >= 2 needed"),
        (config.coupling.value_constraint in ("max", "linear", "none"),
         f"coupling.value_constraint={config.coupling.value_constraint!r}; use max, linear or none"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for name in [config.target.name, *config.sources]:
        env_info(name)  # an unknown name fails here with the list of valid ones


def run_coworld(config: CoWorldConfig) -> CoWorldCounters:
    """Train CoWorld (Algorithm 1) and write everything to ``config.output_dir``."""
    validate_coworld(config)
    dataset = open_target_dataset(config)
    run_dir = RunDirectory(config.output_dir, to_dict(config))
    train = config.train
    device = prepare_process(train)

    # One action space for every domain: the widest, the others padded (ignored dims).
    dims = {name: env_info(name).action_dim for name in [config.target.name, *config.sources]}
    action_dim = max(dims.values())
    if dataset.metadata.action_dim not in (dims[config.target.name], action_dim):
        raise DatasetError(f"{dataset.path} has {dataset.metadata.action_dim}-d actions, but "
                           f"{config.target.name} takes {dims[config.target.name]}-d.")
    repeat = action_repeat(config.target)

    def make(name: str, seed: int):
        return make_env(name, seed=seed, image_size=config.target.image_size, action_repeat=repeat,
                        fast_render=config.target.fast_render,
                        pad_action_dim=action_dim if dims[name] < action_dim else None)

    agent = make_coworld_agent(config.model, config.agent, config.coupling, action_dim=action_dim,
                               num_sources=len(config.sources),
                               obs_shape=(3, config.target.image_size, config.target.image_size),
                               device=device, autocast=train.autocast)
    if train.compile:
        for a in (agent.target, *agent.sources):
            a.world_model.encoder.compile()
            a.world_model.decoder.compile()

    logger = make_logger(config.logger.backend, run_dir.path, project=config.logger.project)
    eval_env = make(config.target.name, train.seed + 10_000)
    eval_env.append_transform(latent_state_primer(agent.target.world_model))
    target_wm, gamma = agent.target.world_model, config.agent.gamma

    def state_value(rollout):
        features = target_wm.rssm.features(rollout["latent_stoch"].to(device), rollout["latent_deter"].to(device))
        return agent.target.critic(features).cpu()

    evaluator = Evaluator(eval_env, episodes=config.eval.episodes, logger=logger, video=config.eval.video,
                          state_value=state_value, gamma=gamma)

    target_buffer = dataset.replay_buffer(batch_size=config.data.batch_size, seq_len=config.data.seq_len, prefetch=2)
    pad = action_dim - dataset.metadata.action_dim

    def sample_target():
        batch = target_buffer.sample().reshape(config.data.batch_size, config.data.seq_len)
        if pad:
            batch["action"] = F.pad(batch["action"], (0, pad))
        return batch.to(device)

    def make_source_collector(index: int, policy, random_steps: int):
        env = make(config.sources[index], train.seed + 1 + index * 1_000 + random.randrange(1_000))
        env.append_transform(latent_state_primer(agent.sources[index].world_model))
        env.append_transform(RewardSum())
        return Collector(env, policy, frames_per_batch=train.train_every, total_frames=-1,
                         init_random_frames=random_steps, device=device, storing_device="cpu")

    source_replays = [OnlineReplay(run_dir.path / f"replay_source{index}", capacity=config.data.buffer_capacity,
                                   seq_len=config.data.seq_len) for index in range(len(config.sources))]
    trainer = CoWorldTrainer(agent, sample_target=sample_target, source_replays=source_replays,
                             make_source_collector=make_source_collector, evaluator=evaluator, logger=logger,
                             run_dir=run_dir, schedule=config.schedule, batch_size=config.data.batch_size,
                             frames_per_step=repeat,
                             prefill_frames=train.prefill_frames, train_every=train.train_every)
    return trainer.run()


def coworld_recipe(config_name: str, config_dir: str | Path):
    """The Hydra entry point of a CoWorld recipe: ``config_dir/<config_name>.yaml`` on top
    of the :class:`CoWorldConfig` schema and its presets (``preset=quick|paper|reference``)."""
    import hydra
    from omegaconf import OmegaConf

    from coworld_trl.training.config import COWORLD_PRESETS, from_dict, register_hydra_configs

    register_hydra_configs(CoWorldConfig, COWORLD_PRESETS)

    @hydra.main(config_path=str(Path(config_dir).resolve()), config_name=config_name, version_base=None)
    def main(cfg) -> None:
        run_coworld(from_dict(CoWorldConfig, OmegaConf.to_container(cfg, resolve=True)))

    return main
