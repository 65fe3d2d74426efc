"""Run-level config schemas, each recipe's schema, and the presets.

Each schema lives next to what it configures: networks and losses in
:mod:`coworld_trl.agents` (``ModelConfig``, ``AgentConfig``, ``CouplingConfig``), CoWorld's
phases in :mod:`coworld_trl.training.schedules` (``ScheduleConfig``); this module holds what
the experiment layer reads (env, data, train, eval, logger) and composes them into one schema
per recipe. A recipe's schema holds only fields that recipe reads, so Hydra refuses any other.

The presets are YAML files in ``coworld_trl/training/presets`` (Hydra config groups, also read
by plain Python through :func:`dreamer_config` and :func:`coworld_config`):

* ``preset/<name>.yaml``: the DreamerV2 backbone (model, agent, data, collection) shared by
  every agent: ``paper`` (Table 7), ``reference`` (the official code), ``quick``;
* ``dreamer_preset/<name>.yaml`` and ``coworld_preset/<name>.yaml``: what each agent adds to
  the preset of the same name (run length, schedule, couplings, evaluation, checkpoints);
* ``benchmark/<name>.yaml``: Table 7's per-benchmark CoWorld values (``dmc``, ``metaworld``),
  applied before the preset so that ``reference`` replaces them with the official code's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from coworld_trl.agents import AgentConfig, CouplingConfig, ModelConfig
from coworld_trl.training.schedules import ScheduleConfig

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("paper", "reference", "quick")
BENCHMARKS = ("dmc", "metaworld")
NAN_POLICIES = ("raise", "skip")
LOGGER_BACKENDS = ("csv", "tensorboard", "wandb")


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
class DataConfig:
    """Sequences sampled for every update, and the online replay's size."""

    batch_size: int = 50
    seq_len: int = 50
    buffer_capacity: int = 2_000_000


@dataclass
class TrainConfig:
    """Process, device and collection settings of any run.

    ``prefill_frames`` of random actions start every online replay; an update follows every
    ``train_every`` agent steps. ``nan_policy``: a non-finite loss term stops the run
    (``raise``, naming the term and the update) or skips that optimiser step (``skip``,
    counted in ``train/skipped_updates``).
    """

    prefill_frames: int = 5_000
    train_every: int = 5
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    autocast: bool = False
    threads: int = 0
    keep_freed_memory: bool = True  # glibc keeps freed activations (no page faults per update; Linux)
    nan_policy: str = "raise"


@dataclass
class OnlineTrainConfig(TrainConfig):
    """An online run's length in env frames, and updates after each collection."""

    total_frames: int = 1_000_000
    updates_per_train: int = 1


@dataclass
class EvalConfig:
    """Evaluation every ``every_updates`` updates of the evaluated agent (CoWorld: the target's)."""

    every_updates: int = 10_000
    episodes: int = 10
    video: bool = True


@dataclass
class LoggerConfig:
    """Where metrics go; scalars are averaged over ``log_every_updates`` updates; a checkpoint
    every ``checkpoint_every_updates`` updates of any agent."""

    backend: str = "csv"
    project: str = "coworld_trl"
    log_every_updates: int = 100
    checkpoint_every_updates: int = 10_000


