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
* ``<agent>_preset/<name>.yaml`` (``dreamer``, ``coworld``, ``offline_dv2``, ``finetune``):
  what each agent adds to the preset of the same name (run length, schedule, couplings,
  evaluation, checkpoints);
* ``<agent>_benchmark/<name>.yaml`` (``coworld``, ``finetune``): the paper's per-benchmark
  values (``dmc``, ``metaworld``), applied before the preset so that ``reference`` replaces
  them with the official code's and ``quick`` shortens them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from coworld_trl.agents import AgentConfig, CouplingConfig, ModelConfig
from coworld_trl.errors import ConfigError
from coworld_trl.modules.policy import EVAL_ACTIONS
from coworld_trl.training.schedules import (
    EWCConfig,
    FinetuneScheduleConfig,
    OfflineScheduleConfig,
    ScheduleConfig,
    UncertaintyConfig,
)

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
    """Sequences sampled for every update, and the online replay's size. ``whole_episodes``:
    the online replay stores each episode when it ends, as DreamerV2 does (``False``: rows as
    collected, so the episode being collected is sampled too). ``replay_on_device``: the offline
    dataset and the online replays keep a copy of their rows on ``train.device`` and batches are
    gathered there (same sequences for a seed; device memory: the dataset, and
    ``buffer_capacity`` rows per online replay)."""

    batch_size: int = 50
    seq_len: int = 50
    buffer_capacity: int = 2_000_000
    whole_episodes: bool = True
    replay_on_device: bool = False


@dataclass
class TrainConfig:
    """Process, device and collection settings of any run.

    ``prefill_frames`` of random actions start every online replay; an update follows every
    ``train_every`` agent steps. ``nan_policy``: a non-finite loss term stops the run
    (``raise``, naming the term and the update) or skips that optimiser step (``skip``,
    counted in ``train/skipped_updates``). ``compile``: ``torch.compile`` each update's forward
    and backward; ``cuda_graphs`` (with ``compile``, CUDA only): replay them as CUDA graphs;
    ``autocast``: bf16 forward passes (see ``docs/gpu.md``).
    """

    prefill_frames: int = 5_000
    train_every: int = 5
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    cuda_graphs: bool = False
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
    every ``checkpoint_every_updates`` updates of any agent and every ``checkpoint_every_minutes``
    of wall clock (0: off), so a killed run loses minutes."""

    backend: str = "csv"
    project: str = "coworld_trl"
    log_every_updates: int = 100
    checkpoint_every_updates: int = 10_000
    checkpoint_every_minutes: float = 5.0


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
    """``recipes/dreamer_dmc.py`` (and the agent ``collect_dataset.py`` trains): online DreamerV2
    on one env, for ``train.total_frames``."""

    env: EnvConfig = field(default_factory=EnvConfig)
    train: OnlineTrainConfig = field(default_factory=OnlineTrainConfig)


@dataclass
class OfflineRunConfig(RunConfig):
    """What every agent of an offline target dataset reads: the target env (evaluation) and
    its dataset."""

    target: EnvConfig = field(default_factory=lambda: EnvConfig(name="dmc/walker_downhill"))
    dataset: str = "datasets/dmc/walker_downhill/medium-replay"
    make_dataset_episodes: int = 0  # > 0: make a random dataset of that many episodes if missing
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class CoWorldConfig(OfflineRunConfig):
    """``recipes/coworld_*.py``: the source env(s), couplings and schedule of CoWorld."""

    sources: list = field(default_factory=lambda: ["dmc/walker_walk"])
    # one online DreamerV2 run folder per source: its weights and replay replace that pretraining
    source_checkpoints: list = field(default_factory=list)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class OfflineDV2Config(OfflineRunConfig):
    """``recipes/offline_dv2_*.py``: Offline DV2's reward penalty and schedule."""

    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    schedule: OfflineScheduleConfig = field(default_factory=OfflineScheduleConfig)


@dataclass
class FinetuneConfig(OfflineRunConfig):
    """``recipes/finetune_*.py``: DV2 Finetune (+ EWC): the source env, EWC, schedule."""

    source: str = "dmc/walker_walk"
    source_checkpoint: Optional[str] = None  # a finished online DreamerV2 run on `source`: skips pretraining
    ewc: EWCConfig = field(default_factory=EWCConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)


