"""Does an offline run's actor read the state? Its mode on the states of its own dataset.

Usage::

    python benchmarks/actor_on_dataset.py RUN [RUN ...] [--batch-size 4] [--seed 0]

For each run folder (Offline DV2, DV2 Finetune or CoWorld: any run with a ``dataset``), the
agent it evaluates is loaded from the latest checkpoint, one ``[B, T]`` batch of dataset
sequences is observed (posterior states) and, per action dimension, this prints the mean of the
actor's mode over those states, the share of states where the mode has its majority sign (1.0:
the same sign in every state), the share at the bound (|a| >= 0.99) and the dataset's mean action
on the same steps; for the library's truncated-Normal actor also the slope ``1 - loc^2``
through which its gradient reaches the location (near 0: saturated) and the scale. A mode with
one sign and at the bound everywhere is a policy that acts alike in every state
(docs/results.md, issue 13).

Then (``imagined_rewards``) what the world model says of those actions: from every posterior
state ``s_t`` of the batch with ``H`` (the agent's horizon) dataset steps after it, the model's
prior is rolled ``H`` steps with four action sources: the actor's mode, the actor's samples,
the dataset's own next ``H`` actions (open loop) and uniform random actions. Per source it
prints the mean imagined reward per step and, for a world model with an ensemble of prior heads
(Offline DV2), the heads' disagreement ``u`` and the penalty ``lmbda * u`` the run trained with;
``dataset reward`` is the reward the dataset recorded on the same steps. An actor whose imagined
reward is far above what its evaluations earned exploits the model; one whose ``u`` is below
the dataset actions' is where the penalty cannot flag it.

Last (``imagined_against_simulator``), the same question on the states the actor itself visits:
one evaluation episode in the simulator, and from every state it acted from, the mean reward the
model imagines for ``H`` steps of the actor's mode against the reward the simulator gave on the
same ``H`` steps.
"""
from __future__ import annotations

import argparse

import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from coworld_trl.modules.networks import Actor
from coworld_trl.modules.policy import policy_distribution
from coworld_trl.objectives.uncertainty import RewardUncertaintyPenalty
from coworld_trl.training.evaluate import load_run_agent
from coworld_trl.training.evaluation import MAX_EPISODE_STEPS
from coworld_trl.training.factory import dataset_sampler, make_eval_env, open_target_dataset


def observed_batch(run: str, *, batch_size: int, seed: int):
    """``(agent, config, batch)``: the run's evaluated agent and one ``[B, T]`` batch of its dataset
    with the posterior states written in."""
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
        agent.observe(batch)
    return agent, config, batch


def actor_on_dataset(run: str, *, batch_size: int = 4, seed: int = 0) -> dict[str, list[float]]:
    agent, _, batch = observed_batch(run, batch_size=batch_size, seed=seed)
    with torch.no_grad():
        features = agent.world_model.rssm.features(batch["stoch"], batch["deter"])
        dist = policy_distribution(agent.actor, features.reshape(-1, features.shape[-1]))
        mode = dist.mode
    positive = (mode > 0).float().mean(0)
    out = {"mode_mean": mode.mean(0).tolist(), "majority_sign": torch.maximum(positive, 1 - positive).tolist(),
           "at_bound": (mode.abs() >= 0.99).float().mean(0).tolist(),
           "dataset_action_mean": batch["action"].reshape(mode.shape).mean(0).tolist()}
    if isinstance(agent.actor, Actor) and agent.actor.dist_kind == "trunc_normal":
        # loc = tanh(m): the actor's gradient reaches m scaled by 1 - loc^2, ~0 once saturated.
        out["loc_slope"] = (1 - dist.loc.pow(2)).mean(0).tolist()
        out["scale"] = dist.scale.mean(0).tolist()
    return out


