"""Does an offline run's actor read the state? Its mode on the states of its own dataset.

Usage::

    python benchmarks/actor_on_dataset.py RUN [RUN ...] [--batch-size 4] [--seed 0]

For each run folder (Offline DV2, DV2 Finetune or CoWorld: any run with a ``dataset``), the
agent it evaluates is loaded from the latest checkpoint, one ``[B, T]`` batch of dataset
sequences is observed (posterior states) and, per action dimension, this prints the mean of the
actor's mode over those states, the share of states where the mode has its majority sign (1.0:
the same sign in every state), the share at the bound (|a| >= 0.99) and the dataset's mean action
on the same steps. A mode with one sign and at the bound everywhere is a policy that acts alike
in every state (docs/results.md, issue 13).
"""
from __future__ import annotations

import argparse

import torch

from coworld_trl.modules.policy import policy_distribution
from coworld_trl.training.evaluate import load_run_agent
from coworld_trl.training.factory import dataset_sampler, open_target_dataset


def actor_on_dataset(run: str, *, batch_size: int = 4, seed: int = 0) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    schedule, config = load_run_agent(run)
    if not hasattr(config, "dataset"):
        raise SystemExit(f"error: {run} trains on no dataset (an online run); give an offline agent's run")
    agent, _ = schedule.evaluated()
    config.data.batch_size = batch_size
    sample = dataset_sampler(open_target_dataset(config), config.data, env_name=config.target.name,
                             action_dim=agent.world_model.action_dim, device=torch.device("cpu"))
    batch = sample()
    with torch.no_grad():
        agent.observe(batch)  # posterior states into the batch
        features = agent.world_model.rssm.features(batch["stoch"], batch["deter"])
        mode = policy_distribution(agent.actor, features.reshape(-1, features.shape[-1])).mode
    positive = (mode > 0).float().mean(0)
    return {"mode_mean": mode.mean(0).tolist(), "majority_sign": torch.maximum(positive, 1 - positive).tolist(),
            "at_bound": (mode.abs() >= 0.99).float().mean(0).tolist(),
            "dataset_action_mean": batch["action"].reshape(mode.shape).mean(0).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for run in args.runs:
        print(run)
        for key, values in actor_on_dataset(run, batch_size=args.batch_size, seed=args.seed).items():
            print(f"  {key:20s} {' '.join(f'{v:+.2f}' for v in values)}")


if __name__ == "__main__":
    main()