@dataclass
class CollectConfig:
    """What ``recipes/collect_dataset.py`` makes (see :mod:`coworld_trl.training.collect`)."""

    kind: str = "medium-replay"  # medium-replay | random | expert | scripted
    output: str = "datasets/dataset"
    episodes: int = 10  # random / expert / scripted
    checkpoint: Optional[str] = None  # expert: a run directory of any recipe (CoWorld: its target agent)
    noise: float = 0.1  # scripted: Gaussian action noise
    # medium-replay: None keeps the episodes until the first eval >= fraction * the run's best eval
    # (the paper's); a task's expert return stops the run at the first eval >= fraction * it.
    reference_score: Optional[float] = None
    fraction: float = 1 / 3
    # medium-replay: keep every episode of the train.total_frames run, with no cut (V-D4RL's
    # medium-replay: all an agent collected while it learned); excludes reference_score.
    whole_replay: bool = False


@dataclass
class CollectDatasetConfig(DreamerConfig):
    """A DreamerV2 config (the agent that medium-replay trains) plus what to collect."""

    collect: CollectConfig = field(default_factory=CollectConfig)


# Each recipe's schema, by the name its YAML's defaults list uses.
SCHEMAS: dict[str, type] = {"dreamer_schema": DreamerConfig, "coworld_schema": CoWorldConfig,
                            "offline_dv2_schema": OfflineDV2Config, "finetune_schema": FinetuneConfig,
                            "collect_schema": CollectDatasetConfig}
# The preset groups each schema composes, in the recipes' defaults-list order.
AGENTS: dict[type, str] = {DreamerConfig: "dreamer", CoWorldConfig: "coworld", OfflineDV2Config: "offline_dv2",
                           FinetuneConfig: "finetune"}


def _merge(config, overrides: dict[str, Any]):
    for key, value in overrides.items():
        if not hasattr(config, key):
            valid = ", ".join(f.name for f in fields(config))
            raise ConfigError(f"unknown config key {key!r} in {type(config).__name__}; valid keys: {valid}")
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
        raise ConfigError(f"unknown {group} {name!r}; use one of {', '.join(options)}")
    return yaml.safe_load(path.read_text()) or {}


def recipe_config(schema: type, preset: str = "paper", benchmark: str | None = None, **overrides: dict[str, Any]):
    """A recipe's config in plain Python, composed as its YAML's defaults list does: the
    benchmark's values (agents that have them), the DreamerV2 preset, the agent's part of the
    preset, then per-section ``overrides``."""
    agent = AGENTS[schema]
    config = schema()
    if (PRESET_DIR / f"{agent}_benchmark").is_dir():
        _merge(config, read_preset(f"{agent}_benchmark", benchmark or "dmc"))
    elif benchmark is not None:
        raise ConfigError(f"{schema.__name__} has no benchmark presets; leave benchmark unset")
    _merge(config, read_preset("preset", preset))
    _merge(config, read_preset(f"{agent}_preset", preset))
    return _merge(config, overrides)


def dreamer_config(preset: str = "paper", **overrides: dict[str, Any]) -> DreamerConfig:
    """A :class:`DreamerConfig` for ``preset`` with optional per-section overrides.

    Example: ``dreamer_config("quick", train={"total_frames": 2000})``.
    """
    return recipe_config(DreamerConfig, preset, **overrides)


def coworld_config(preset: str = "paper", benchmark: str = "dmc", **overrides: dict[str, Any]) -> CoWorldConfig:
    """A :class:`CoWorldConfig` as the recipes compose it (``benchmark``: ``dmc`` or ``metaworld``)."""
    return recipe_config(CoWorldConfig, preset, benchmark, **overrides)


def to_dict(config) -> dict[str, Any]:
    return asdict(config)


def from_dict(schema: type, values: dict[str, Any]):
    """Build a nested dataclass from a plain dict (e.g. a resolved Hydra config)."""
    return _merge(schema(), values)


