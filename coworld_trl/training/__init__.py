"""The experiment layer: one :class:`Experiment` for every agent, its schedules, the factory
that builds envs, data and replays, evaluation, checkpoints, logging and config schemas."""
from coworld_trl.training.config import (
    CoWorldConfig,
    DataConfig,
    DreamerConfig,
    EnvConfig,
    EvalConfig,
    FinetuneConfig,
    LoggerConfig,
    OfflineDV2Config,
    OnlineTrainConfig,
    TrainConfig,
    coworld_config,
    dreamer_config,
    recipe_config,
)
from coworld_trl.training.experiment import Callback, Experiment, StopAtReturn
from coworld_trl.training.schedules import CoWorld, Finetune, OfflineDreamer, OnlineDreamer, ScheduleConfig


def run_online_dreamer(config: DreamerConfig, *, callbacks=()):
    """Train DreamerV2 online as ``config`` says; returns the final progress counters."""
    return Experiment(config, OnlineDreamer(), callbacks=callbacks).run()


def run_coworld(config: CoWorldConfig, *, callbacks=()):
    """Train CoWorld (Algorithm 1) as ``config`` says; returns the final progress counters."""
    return Experiment(config, CoWorld(), callbacks=callbacks).run()


def run_offline_dv2(config: OfflineDV2Config, *, callbacks=()):
    """Train Offline DV2 on the target dataset as ``config`` says; returns the final progress counters."""
    return Experiment(config, OfflineDreamer(), callbacks=callbacks).run()


def run_finetune(config: FinetuneConfig, *, callbacks=()):
    """Pretrain in the source env, then finetune on the target dataset (DV2 Finetune, + EWC when
    ``ewc.lmbda`` > 0); returns the final progress counters."""
    return Experiment(config, Finetune(), callbacks=callbacks).run()


__all__ = ["Callback", "CoWorld", "CoWorldConfig", "DataConfig", "DreamerConfig", "EnvConfig", "EvalConfig",
           "Experiment", "Finetune", "FinetuneConfig", "LoggerConfig", "OfflineDV2Config", "OfflineDreamer",
           "OnlineDreamer", "OnlineTrainConfig", "ScheduleConfig", "StopAtReturn", "TrainConfig", "coworld_config",
           "dreamer_config", "recipe_config", "run_coworld", "run_finetune", "run_offline_dv2", "run_online_dreamer"]
