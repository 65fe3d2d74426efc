"""Online collection shared by every schedule that acts in an env, and online DreamerV2."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tensordict import TensorDictBase

if TYPE_CHECKING:
    from coworld_trl.training.experiment import Experiment


@dataclass
class Progress:
    """Counters every schedule has: updates of any agent, env frames collected, skipped updates."""

    updates: int = 0
    frames: int = 0
    skipped_updates: int = 0
    finished: bool = False


def open_source_run(run, *, option: str, source: str, source_option: str, model, action_dim: int):
    """``(run folder, its DreamerConfig)`` if ``run`` is an online DreamerV2 run on ``source`` with
    the ``model`` sizes an agent acting in ``action_dim`` can start from; else a one-line error
    naming ``option`` and ``source_option`` (the config fields that gave the folder and the source)."""
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    from coworld_trl.envs import env_info
    from coworld_trl.training.config import DreamerConfig, from_dict

    run = Path(run)
    name = f"{option}={run}"
    if not (run / "checkpoint.pt").exists() or not (run / "config.yaml").exists():
        raise FileNotFoundError(
            f"{name} holds no DreamerV2 run (config.yaml, checkpoint.pt); train one with `python recipes/"
            f"dreamer_dmc.py env.name={source} output_dir={run}`, or drop {option} to pretrain here")
    stored = yaml.safe_load((run / "config.yaml").read_text())
    source_run = from_dict(DreamerConfig, {k: v for k, v in stored.items() if k != "collect"})
    if source_run.env.name != source:
        raise ValueError(f"{name} was trained on {source_run.env.name}, but {source_option}={source}; set "
                         f"{source_option}={source_run.env.name} or point {option} at a {source} run")
    theirs, ours = asdict(source_run.model), asdict(model)
    diffs = [f"model.{k}={theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs.get(k) != ours[k]]
    if diffs:
        raise ValueError(f"{name} has another model size ({'; '.join(diffs[:3])}); use that run's model.* values")
    source_dim = env_info(source).action_dim
    if source_dim != action_dim:
        raise ValueError(f"{name} acts in {source_dim}-d but this run's agent takes {action_dim}-d actions (the "
                         f"widest of source and target); drop {option} to pretrain with padded actions here")
    return run, source_run


def load_source_weights(agent, run, *, option: str, device, missing_ok: tuple[str, ...] = ()) -> dict:
    """The weights of the DreamerV2 run ``run`` into ``agent`` (keys starting with ``missing_ok``
    may be absent there: this agent's own additions); returns the run's checkpoint."""
    from coworld_trl.training.checkpoint import load_checkpoint

    state = load_checkpoint(run / "checkpoint.pt", map_location=device)
    missing, unexpected = agent.load_state_dict(state["agent"]["modules"], strict=False)
    if unexpected or any(not key.startswith(missing_ok) for key in missing):
        raise ValueError(f"{option}={run}'s agent does not match this agent ({(unexpected or missing)[:3]}); "
                         f"use a run with the same model.* values")
    return state


def compile_networks(agent, train) -> None:
    """``train.compile``: the agent's updates compiled, replayed as CUDA graphs with
    ``train.cuda_graphs`` (see :meth:`~coworld_trl.agents.DreamerV2Agent.compile_updates`)."""
    agent.compile_updates(cuda_graphs=train.cuda_graphs)


class OnlineSource:
    """One env feeding one agent's online replay (in the run directory): each :meth:`collect`
    steps the env ``train.train_every`` agent steps with the agent's acting policy (random
    actions until ``train.prefill_frames`` are stored) and stores them.

    Args:
        experiment: the running experiment (config, run directory, device).
        agent: the acting DreamerV2 agent.
        env_name: which env; rendered as ``env`` (an ``EnvConfig``) says.
        env: the render settings.
        label: its name in paths and metrics (``"source0"`` -> ``replay_source0/``,
            ``train/source0_episode_return``; ``""`` -> ``replay/``, ``train/episode_return``).
        seed: base seed of its env.
        action_dim: the agent's action dim (the env's actions are padded to it).
    """

    def __init__(self, experiment: "Experiment", agent, *, env_name: str, env, label: str = "", seed: int,
                 action_dim: int):
        from coworld_trl.training.config import action_repeat
        from coworld_trl.training.factory import make_replay

        config = experiment.config
        self.agent, self.env_name, self.env, self.label, self.seed = agent, env_name, env, label, seed
        self.action_dim, self.device = action_dim, experiment.device
        self.train, self.batch_size = config.train, config.data.batch_size
        self.frames_per_step = action_repeat(env)
        self.replay = make_replay(experiment.run_dir.path / (f"replay_{label}" if label else "replay"), config.data,
                                  device=self.device)
        self._collector = None

    @property
    def stored_frames(self) -> int:
        return len(self.replay) * self.frames_per_step

    @property
    def prefilled(self) -> bool:
        return self.stored_frames >= self.train.prefill_frames

    def collect(self, experiment: "Experiment") -> TensorDictBase:
        """Collect and store one batch; the experiment counts its frames and logs finished episodes."""
        if self._collector is None:
            from coworld_trl.training.factory import collector_seed, make_collector, make_run_env

            random_steps = max(self.train.prefill_frames - self.stored_frames, 0) // self.frames_per_step
            env = make_run_env(self.env, collector_seed(self.seed), name=self.env_name, action_dim=self.action_dim)
            collector = make_collector(env, self.agent, random_steps=random_steps,
                                       steps_per_batch=self.train.train_every, device=self.device)
            self._collector = (collector, iter(collector))
        batch = next(self._collector[1])
        self.replay.extend(batch)
        experiment.collected(batch, frames=batch.numel() * self.frames_per_step, name=self.label)
        return batch

    def sample(self) -> TensorDictBase:
        """``[B, T]`` replay sequences on the agent's device."""
        return self.replay.sample(self.batch_size).to(self.device)

    def state_dict(self) -> dict:
        return self.replay.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.replay.load_state_dict(state)

    def discard_files(self) -> None:
        self.replay.discard_files()

    def close(self) -> None:
        if self._collector is not None and hasattr(self._collector[0], "shutdown"):
            self._collector[0].shutdown()
        self._collector = None


