"""Is an offline actor's collapse a trap of its early updates, or where its trained model leads?

Usage::

    python benchmarks/fresh_actor.py RUN NEW_RUN --updates N

Copies the Offline DV2 run RUN into the new folder NEW_RUN with a freshly initialised actor
and actor optimiser; the world model, the critic, their optimisers and the run's progress are
kept. Then re-run RUN's recipe command with ``output_dir=NEW_RUN`` and
``schedule.updates=<RUN's + N>`` (printed): it resumes there and trains the fresh actor N more
updates on the trained model, with the evaluations of the run's schedule.
``benchmarks/actor_on_dataset.py NEW_RUN`` then says whether it went back to a corner
(docs/results.md, issue 13). RUN is only read.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml

from coworld_trl.training.checkpoint import load_checkpoint, save_checkpoint
from coworld_trl.training.config import OfflineDV2Config
from coworld_trl.training.evaluate import load_run_agent

ACTOR = "actor_loss.actor."  # the actor's entries in the agent's state_dict


def fresh_actor(run: str | Path, new_run: str | Path, *, updates: int, seed: int = 0) -> int:
    """Write NEW_RUN; returns its ``schedule.updates`` (RUN's plus ``updates``)."""
    run, new_run = Path(run), Path(new_run)
    if new_run.exists():
        raise SystemExit(f"error: {new_run} exists; give a new folder (or re-run the recipe there to resume it)")
    if updates < 1:
        raise SystemExit(f"error: --updates {updates}; give the number of updates the fresh actor trains (>= 1)")
    schedule, config = load_run_agent(run)
    if not isinstance(config, OfflineDV2Config):
        raise SystemExit(f"error: {run} is not an Offline DV2 run (recipes/offline_dv2_*.py); give one")
    torch.manual_seed(seed)
    fresh = type(schedule)()
    fresh.make_agent(config, torch.device("cpu"))
    fresh_weights = fresh.agent.state_dict()
    state = load_checkpoint(run / "checkpoint.pt")
    weights = state["agent"]["modules"]
    for key in [k for k in weights if k.startswith(ACTOR)]:
        weights[key] = fresh_weights[key].clone()
    state["agent"]["optimizers"]["actor"]["state"] = {}  # Adam's moments belonged to the old actor
    # The copied run may have finished: back to its actor-critic phase.
    state["progress"].update(finished=False, phase="joint" if config.schedule.world_model_updates == 0 else "behaviour")
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["output_dir"] = str(new_run)
    # schedule.updates counts actor-critic updates (a two-stage run's progress "updates" also counts its
    # world-model stage).
    stored["schedule"]["updates"] = state["progress"]["behaviour_updates"] + updates
    new_run.mkdir(parents=True)
    try:
        (new_run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
        save_checkpoint(new_run / "checkpoint.pt", state)
    except BaseException:
        shutil.rmtree(new_run, ignore_errors=True)
        raise
    return stored["schedule"]["updates"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("new_run")
    parser.add_argument("--updates", type=int, required=True, help="updates the fresh actor trains")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh actor's initialisation")
    args = parser.parse_args(argv)
    total = fresh_actor(args.run, args.new_run, updates=args.updates, seed=args.seed)
    print(f"re-run {args.run}'s recipe command with output_dir={args.new_run} schedule.updates={total}")
    return total


if __name__ == "__main__":
    main()
