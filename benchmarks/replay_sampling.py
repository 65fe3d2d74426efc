"""How often the online replay samples each row: the episode being collected against whole ones.

Usage::

    python benchmarks/replay_sampling.py                      # both modes, DMC-like episodes
    python benchmarks/replay_sampling.py --episodes 40 --json out.json

Simulates the online loop of the quick preset on an ``OnlineReplay``: episodes of
``--episode-steps`` agent steps arrive in collector batches of ``--train-every`` steps and,
once ``--prefill-steps`` are stored, every batch is followed by one ``[B, T]`` sample. For each
sample it counts the sampled rows that belong to the episode in progress and to finished
episodes, each divided by how many rows that part holds, and reports the ratio of the two
rates (how many times more often a row of the episode in progress is drawn) averaged over
the samples, for ``whole_episodes=False`` (rows as collected) and ``True`` (DreamerV2).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from tensordict import TensorDict

from coworld_trl.training.replay import OnlineReplay


def batches(episodes: int, episode_steps: int, train_every: int):
    """Collector-like ``[train_every]`` batches of consecutive episodes (tiny pixels)."""
    step, total = 0, episodes * episode_steps
    while step < total:
        t = torch.arange(step, min(step + train_every, total)) % episode_steps
        n = t.numel()
        yield TensorDict(pixels=torch.zeros(n, 3, 4, 4, dtype=torch.uint8), t=t, is_init=(t == 0).unsqueeze(-1),
                         action=torch.zeros(n, 1),
                         next=TensorDict(reward=torch.zeros(n, 1), done=(t == episode_steps - 1).unsqueeze(-1),
                                         batch_size=[n]), batch_size=[n])
        step += n


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure(*, whole_episodes: bool, episodes: int, episode_steps: int, train_every: int, prefill_steps: int,
            batch_size: int, seq_len: int) -> dict:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        replay = OnlineReplay(Path(tmp) / "replay", capacity=episodes * episode_steps, seq_len=seq_len,
                              whole_episodes=whole_episodes)
        ratios, shares, drawn, collected = [], [], [], 0
        for batch in batches(episodes, episode_steps, train_every):
            replay.extend(batch)
            collected += batch.numel()
            if collected < prefill_steps or len(replay) < seq_len or bool(batch["next", "done"][-1]):
                continue
            ids = replay.buffer.storage[: len(replay)]["episode"]
            current = int(ids.max()) if not whole_episodes else -1  # whole episodes: it is not stored
            in_progress = int((ids == current).sum())
            sampled = replay.sample(batch_size)["episode"].reshape(-1)
            shares.append(in_progress / len(replay))
            drawn.append(float((sampled == current).float().mean()))
            if seq_len <= in_progress < len(replay):
                rate_current = drawn[-1] / shares[-1]
                rate_finished = (1 - drawn[-1]) / (1 - shares[-1])
                ratios.append(rate_current / max(rate_finished, 1e-12))
    return {"whole_episodes": whole_episodes, "samples": len(drawn),
            "stored_rows_of_the_episode_in_progress": mean(shares),
            "sampled_rows_from_the_episode_in_progress": mean(drawn),
            "per_row_rate_in_progress_vs_finished": mean(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--episode-steps", type=int, default=500, help="DMC: 1000 frames at action repeat 2")
    parser.add_argument("--train-every", type=int, default=5)
    parser.add_argument("--prefill-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = dict(episodes=args.episodes, episode_steps=args.episode_steps, train_every=args.train_every,
                    prefill_steps=args.prefill_steps, batch_size=args.batch_size, seq_len=args.seq_len)
    results = {"settings": settings, "modes": [measure(whole_episodes=w, **settings) for w in (False, True)]}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
