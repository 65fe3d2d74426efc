"""Evaluation: deterministic episodes, return statistics, one recorded video."""
from __future__ import annotations

import torch
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record import VideoRecorder
from torchrl.record.loggers import Logger

MAX_EPISODE_STEPS = 100_000


def discounted_returns(reward: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{k >= 0} gamma^k r_{t+k}`` to the end of the episode, for ``[T]`` rewards."""
    out, running = torch.empty_like(reward), torch.zeros((), dtype=reward.dtype)
    for t in range(reward.shape[0] - 1, -1, -1):
        running = reward[t] + gamma * running
        out[t] = running
    return out


class Evaluator:
    """Runs ``episodes`` evaluation episodes (posterior mode; the action the policy's ``eval_action`` gives).

    The first episode goes through TorchRL's :class:`VideoRecorder` when ``logger`` is
    given. Returns ``eval/return_mean``, ``eval/return_std`` and, where the env reports
    ``success``, ``eval/success_rate``. With ``state_value`` (``rollout -> [T]`` critic
    values of the posterior states the policy visited) it also returns
    ``eval/value_bias``: the critic's estimate minus the discounted return actually
    obtained from each state (``gamma``), averaged over all steps of all episodes;
    positive means overestimation; and its two terms, ``eval/value_estimate`` and
    ``eval/value_true`` (Fig. 5b's bars, over the evaluation episodes: 500 steps on Meta-World
    and RoboDesk).

    Per action dimension it also returns how often the action taken sat at the bound of
    ``[-1, 1]`` (``eval/action_at_bound``), the spread of the actions taken over all steps
    (``eval/action_std``: 0 is a policy that acts alike in every state) and, with
    ``actor_scale`` (``rollout -> [T, A]`` scale of the actor's distribution at the visited
    states, or ``None`` for an actor without one), that scale (``eval/actor_scale``). A wide scale where the mode is pinned at a bound
    is where the mode acts unlike the policy's own draws (docs/results.md, issue 13).
    """

    def __init__(self, env: EnvBase, *, episodes: int = 10, logger: Logger | None = None, video: bool = True,
                 state_value=None, actor_scale=None, gamma: float = 0.99):
        self.env, self.episodes = env, episodes
        self.state_value, self.actor_scale, self.gamma = state_value, actor_scale, gamma
        # skip=1: every frame (TorchRL's default keeps every other one).
        self.recorder = (VideoRecorder(logger, tag="eval/video", in_keys=["pixels"], skip=1)
                         if (logger and video) else None)
        self.recording_env = (TransformedEnv(env, self.recorder, auto_unwrap=False)
                              if self.recorder is not None else None)

    @torch.no_grad()
    def __call__(self, policy, step: int) -> dict[str, float | list[float]]:
        returns, successes, values, truths, actions, scales = [], [], [], [], [], []
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for episode in range(self.episodes):
                env = self.recording_env if (episode == 0 and self.recording_env is not None) else self.env
                rollout = env.rollout(MAX_EPISODE_STEPS, policy, break_when_any_done=True)
                returns.append(rollout["next", "reward"].sum().item())
                if "action" in rollout.keys():
                    actions.append(rollout["action"].reshape(-1, rollout["action"].shape[-1]))
                scale = self.actor_scale(rollout) if self.actor_scale is not None else None
                if scale is not None:
                    scales.append(scale.reshape(-1, scale.shape[-1]))
                if self.state_value is not None:
                    reward = rollout["next", "reward"].reshape(-1)
                    values.append(self.state_value(rollout).reshape(-1))
                    truths.append(discounted_returns(reward, self.gamma))
                if ("next", "success") in rollout.keys(True):
                    successes.append(float(rollout["next", "success"].any()))
                if episode == 0 and self.recorder is not None:
                    self.recorder.dump(step=step)
        returns_t = torch.tensor(returns)
        metrics = {
            "eval/return_mean": returns_t.mean().item(),
            "eval/return_std": returns_t.std(unbiased=False).item(),
            "eval/returns": returns,
        }
        if successes:
            metrics["eval/success_rate"] = sum(successes) / len(successes)
        if values:
            value, true = torch.cat(values), torch.cat(truths)
            metrics["eval/value_bias"] = (value - true).mean().item()
            metrics["eval/value_estimate"] = value.mean().item()
            metrics["eval/value_true"] = true.mean().item()
        if actions:
            taken = torch.cat(actions)
            metrics["eval/action_at_bound"] = (taken.abs() >= 0.99).float().mean(0).tolist()
            metrics["eval/action_std"] = taken.std(0, unbiased=False).tolist()
        if scales:
            metrics["eval/actor_scale"] = torch.cat(scales).mean(0).tolist()
        return metrics
