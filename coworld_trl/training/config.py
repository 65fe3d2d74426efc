"""Dataclass config schemas and the ``paper`` / ``reference`` / ``quick`` presets.

The presets live here, once, as overrides of the schema defaults; Hydra recipes register
them as the ``preset`` config group (:func:`register_hydra_configs`) and plain Python
uses :func:`dreamer_config`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Optional

from coworld_trl.agents.coworld import CouplingConfig  # the couplings' schema lives with the agent


@dataclass
class EnvConfig:
    """Which env (any :func:`coworld_trl.envs.list_envs` name) and how it is rendered."""

    name: str = "dmc/walker_walk"
    image_size: int = 64
    action_repeat: Optional[int] = None  # None: the family's default (2 for DMC, 1 otherwise)
    fast_render: bool = False  # no shadows/reflections: faster on CPU, slightly different pixels


def action_repeat(env: EnvConfig) -> int:
    """The configured action repeat, or the env family's default."""
    from coworld_trl.envs import env_info

    return env.action_repeat or env_info(env.name).action_repeat


@dataclass
class ModelConfig:
    """World model, actor and critic sizes (defaults: Table 7 of the paper)."""

    latent: str = "discrete"
    stoch: int = 32
    classes: int = 32
    deter: int = 600
    hidden: int = 600
    norm_gru: bool = True
    cnn_depth: int = 48
    mlp_units: int = 400
    reward_layers: int = 4
    discount_head: bool = False
    actor_layers: int = 4
    actor_dist: str = "trunc_normal"
    critic_layers: int = 4


@dataclass
class AgentConfig:
    """Loss scales, optimisers and behaviour learning (defaults: Table 7 / DreamerV2)."""

    model_lr: float = 2e-4
    actor_lr: float = 4e-5
    critic_lr: float = 1e-4
    adam_eps: float = 1e-5
    grad_clip: float = 100.0
    kl_scale: float = 1.0
    kl_balance: float = 0.8
    free_nats: float = 1.0
    free_nats_placement: str = "mean"
    reward_scale: float = 1.0
    discount_scale: float = 1.0
    horizon: int = 15
    gamma: float = 0.995
    lmbda: float = 0.95
    rho: float = 1.0
    entropy_scale: float = 1e-4
    slow_critic_interval: int = 100
    expl_noise: float = 0.0


@dataclass
class DataConfig:
    batch_size: int = 50
    seq_len: int = 50
    buffer_capacity: int = 2_000_000


@dataclass
class TrainConfig:
    total_frames: int = 1_000_000
    prefill_frames: int = 5_000
    train_every: int = 5
    updates_per_train: int = 1
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    autocast: bool = False
    threads: int = 0
    keep_freed_memory: bool = True  # glibc keeps freed activations (no page faults per update; Linux)


@dataclass
class EvalConfig:
    every_updates: int = 10_000
    episodes: int = 10
    video: bool = True


@dataclass
class LoggerConfig:
    backend: str = "csv"
    project: str = "coworld_trl"
    checkpoint_every_updates: int = 10_000


@dataclass
class DreamerConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "runs/dreamer"


@dataclass
class ScheduleConfig:
    """Algorithm 1's phases. A source update follows every ``train.train_every`` source env steps.

    Defaults follow the paper for DMC: 3e4 frames of source pretraining, then rounds of
    K1 = 2e4 target updates and K2 = 2e4 source updates. ``warmup_rounds`` > 0 inserts the
    official code's warm-up between pretraining and the rounds: each warm-up round trains
    only the target's world model (with state alignment) for ``warmup_world_model_updates``,
    then runs an online phase of ``warmup_online_updates`` source updates.
    """

    source_pretrain_frames: int = 30_000
    warmup_rounds: int = 0
    warmup_world_model_updates: int = 10_000
    warmup_online_updates: int = 1_000
    rounds: int = 6
    offline_updates: int = 20_000  # K1 per round
    online_updates: int = 20_000  # K2 per round
    eval_every_target_updates: int = 5_000
    checkpoint_every_updates: int = 5_000


@dataclass
class CoWorldConfig:
    """A CoWorld run: the target env and its offline dataset, the source env(s), shared
    model/agent sizes, couplings and schedule."""

    target: EnvConfig = field(default_factory=lambda: EnvConfig(name="dmc/walker_downhill"))
    sources: list = field(default_factory=lambda: ["dmc/walker_walk"])
    dataset: str = "datasets/dmc/walker_downhill/medium-replay"
    make_dataset_episodes: int = 0  # > 0: make a random dataset of that many episodes if missing
    model: ModelConfig = field(default_factory=ModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "runs/coworld"


@dataclass
class CollectConfig:
    """What ``recipes/collect_dataset.py`` makes (see :mod:`coworld_trl.training.collect`)."""

    kind: str = "medium-replay"  # medium-replay | random | expert | scripted
    output: str = "datasets/dataset"
    episodes: int = 10  # random / expert / scripted
    checkpoint: Optional[str] = None  # expert: a DreamerV2 run directory
    noise: float = 0.1  # scripted: Gaussian action noise
    reference_score: Optional[float] = None  # medium-replay: the task's expert return
    fraction: float = 1 / 3  # medium-replay: stop once eval return >= fraction * reference_score


@dataclass
class CollectDatasetConfig(DreamerConfig):
    """A DreamerV2 config (the agent that medium-replay trains) plus what to collect."""

    collect: CollectConfig = field(default_factory=CollectConfig)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Table 7 of the paper: discrete 32x32 latents, 600 units, batch 50 x 50.
    "paper": {},
    # The official CoWorld code's DreamerV2 port on DMC.
    "reference": {
        "model": dict(latent="gaussian", stoch=50, deter=200, hidden=200, cnn_depth=32, mlp_units=400,
                      reward_layers=2, critic_layers=3),
        "agent": dict(model_lr=3e-4, actor_lr=8e-5, critic_lr=8e-5, reward_scale=2.0, gamma=0.99),
        "data": dict(batch_size=150, seq_len=50),
    },
    # Small enough to learn on 2 CPU cores in about an hour.
    "quick": {
        "model": dict(stoch=16, classes=16, deter=200, hidden=200, cnn_depth=16, mlp_units=200,
                      reward_layers=2, actor_layers=2, critic_layers=2),
        "agent": dict(model_lr=3e-4, actor_lr=1e-4, critic_lr=1e-4, gamma=0.99),
        "data": dict(batch_size=16, seq_len=32, buffer_capacity=200_000),
        "train": dict(total_frames=30_000, prefill_frames=2_000, train_every=5),
        "eval": dict(every_updates=500, episodes=3),
        "logger": dict(checkpoint_every_updates=500),
    },
}


