"""The experiment layer: one :class:`Experiment` for every agent, its schedules, the factory
that builds envs, data and replays, evaluation, checkpoints, logging and config schemas."""
from coworld_trl.training.config import (
    CoWorldConfig,
    DataConfig,
    DreamerConfig,
    EnvConfig,
    EvalConfig,
    LoggerConfig,
    OnlineTrainConfig,
    TrainConfig,
    coworld_config,
    dreamer_config,
)
from coworld_trl.training.experiment import Callback, Experiment, StopAtReturn
from coworld_trl.training.schedules import CoWorld, OnlineDreamer, ScheduleConfig


def run_online_dreamer(config: DreamerConfig, *, callbacks=()):
    """Train DreamerV2 online as ``config`` says; returns the final progress counters."""
    return Experiment(config, OnlineDreamer(), callbacks=callbacks).run()


def run_coworld(config: CoWorldConfig, *, callbacks=()):
    """Train CoWorld (Algorithm 1) as ``config`` says; returns the final progress counters."""
    return Experiment(config, CoWorld(), callbacks=callbacks).run()


__all__ = ["Callback", "CoWorld", "CoWorldConfig", "DataConfig", "DreamerConfig", "EnvConfig", "EvalConfig",
           "Experiment", "LoggerConfig", "OnlineDreamer", "OnlineTrainConfig", "ScheduleConfig", "StopAtReturn",
           "TrainConfig", "coworld_config", "dreamer_config", "run_coworld", "run_online_dreamer"]