def schema_of(values: dict[str, Any], *, source: str) -> type:
    """The recipe schema whose sections are exactly those of ``values`` (a run's ``config.yaml``,
    named ``source`` in the error)."""
    for schema in SCHEMAS.values():
        if {f.name for f in fields(schema)} == set(values):
            return schema
    raise ConfigError(f"{source} is not the config of any recipe (its sections: {', '.join(values) or 'none'}); "
                      f"give the folder of a run a recipe in recipes/ wrote")


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
        (not train.cuda_graphs or train.compile,
         "train.cuda_graphs=true replays the compiled updates as CUDA graphs; set train.compile=true too"),
        (not train.cuda_graphs or _on_cuda(train.device),
         f"train.cuda_graphs=true needs a CUDA device, but train.device={train.device!r} is not one on this "
         f"machine; set train.cuda_graphs=false (train.compile=true compiles without CUDA graphs)"),
        (config.agent.horizon >= 1, f"agent.horizon={config.agent.horizon} must be >= 1"),
        (config.agent.eval_action in EVAL_ACTIONS,
         f"agent.eval_action={config.agent.eval_action!r}; use {' or '.join(map(repr, EVAL_ACTIONS))}"),
        (config.model.latent in ("discrete", "gaussian"),
         f"model.latent={config.model.latent!r}; use 'discrete' or 'gaussian'"),
        (config.logger.backend in LOGGER_BACKENDS,
         f"logger.backend={config.logger.backend!r}; use 'csv', 'tensorboard' or 'wandb'"),
        (config.logger.log_every_updates >= 1,
         f"logger.log_every_updates={config.logger.log_every_updates} must be >= 1"),
        (config.eval.episodes >= 1, f"eval.episodes={config.eval.episodes} must be >= 1"),
    ]
    checks += _agent_checks(config)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _on_cuda(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _agent_checks(config) -> list[tuple[bool, str]]:
    from coworld_trl.envs import env_info
    from coworld_trl.training.schedules.baselines import EWC_PARTS, UNCERTAINTY_KINDS

    train, schedule = config.train, getattr(config, "schedule", None)
    if isinstance(config, DreamerConfig):
        return [(train.total_frames > train.prefill_frames,
                 f"train.total_frames={train.total_frames} must exceed train.prefill_frames={train.prefill_frames}")]
    if isinstance(config, CoWorldConfig):
        for name in config.sources:
            env_info(name)
        return [
            (len(config.sources) >= 1,
             "sources is empty; give at least one source env, e.g. sources=[dmc/walker_walk]"),
            (schedule.rounds >= 1, f"schedule.rounds={schedule.rounds} must be >= 1"),
            (schedule.offline_updates >= 1, f"schedule.offline_updates={schedule.offline_updates} must be >= 1"),
            (schedule.online_updates >= 0, f"schedule.online_updates={schedule.online_updates} must be >= 0"),
            (min(schedule.warmup_rounds, schedule.warmup_world_model_updates, schedule.warmup_online_updates) >= 0,
             "schedule.warmup_rounds, warmup_world_model_updates and warmup_online_updates must be >= 0"),
            (config.coupling.value_constraint in ("max", "linear", "none"),
             f"coupling.value_constraint={config.coupling.value_constraint!r}; use max, linear or none"),
        ]
    if isinstance(config, OfflineDV2Config):
        uncertainty = config.uncertainty
        return [
            (schedule.updates >= 1, f"schedule.updates={schedule.updates} must be >= 1"),
            (schedule.world_model_updates >= 0,
             f"schedule.world_model_updates={schedule.world_model_updates} must be >= 0"),
            (uncertainty.kind in UNCERTAINTY_KINDS,
             f"uncertainty.kind={uncertainty.kind!r}; use one of {', '.join(UNCERTAINTY_KINDS)}"),
            (uncertainty.lmbda >= 0, f"uncertainty.lmbda={uncertainty.lmbda} must be >= 0"),
            (uncertainty.lmbda == 0 or config.model.ensemble >= 2,
             f"uncertainty.lmbda={uncertainty.lmbda} needs an ensemble of prior heads: set model.ensemble >= 2 "
             f"(7 in V-D4RL) or uncertainty.lmbda=0"),
        ]
    if isinstance(config, FinetuneConfig):
        env_info(config.source)
        ewc = config.ewc
        return [
            (bool(config.source_checkpoint) or schedule.pretrain_frames > train.prefill_frames,
             f"schedule.pretrain_frames={schedule.pretrain_frames} must exceed train.prefill_frames="
             f"{train.prefill_frames}"),
            (schedule.finetune_updates >= 1, f"schedule.finetune_updates={schedule.finetune_updates} must be >= 1"),
            (ewc.lmbda >= 0, f"ewc.lmbda={ewc.lmbda} must be >= 0"),
            (ewc.lmbda == 0 or ewc.fisher_batches >= 1, f"ewc.fisher_batches={ewc.fisher_batches} must be >= 1"),
            (set(ewc.parts) <= set(EWC_PARTS), f"ewc.parts={list(ewc.parts)}; use a subset of {list(EWC_PARTS)}"),
        ]
    return []
