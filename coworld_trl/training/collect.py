"""Making offline datasets the paper's way, and the quick ways.

Every kind records whole episodes as DreamerV2 npz files into a work directory next to the
output (``<output>.episodes/``, so an interrupted collection resumes by re-running) and
imports them into the dataset format at the end:

* ``medium-replay`` (the paper's: the replay of a DreamerV2 agent trained until it reaches
  1/3 of its max score): without ``reference_score``, train the online DreamerV2 for
  ``train.total_frames`` and keep every episode collected until its first evaluation at or
  above ``fraction`` times its best evaluation; with ``reference_score``, stop the run at the
  first evaluation at or above ``fraction * reference_score`` and keep its whole replay.
  Both start with the random prefill. ``whole_replay`` keeps every episode of the
  ``train.total_frames`` run instead (V-D4RL's medium-replay), with no cut.
* ``random``: uniformly random actions.
* ``expert``: deterministic rollouts (actor mean) of a trained run of any recipe (its
  evaluated agent: CoWorld's target).
* ``scripted``: Meta-World's bundled scripted policies with Gaussian action noise.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from coworld_trl.data import EpisodeRecorder, OfflineDataset, import_npz
from coworld_trl.data.npz import npz_files, npz_shapes
from coworld_trl.errors import ConfigError
from coworld_trl.training.config import CollectDatasetConfig, action_repeat
from coworld_trl.training.report import read_results
from coworld_trl.training.experiment import Callback

log = logging.getLogger(__name__)
KINDS = ("medium-replay", "random", "expert", "scripted")


class RecordEpisodes(Callback):
    """Every collected batch of a run into DreamerV2 npz episodes in ``directory``."""

    def __init__(self, directory: Path):
        self.recorder = EpisodeRecorder(directory)

    def on_collect(self, experiment, batch) -> None:
        self.recorder(batch)


def collect_episodes(env, policy, directory: Path, *, episodes: int) -> int:
    """Roll ``policy`` (``None``: random actions) in ``env`` until ``directory`` holds ``episodes`` episodes."""
    recorder = EpisodeRecorder(directory)
    with tqdm(total=episodes, initial=recorder.episodes, unit="episode", dynamic_ncols=True) as bar:
        while recorder.episodes < episodes:
            recorder(env.rollout(1_000_000, policy=policy, break_when_any_done=True))
            bar.update(1)
    return recorder.episodes


def medium_replay_cut(records: list[dict], *, fraction: float) -> dict:
    """The first evaluation at or above ``fraction`` times the best one of a run's ``records``:
    ``{"frames", "threshold", "best"}``."""
    if not records:
        raise ConfigError("the collection run logged no evaluation; lower eval.every_updates or raise "
                          "train.total_frames so that it evaluates at least once.")
    best = max(r["eval/return_mean"] for r in records)
    threshold = fraction * best
    first = next(r for r in records if r["eval/return_mean"] >= threshold)
    return {"frames": first["frames"], "threshold": threshold, "best": best}


def episodes_until(directory: Path, frames: int, *, frames_per_step: int) -> int:
    """How many of the recorded episodes (in collection order) had ended by ``frames`` env frames.
    A run resumed after a kill also recorded the episodes it collected after its last checkpoint;
    they count here as they were collected, so the cut can move by up to a checkpoint interval."""
    total, kept = 0, 0
    for path in npz_files(directory):
        total += (npz_shapes(path)["action"][0][0] - 1) * frames_per_step  # DreamerV2 rows: steps + 1
        if total > frames:
            break
        kept += 1
    return kept


def collect_dataset(config: CollectDatasetConfig) -> OfflineDataset:
    """Run the collection ``config.collect.kind`` describes and write the dataset to ``config.collect.output``."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from coworld_trl.envs import make_env
    from coworld_trl.modules.policy import latent_state_primer

    c = config.collect
    output = Path(c.output)
    if (output / "metadata.json").exists():
        log.info("dataset %s already exists; nothing to do", output)
        return OfflineDataset(output)
    if c.kind not in KINDS:
        raise ValueError(f"collect.kind={c.kind!r} is unknown; use one of {', '.join(KINDS)}.")
    if c.whole_replay and (c.kind != "medium-replay" or c.reference_score is not None):
        raise ConfigError("collect.whole_replay=true keeps a whole medium-replay run; it takes collect.kind="
                          f"medium-replay (got {c.kind}) and no collect.reference_score (got {c.reference_score}).")
    episodes_dir = output.with_name(output.name + ".episodes")
    name, seed = config.env.name, config.train.seed
    if c.kind == "medium-replay":
        from coworld_trl.training import StopAtReturn, run_online_dreamer

        # The episodes are the run's replay: a run that starts from scratch next to another
        # run's episodes would append to them and mix two runs in one dataset.
        recorded = len(npz_files(episodes_dir)) if episodes_dir.is_dir() else 0
        if recorded and not (Path(config.output_dir) / "checkpoint.pt").exists():
            raise ConfigError(f"{episodes_dir} holds {recorded} episodes of another collection run, and run "
                              f"{config.output_dir} starts from scratch; resume that run's output_dir, or delete "
                              f"{episodes_dir} to collect anew.")

        if c.reference_score is None:
            run_online_dreamer(config, callbacks=[RecordEpisodes(episodes_dir)])
        if c.whole_replay:  # a resumed run's extra episodes (after its last checkpoint) end past the frames
            keep = episodes_until(episodes_dir, config.train.total_frames, frames_per_step=action_repeat(config.env))
            source = (f"collect medium-replay: the whole replay of an online DreamerV2 run of "
                      f"{config.train.total_frames} frames; run {config.output_dir}")
        elif c.reference_score is None:
            cut = medium_replay_cut(read_results(Path(config.output_dir) / "results.jsonl"), fraction=c.fraction)
            keep = episodes_until(episodes_dir, cut["frames"], frames_per_step=action_repeat(config.env))
            source = (f"collect medium-replay: online DreamerV2 replay until its first eval return >= "
                      f"{cut['threshold']:.4g} ({c.fraction:.3g} x its best {cut['best']:.4g}), reached at "
                      f"{cut['frames']} of {config.train.total_frames} frames; run {config.output_dir}")
        else:
            if c.reference_score <= 0:
                raise ConfigError(f"collect.reference_score={c.reference_score} must be > 0 (a task's expert "
                                  f"return), or unset to cut at a fraction of the run's own best evaluation.")
            target = c.fraction * c.reference_score
            run_online_dreamer(config, callbacks=[RecordEpisodes(episodes_dir), StopAtReturn(target)])
            source = (f"collect medium-replay: online DreamerV2 replay until eval return >= {target:.4g} "
                      f"({c.fraction:.3g} x reference {c.reference_score}), run {config.output_dir}")
            keep = None
    else:
        state = c.kind == "scripted"
        env = make_env(name, seed=seed, image_size=config.env.image_size, action_repeat=config.env.action_repeat,
                       fast_render=config.env.fast_render, state=state)
        torch.manual_seed(seed)
        policy, exploration = None, ExplorationType.RANDOM
        if c.kind == "expert":
            from coworld_trl.training.evaluate import load_run_agent

            if not c.checkpoint:
                raise ValueError("collect.checkpoint is unset; give the run directory of a trained agent.")
            agent, _ = load_run_agent(c.checkpoint)[0].evaluated()
            if agent.world_model.action_dim != env.action_spec.shape[-1]:
                raise ConfigError(f"collect.checkpoint={c.checkpoint}'s agent acts in {agent.world_model.action_dim}-d "
                                  f"but {name} in {env.action_spec.shape[-1]}-d; give a run of an agent acting in {name}")
            env.append_transform(latent_state_primer(agent.world_model))
            policy, exploration = agent.policy(), ExplorationType.DETERMINISTIC
        elif c.kind == "scripted":
            if not name.startswith("metaworld/"):
                raise ValueError(f"collect.kind=scripted needs a Meta-World env, got {name}.")
            from coworld_trl.envs.metaworld import ScriptedPolicy

            policy = ScriptedPolicy(name.split("/", 1)[1], noise=c.noise, seed=seed)
        with set_exploration_type(exploration):
            collect_episodes(env, policy, episodes_dir, episodes=c.episodes)
        env.close()
        keep = None
        source = f"collect {c.kind}: {c.episodes} episodes" + (f" of {c.checkpoint}" if c.kind == "expert" else "") \
            + (f", action noise {c.noise}" if c.kind == "scripted" else "")
    dataset = import_npz(episodes_dir, output, env=name, description=source, first_episodes=keep)
    shutil.rmtree(episodes_dir)
    return dataset
