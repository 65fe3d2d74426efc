"""What differs between agents: their schedules. Everything else is the
:class:`~coworld_trl.training.experiment.Experiment`'s.

* :class:`OnlineDreamer`: DreamerV2's online loop.
* :class:`CoWorld`: Algorithm 1 of the paper.
* :class:`OfflineDreamer`: Offline DV2 (V-D4RL) and the plain offline DreamerV2.
* :class:`Finetune`: DV2 Finetune (+ EWC): online pretraining in the source, then the
  offline target dataset.

A schedule builds its envs, replays and agent through :mod:`coworld_trl.training.factory`,
keeps its counters in ``progress`` (checkpointed by the experiment), hands every update's
metrics to :meth:`Experiment.record` and calls :meth:`Experiment.tick` wherever a checkpoint
is consistent.
"""
from coworld_trl.training.schedules.baselines import (
    EWCConfig,
    Finetune,
    FinetuneScheduleConfig,
    OfflineDreamer,
    OfflineScheduleConfig,
    UncertaintyConfig,
)
from coworld_trl.training.schedules.coworld import CoWorld, ScheduleConfig
from coworld_trl.training.schedules.online import OnlineDreamer, OnlineSource, Progress

__all__ = ["CoWorld", "EWCConfig", "Finetune", "FinetuneScheduleConfig", "OfflineDreamer", "OfflineScheduleConfig",
           "OnlineDreamer", "OnlineSource", "Progress", "ScheduleConfig", "UncertaintyConfig"]
