"""Run loop, evaluation, checkpoints, logging and config schemas."""
from coworld_trl.training.config import (
    PRESETS,
    AgentConfig,
    DataConfig,
    DreamerConfig,
    EnvConfig,
    EvalConfig,
    LoggerConfig,
    ModelConfig,
    TrainConfig,
    dreamer_config,
)

__all__ = ["PRESETS", "AgentConfig", "DataConfig", "DreamerConfig", "EnvConfig", "EvalConfig", "LoggerConfig",
           "ModelConfig", "TrainConfig", "dreamer_config"]