class Schedule:
    """What every schedule shares: its online sources (``self.online``, set in ``build``) are
    checkpointed, resumed, discarded and closed together; no inputs to open by default."""

    online: list[OnlineSource] = []

    def make_agent(self, config, device):
        """The agent this schedule trains, freshly initialised, as ``self.agent``: no envs, data,
        source weights or compilation. ``build`` starts from it; ``evaluate`` loads a run's
        checkpoint into it."""
        raise NotImplementedError

    def evaluated(self):
        """The agent evaluations run, and on which env (an offline agent's target)."""
        return self.agent, self.config.target.name

    def log_step(self) -> int:
        return self.progress.updates

    def open_inputs(self, config) -> None:
        """Open what the run reads and must not create itself (none here)."""

    def state_dict(self) -> dict:
        return {"replays": [source.state_dict() for source in self.online]}

    def load_state_dict(self, state: dict) -> None:
        for source, replay_state in zip(self.online, state["replays"]):
            source.load_state_dict(replay_state)

    def discard_files(self) -> None:
        for source in self.online:
            source.discard_files()

    def close(self) -> None:
        for source in self.online:
            source.close()


@dataclass
class OnlineProgress(Progress):
    episodes: int = 0


class OnlineDreamer(Schedule):
    """DreamerV2's online loop (Hafner et al. 2021):

    ``until total_frames: collect train_every steps -> store -> updates_per_train updates``,
    random actions until ``prefill_frames`` are stored. Reads a
    :class:`~coworld_trl.training.config.DreamerConfig`.
    """

    def __init__(self):
        self.progress = OnlineProgress()

    def make_agent(self, config, device):
        from coworld_trl.agents import make_dreamer_agent
        from coworld_trl.envs import env_info

        self.config, size = config, config.env.image_size
        self.agent = make_dreamer_agent(config.model, config.agent, action_dim=env_info(config.env.name).action_dim,
                                        obs_shape=(3, size, size), device=device, autocast=config.train.autocast,
                                        nan_policy=config.train.nan_policy)
        return self.agent

    def build(self, experiment: "Experiment"):
        config = experiment.config
        self.make_agent(config, experiment.device)
        if config.train.compile:
            compile_networks(self.agent, config.train)
        self.source = OnlineSource(experiment, self.agent, env_name=config.env.name, env=config.env,
                                   seed=config.train.seed, action_dim=self.agent.world_model.action_dim)
        self.online = [self.source]
        return self.agent

    @property
    def replay(self):
        return self.source.replay

    def evaluated(self):
        return self.agent, self.config.env.name

    def eval_count(self) -> int:
        return self.progress.updates

    def log_step(self) -> int:
        return self.progress.frames

    def bar(self) -> tuple[int, int, str]:
        return self.config.train.total_frames, self.progress.frames, "frame"

    def run(self, experiment: "Experiment") -> None:
        p, train = self.progress, self.config.train
        experiment.set_phase("online")
        while p.frames < train.total_frames and not experiment.stop_requested:
            # 1. store what the acting policy just collected
            batch = self.source.collect(experiment)
            p.episodes += int(batch["next", "done"].sum())
            # 2. learn: world model, then actor and critic in imagination
            if self.source.prefilled:
                for _ in range(train.updates_per_train):
                    experiment.record("", self.agent.update(self.source.sample()))
            # 3. log, evaluate, checkpoint when due
            experiment.tick()
