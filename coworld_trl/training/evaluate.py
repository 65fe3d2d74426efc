"""Evaluate a DreamerV2 run's checkpoint again, without touching its run folder.

    python -m coworld_trl.training.evaluate runs/dmc/cheetah_run/dreamer_quick/seed0 --episodes 10
    python -m coworld_trl.training.evaluate RUN --eval-action mean --json mean.json   # the A/B of the action

Prints the return (mean and std over the episodes) and the value bias of the run's latest
checkpoint, acting with the actor's mode, mean or a sample (``agent.eval_action``) on the run's env, or
on ``--env`` (same action dim). Evaluation seeds differ from training seeds as in the run's
own evaluations; ``--seed`` moves them. Online DreamerV2 and dataset-collection runs only:
the other agents' evaluations are in their ``results.jsonl``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from coworld_trl.errors import CoWorldError
from coworld_trl.modules.policy import EVAL_ACTIONS


def evaluate_run(run_dir: str | Path, *, episodes: int = 10, eval_action: str | None = None, env: str | None = None,
                 seed: int | None = None, device: str = "cpu") -> dict:
    """The evaluation metrics (``eval/return_mean``, ``eval/returns``, ``eval/value_bias``, ...) of
    the latest checkpoint in ``run_dir``; nothing in ``run_dir`` is written."""
    import torch

    from coworld_trl.training.collect import load_dreamer_run
    from coworld_trl.training.factory import make_evaluator

    agent, config = load_dreamer_run(run_dir, device=device)
    if eval_action is not None:
        agent.config = dataclasses.replace(agent.config, eval_action=eval_action)
    config.eval.episodes = episodes
    config.eval.video = False
    if seed is not None:
        config.train.seed = seed
    torch.manual_seed(config.train.seed)
    evaluator = make_evaluator(config, agent, env or config.env.name, logger=None, device=torch.device(device))
    metrics = evaluator(agent.policy(), step=0)
    return {"run": str(run_dir), "env": env or config.env.name, "eval_action": agent.config.eval_action, **metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a DreamerV2 run folder (config.yaml and checkpoint.pt)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--eval-action", choices=EVAL_ACTIONS, help="default: the run's agent.eval_action")
    parser.add_argument("--env", help="another env of the same action dim (default: the run's)")
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
    for key, label in (("eval/actor_scale", "actor scale"), ("eval/action_at_bound", "action at the bound")):
        if key in metrics:
            print(f"  {label} per action dimension: {' '.join(f'{v:.2f}' for v in metrics[key])}")
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