def windows(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """``x [B, T, D]`` -> ``[B * (T - H + 1), H, D]``: the ``H`` steps from every start ``t``."""
    return x.unfold(1, horizon, 1).movedim(-1, 2).flatten(0, 1)


def rollout_in_model(agent, stoch: torch.Tensor, deter: torch.Tensor, act, horizon: int):
    """The model's prior rolled ``horizon`` steps from ``[N]`` states, ``act(step, features)``
    choosing the actions: ``(reward [N, H], deter [N, H, deter])``."""
    rssm, features, deters = agent.world_model.rssm, [], []
    for step in range(horizon):
        deter, _, stoch = rssm.img_step(stoch, deter, act(step, rssm.features(stoch, deter)))
        deters.append(deter)
        features.append(rssm.features(stoch, deter))
    return agent.world_model.reward_head(torch.stack(features, 1)), torch.stack(deters, 1)


def actor_mode(agent):
    return lambda step, features: policy_distribution(agent.actor, features).mode


def imagined_rewards(run: str, *, batch_size: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:
    agent, config, batch = observed_batch(run, batch_size=batch_size, seed=seed)
    horizon = config.agent.horizon
    if batch.shape[1] < horizon:
        raise SystemExit(f"error: sequences of {batch.shape[1]} steps are shorter than the horizon {horizon}")
    starts = batch.shape[1] - horizon + 1  # the start states with H dataset steps after them
    stoch = batch["stoch"][:, :starts].flatten(0, 1)
    deter = batch["deter"][:, :starts].flatten(0, 1)
    dataset_actions = windows(batch["action"], horizon)
    penalty = agent.reward_penalty if isinstance(agent.reward_penalty, RewardUncertaintyPenalty) else None
    policies = {
        "actor mode": actor_mode(agent),
        "actor sample": lambda step, features: policy_distribution(agent.actor, features).sample(),
        "dataset": lambda step, features: dataset_actions[:, step],
        "uniform": lambda step, features: torch.rand_like(dataset_actions[:, step]) * 2 - 1,
    }
    out = {}
    with torch.no_grad():
        for kind, act in policies.items():
            reward, deters = rollout_in_model(agent, stoch, deter, act, horizon)
            row = {"imagined reward": reward.mean().item()}
            if penalty is not None:
                u = penalty.uncertainty(agent.world_model.rssm.ensemble_stats(deters)).mean().item()
                row.update({"u": u, "lmbda * u": penalty.lmbda * u})
            out[kind] = row
        out["dataset"]["dataset reward"] = windows(batch["next", "reward"], horizon).mean().item()
    return out


def imagined_against_simulator(run: str, *, seed: int = 0) -> dict[str, float]:
    """One evaluation episode of the run's agent (its evaluation env and action); from every
    posterior state it acted from with ``H`` steps after it, the model imagines ``H`` steps of
    the actor's mode. Returns the mean imagined reward per step and the mean reward the
    simulator gave on the same ``H`` steps of the episode, and the number of start states."""
    torch.manual_seed(seed)
    schedule, config = load_run_agent(run)
    agent, env_name = schedule.evaluated()
    horizon = config.agent.horizon
    env = make_eval_env(config, agent, env_name)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        episode = env.rollout(MAX_EPISODE_STEPS, agent.policy(), break_when_any_done=True)
        starts = episode.shape[0] - horizon + 1
        if starts < 1:
            raise SystemExit(f"error: the episode has {episode.shape[0]} steps, fewer than the horizon {horizon}")
        reward, _ = rollout_in_model(agent, episode["latent_stoch"][:starts], episode["latent_deter"][:starts],
                                     actor_mode(agent), horizon)
    simulator = episode["next", "reward"].reshape(1, -1, 1)
    return {"imagined reward": reward.mean().item(),
            "simulator reward": windows(simulator, horizon).mean().item(), "starts": float(starts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for run in args.runs:
        print(run)
        for key, values in actor_on_dataset(run, batch_size=args.batch_size, seed=args.seed).items():
            form = ".1e" if key == "loc_slope" else "+.2f"  # saturation shows in the exponent
            print(f"  {key:20s} {' '.join(f'{v:{form}}' for v in values)}")
        print("  imagined H steps from the dataset's states, means per step:")
        for kind, row in imagined_rewards(run, batch_size=args.batch_size, seed=args.seed).items():
            print(f"  {kind:20s} " + "  ".join(f"{name} {value:+.4f}" for name, value in row.items()))
        row = imagined_against_simulator(run, seed=args.seed)
        print(f"  the actor's mode in the simulator, {row['starts']:.0f} visited states, means per step over H steps:")
        print(f"  {'':20s} imagined reward {row['imagined reward']:+.4f}  simulator reward {row['simulator reward']:+.4f}")


if __name__ == "__main__":
    main()
