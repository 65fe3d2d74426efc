"""Making offline datasets the paper's way, and the quick ways.

Every kind records whole episodes as DreamerV2 npz files into a work directory next to the
output (``<output>.episodes/``, so an interrupted collection resumes by re-running) and
imports them into the dataset format at the end:

* ``medium-replay``: train the online DreamerV2 until an evaluation reaches
  ``fraction * reference_score`` (1/3 in the paper) and keep its whole replay: every
  episode it collected, from the random prefill on.
* ``random``: uniformly random actions.
* ``expert``: deterministic rollouts (actor mean) of a trained DreamerV2 run directory.
* ``scripted``: Meta-World's bundled scripted policies with Gaussian action noise.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from coworld_trl.data import EpisodeRecorder, OfflineDataset, import_npz
from coworld_trl.training.config import CollectDatasetConfig
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


def load_dreamer_run(run_dir: str | Path, *, device: str = "cpu"):
    """The agent of a finished or running DreamerV2 run directory (its config and checkpoint)."""
    import yaml

    from coworld_trl.agents import make_dreamer_agent
    from coworld_trl.envs import env_info
    from coworld_trl.training.config import DreamerConfig, from_dict
    from coworld_trl.training.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    config_file, checkpoint = run_dir / "config.yaml", run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} does not exist; collect.checkpoint must be a DreamerV2 run directory "
                                f"(train one with `python recipes/dreamer_dmc.py`).")
    stored = yaml.safe_load(config_file.read_text())
    config = from_dict(DreamerConfig, {k: v for k, v in stored.items() if k != "collect"})  # a collection run too
    agent = make_dreamer_agent(config.model, config.agent, action_dim=env_info(config.env.name).action_dim,
                               obs_shape=(3, config.env.image_size, config.env.image_size), device=device)
    agent.load_checkpoint_state(load_checkpoint(checkpoint, map_location=device)["agent"])
    return agent, config


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
    episodes_dir = output.with_name(output.name + ".episodes")
    name, seed = config.env.name, config.train.seed
    if c.kind == "medium-replay":
        from coworld_trl.training import StopAtReturn, run_online_dreamer

        if c.reference_score is None or c.reference_score <= 0:
            raise ValueError("collect.reference_score is unset; give the expert score of this task (the run stops "
                             "at collect.fraction times it), e.g. collect.reference_score=900.")
        target = c.fraction * c.reference_score
        run_online_dreamer(config, callbacks=[RecordEpisodes(episodes_dir), StopAtReturn(target)])
        source = (f"collect medium-replay: online DreamerV2 replay until eval return >= {target:.4g} "
                  f"({c.fraction:.3g} x reference {c.reference_score}), run {config.output_dir}")
    else:
        state = c.kind == "scripted"
        env = make_env(name, seed=seed, image_size=config.env.image_size, action_repeat=config.env.action_repeat,
                       fast_render=config.env.fast_render, state=state)
        torch.manual_seed(seed)
        policy, exploration = None, ExplorationType.RANDOM
        if c.kind == "expert":
            if not c.checkpoint:
                raise ValueError("collect.checkpoint is unset; give the run directory of a trained DreamerV2.")
            agent, _ = load_dreamer_run(c.checkpoint)
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
        source = f"collect {c.kind}: {c.episodes} episodes" + (f" of {c.checkpoint}" if c.kind == "expert" else "") \
            + (f", action noise {c.noise}" if c.kind == "scripted" else "")
    dataset = import_npz(episodes_dir, output, env=name, description=source)
    shutil.rmtree(episodes_dir)
    return dataset