def _merge(config, overrides: dict[str, Any]):
    for key, value in overrides.items():
        if not hasattr(config, key):
            valid = ", ".join(f.name for f in fields(config))
            raise ValueError(f"unknown config key {key!r} in {type(config).__name__}; valid keys: {valid}")
        current = getattr(config, key)
        if is_dataclass(current) and isinstance(value, dict):
            _merge(current, value)
        else:
            setattr(config, key, value)
    return config


def dreamer_config(preset: str = "paper", **overrides: dict[str, Any]) -> DreamerConfig:
    """A :class:`DreamerConfig` for ``preset`` with optional per-section overrides.

    Example: ``dreamer_config("quick", train={"total_frames": 2000})``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    config = _merge(DreamerConfig(), copy.deepcopy(PRESETS[preset]))
    return _merge(config, overrides)


def validate(config: DreamerConfig) -> None:
    """Refuse impossible values with a one-line error naming the value and the fix."""
    data, train = config.data, config.train
    from coworld_trl.envs import env_info

    frames = env_info(config.env.name).episode_frames  # also refuses an unknown env name
    episode_steps = None if frames is None else -(-frames // action_repeat(config.env))
    checks = [
        (data.batch_size >= 1, f"data.batch_size={data.batch_size} must be >= 1"),
        (data.seq_len >= 2, f"data.seq_len={data.seq_len} must be >= 2 (one transition)"),
        (episode_steps is None or data.seq_len <= episode_steps,
         f"data.seq_len={data.seq_len} is longer than an episode of {config.env.name} ({episode_steps} steps); use <= {episode_steps}"),
        (data.buffer_capacity >= data.seq_len, f"data.buffer_capacity={data.buffer_capacity} must be >= data.seq_len={data.seq_len}"),
        (train.train_every >= 1, f"train.train_every={train.train_every} must be >= 1 agent steps"),
        (train.total_frames > train.prefill_frames,
         f"train.total_frames={train.total_frames} must exceed train.prefill_frames={train.prefill_frames}"),
        (config.agent.horizon >= 1, f"agent.horizon={config.agent.horizon} must be >= 1"),
        (config.model.latent in ("discrete", "gaussian"), f"model.latent={config.model.latent!r}; use 'discrete' or 'gaussian'"),
        (config.logger.backend in ("csv", "tensorboard", "wandb"),
         f"logger.backend={config.logger.backend!r}; use 'csv', 'tensorboard' or 'wandb'"),
        (config.eval.episodes >= 1, f"eval.episodes={config.eval.episodes} must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def to_dict(config) -> dict[str, Any]:
    return asdict(config)


def from_dict(schema: type, values: dict[str, Any]):
    """Build a nested dataclass from a plain dict (e.g. a resolved Hydra config)."""
    return _merge(schema(), values)


def register_hydra_configs(schema: type = DreamerConfig, presets: dict | None = None) -> None:
    """Register ``schema`` as ``<name>_schema`` and each preset in the ``preset`` group."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="dreamer_schema", node=schema)
    for name, overrides in (presets or PRESETS).items():
        store.store(group="preset", name=name, node=overrides, package="_global_")


def _coworld_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """The DreamerV2 presets' sizes plus CoWorld's schedule for each."""
    presets = copy.deepcopy(PRESETS)
    presets["reference"]["coupling"] = dict(k=0.3)  # the official code relabels with k = 0.3 everywhere
    # The official DMC schedule, in updates (a phase of 1e4 frames at action repeat 2 and one
    # update every 5 agent steps is 1,000 updates).
    presets["reference"]["schedule"] = dict(source_pretrain_frames=30_000, warmup_rounds=2,
                                            warmup_world_model_updates=10_000, warmup_online_updates=1_000,
                                            rounds=6, offline_updates=2_000, online_updates=2_000)
    presets["quick"].update(
        schedule=dict(source_pretrain_frames=4_000, rounds=2, offline_updates=100, online_updates=100,
                      eval_every_target_updates=100, checkpoint_every_updates=100),
        make_dataset_episodes=6,  # a small random target dataset is made on the fly if missing
    )
    presets["quick"]["eval"] = dict(episodes=2)
    return presets


COWORLD_PRESETS = _coworld_presets()