@dataclass
class RunConfig:
    """What every recipe reads: the agents' sizes and losses, data, evaluation, logging."""

    model: ModelConfig = field(default_factory=ModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "runs/run"


@dataclass
class DreamerConfig(RunConfig):
    """``recipes/dreamer_dmc.py``: online DreamerV2 on one env."""

    env: EnvConfig = field(default_factory=EnvConfig)
    train: OnlineTrainConfig = field(default_factory=OnlineTrainConfig)


@dataclass
class CoWorldConfig(RunConfig):
    """``recipes/coworld_*.py``: the target env and its offline dataset, the source env(s),
    couplings and schedule, on top of the shared model/agent sizes."""

    target: EnvConfig = field(default_factory=lambda: EnvConfig(name="dmc/walker_downhill"))
    sources: list = field(default_factory=lambda: ["dmc/walker_walk"])
    dataset: str = "datasets/dmc/walker_downhill/medium-replay"
    make_dataset_episodes: int = 0  # > 0: make a random dataset of that many episodes if missing
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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


# Each recipe's schema, by the name its YAML's defaults list uses.
SCHEMAS: dict[str, type] = {"dreamer_schema": DreamerConfig, "coworld_schema": CoWorldConfig,
                            "collect_schema": CollectDatasetConfig}


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


def read_preset(group: str, name: str) -> dict[str, Any]:
    """The values of ``presets/<group>/<name>.yaml`` (without its Hydra header)."""
    path = PRESET_DIR / group / f"{name}.yaml"
    if not path.exists():
        options = sorted(p.stem for p in (PRESET_DIR / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} {name!r}; use one of {', '.join(options)}")
    return yaml.safe_load(path.read_text()) or {}


def dreamer_config(preset: str = "paper", **overrides: dict[str, Any]) -> DreamerConfig:
    """A :class:`DreamerConfig` for ``preset`` with optional per-section overrides.

    Example: ``dreamer_config("quick", train={"total_frames": 2000})``.
    """
    config = _merge(DreamerConfig(), read_preset("preset", preset))
    _merge(config, read_preset("dreamer_preset", preset))
    return _merge(config, overrides)


def coworld_config(preset: str = "paper", benchmark: str = "dmc", **overrides: dict[str, Any]) -> CoWorldConfig:
    """A :class:`CoWorldConfig` as the recipes compose it: the benchmark's Table 7 values, the
    DreamerV2 preset, CoWorld's part of the preset, then ``overrides``."""
    config = _merge(CoWorldConfig(), read_preset("benchmark", benchmark))
    _merge(config, read_preset("preset", preset))
    _merge(config, read_preset("coworld_preset", preset))
    return _merge(config, overrides)


def to_dict(config) -> dict[str, Any]:
    return asdict(config)


def from_dict(schema: type, values: dict[str, Any]):
    """Build a nested dataclass from a plain dict (e.g. a resolved Hydra config)."""
    return _merge(schema(), values)


def register_hydra_schemas() -> None:
    """Register every recipe schema in Hydra's ConfigStore (the presets are YAML files found
    through ``hydra.searchpath``: ``pkg://coworld_trl.training.presets``)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=name, node=schema)


def validate(config) -> None:
    """Refuse impossible values of any recipe's config with a one-line error naming the value and the fix."""
    from coworld_trl.envs import env_info

    data, train = config.data, config.train
    env = config.env if isinstance(config, DreamerConfig) else config.target
    frames = env_info(env.name).episode_frames  # also refuses an unknown env name
    episode_steps = None if frames is None else -(-frames // action_repeat(env))
    checks = [
        (data.batch_size >= 1, f"data.batch_size={data.batch_size} must be >= 1"),
        (data.seq_len >= 2, f"data.seq_len={data.seq_len} must be >= 2 (one transition)"),
        (episode_steps is None or data.seq_len <= episode_steps,
         f"data.seq_len={data.seq_len} is longer than an episode of {env.name} ({episode_steps} steps); "
         f"use <= {episode_steps}"),
        (data.buffer_capacity >= data.seq_len,
         f"data.buffer_capacity={data.buffer_capacity} must be >= data.seq_len={data.seq_len}"),
        (train.train_every >= 1, f"train.train_every={train.train_every} must be >= 1 agent steps"),
        (train.nan_policy in NAN_POLICIES, f"train.nan_policy={train.nan_policy!r}; use 'raise' or 'skip'"),
        (config.agent.horizon >= 1, f"agent.horizon={config.agent.horizon} must be >= 1"),
        (config.model.latent in ("discrete", "gaussian"),
         f"model.latent={config.model.latent!r}; use 'discrete' or 'gaussian'"),
        (config.logger.backend in LOGGER_BACKENDS,
         f"logger.backend={config.logger.backend!r}; use 'csv', 'tensorboard' or 'wandb'"),
        (config.logger.log_every_updates >= 1,
         f"logger.log_every_updates={config.logger.log_every_updates} must be >= 1"),
        (config.eval.episodes >= 1, f"eval.episodes={config.eval.episodes} must be >= 1"),
    ]
    if isinstance(config, DreamerConfig):
        checks.append((train.total_frames > train.prefill_frames,
                       f"train.total_frames={train.total_frames} must exceed train.prefill_frames={train.prefill_frames}"))
    else:
        schedule, coupling = config.schedule, config.coupling
        checks += [
            (len(config.sources) >= 1,
             "sources is empty; give at least one source env, e.g. sources=[dmc/walker_walk]"),
            (schedule.rounds >= 1, f"schedule.rounds={schedule.rounds} must be >= 1"),
            (schedule.offline_updates >= 1, f"schedule.offline_updates={schedule.offline_updates} must be >= 1"),
            (schedule.online_updates >= 0, f"schedule.online_updates={schedule.online_updates} must be >= 0"),
            (min(schedule.warmup_rounds, schedule.warmup_world_model_updates, schedule.warmup_online_updates) >= 0,
             "schedule.warmup_rounds, warmup_world_model_updates and warmup_online_updates must be >= 0"),
            (coupling.value_constraint in ("max", "linear", "none"),
             f"coupling.value_constraint={coupling.value_constraint!r}; use max, linear or none"),
        ]
        for name in config.sources:
            env_info(name)
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
