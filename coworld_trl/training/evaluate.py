"""Evaluate a run's checkpoint again, without touching its run folder.

    python -m coworld_trl.training.evaluate runs/dmc/cheetah_run/dreamer_quick/seed0 --episodes 10
    python -m coworld_trl.training.evaluate RUN --eval-action mean --json mean.json   # the A/B of the action

Any recipe's run: online DreamerV2, dataset collection, Offline DV2, DV2 Finetune (+ EWC) and
CoWorld (its target agent). Prints the return (mean and std over the episodes) and the value
bias of the run's latest checkpoint, acting with the actor's mode, mean or a sample
(``agent.eval_action``) on the env the run evaluates on, or on ``--env`` (an action dim up to
the agent's). Evaluation seeds differ from training seeds as in the run's own evaluations;
``--seed`` moves them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from coworld_trl.errors import CoWorldError
from coworld_trl.modules.policy import EVAL_ACTIONS


def load_run_agent(run_dir: str | Path, *, device: str = "cpu"):
    """``(schedule, config)`` of any recipe's run folder, the schedule's agent holding the latest
    checkpoint's weights; ``schedule.evaluated()`` is the agent its evaluations run and their env."""
    import torch
    import yaml

    from coworld_trl.errors import ConfigError
    from coworld_trl.training.checkpoint import load_checkpoint
    from coworld_trl.training.config import (CollectDatasetConfig, CoWorldConfig, DreamerConfig, FinetuneConfig,
                                             OfflineDV2Config, from_dict, schema_of)
    from coworld_trl.training.schedules import CoWorld, Finetune, OfflineDreamer, OnlineDreamer

    schedules = {DreamerConfig: OnlineDreamer, CollectDatasetConfig: OnlineDreamer, OfflineDV2Config: OfflineDreamer,
                 FinetuneConfig: Finetune, CoWorldConfig: CoWorld}
    run_dir = Path(run_dir)
    config_file, checkpoint = run_dir / "config.yaml", run_dir / "checkpoint.pt"
    if not checkpoint.exists() or not config_file.exists():
        raise ConfigError(f"{run_dir} holds no run (config.yaml and checkpoint.pt); give the output_dir of a recipe's "
                          f"run that has written its first checkpoint")
    stored = yaml.safe_load(config_file.read_text()) or {}
    schema = schema_of(stored, source=str(config_file))
    config = from_dict(schema, stored)
    schedule = schedules[schema]()
    schedule.make_agent(config, torch.device(device))
    schedule.agent.load_checkpoint_state(load_checkpoint(checkpoint, map_location=device)["agent"])
    return schedule, config


def evaluate_run(run_dir: str | Path, *, episodes: int = 10, eval_action: str | None = None, env: str | None = None,
                 seed: int | None = None, device: str = "cpu") -> dict:
    """The evaluation metrics (``eval/return_mean``, ``eval/returns``, ``eval/value_bias``, ...) of
    the latest checkpoint in ``run_dir``; nothing in ``run_dir`` is written."""
    import torch

    from coworld_trl.envs import env_info
    from coworld_trl.errors import ConfigError
    from coworld_trl.training.factory import make_evaluator

    schedule, config = load_run_agent(run_dir, device=device)
    agent, run_env = schedule.evaluated()
    env = env or run_env
    if env_info(env).action_dim > agent.world_model.action_dim:
        raise ConfigError(f"--env {env} acts in {env_info(env).action_dim}-d but {run_dir}'s agent in "
                          f"{agent.world_model.action_dim}-d; give an env of at most {agent.world_model.action_dim} "
                          f"action dims")
    if eval_action is not None:
        agent.config = dataclasses.replace(agent.config, eval_action=eval_action)
    config.eval.episodes = episodes
    config.eval.video = False
    if seed is not None:
        config.train.seed = seed
    torch.manual_seed(config.train.seed)
    evaluator = make_evaluator(config, agent, env, logger=None, device=torch.device(device))
    metrics = evaluator(agent.policy(), step=0)
    return {"run": str(run_dir), "env": env, "eval_action": agent.config.eval_action, **metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of any recipe (config.yaml and checkpoint.pt)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--eval-action", choices=EVAL_ACTIONS, help="default: the run's agent.eval_action")
    parser.add_argument("--env", help="another env, of an action dim up to the agent's (default: the run's)")
    parser.add_argument("--seed", type=int, help="base seed of the evaluation env (default: the run's train.seed)")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes={args.episodes} must be >= 1")
    try:
        metrics = evaluate_run(args.run, episodes=args.episodes, eval_action=args.eval_action, env=args.env,
                               seed=args.seed)
    except (CoWorldError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    bias = f", value bias {metrics['eval/value_bias']:+.2f}" if "eval/value_bias" in metrics else ""
    print(f"{args.run}: {metrics['env']}, {args.episodes} episodes, eval_action={metrics['eval_action']}: return "
          f"{metrics['eval/return_mean']:.1f} +- {metrics['eval/return_std']:.1f}{bias}")
    for key, label in (("eval/actor_scale", "actor scale"), ("eval/action_at_bound", "action at the bound"),
                       ("eval/action_std", "spread of the actions taken")):
        if key in metrics:
            print(f"  {label} per action dimension: {' '.join(f'{v:.2f}' for v in metrics[key])}")
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
