"""Command line for the environment registry::

    python -m coworld_trl.envs list [--family dmc] [--paper]     # names, action dim, episode, rewards
    python -m coworld_trl.envs random --paper --episodes 10       # random-policy returns, markdown
    python -m coworld_trl.envs pictures --paper -o docs/img/envs  # one PNG per task
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from coworld_trl.envs.registry import FAMILIES, env_info, list_envs, paper_env_names


def format_table(names: list[str]) -> str:
    rows = [("name", "action dim", "episode (frames / agent steps)", "action repeat", "reward per frame", "success")]
    for name in names:
        info = env_info(name)
        episode = "no limit" if info.episode_frames is None else f"{info.episode_frames} / {info.episode_steps}"
        rows.append((name + (" *" if info.paper else ""), str(info.action_dim), episode, str(info.action_repeat),
                     info.reward_per_step, "yes" if info.success else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([*lines, "", "* used in the CoWorld paper"])


def _names(args) -> list[str]:
    names = args.names or list_envs(args.family)
    return [n for n in names if n in paper_env_names()] if args.paper else names


def _pictures(names: list[str], out: Path, size: int) -> None:
    from coworld_trl.envs.baselines import first_frame, save_png
    from coworld_trl.envs.dmc import VARIANTS

    for name in names:
        frame = first_frame(name, image_size=size, steps=10)
        task = name.split("/", 1)[1]
        if task in VARIANTS:  # the variant next to the task it is paired with
            base = first_frame(f"dmc/{VARIANTS[task].domain}_{VARIANTS[task].base_task}", image_size=size, steps=10)
            frame = np.concatenate([base, np.full((size, 4, 3), 255, np.uint8), frame], 1)
        save_png(out / f"{name.replace('/', '_')}.png", frame)
        print(out / f"{name.replace('/', '_')}.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coworld_trl.envs", description="environment registry")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "list": sub.add_parser("list", help="every name with action dim, episode length and reward range"),
        "random": sub.add_parser("random", help="random-policy return (and success rate), JSON lines"),
        "pictures": sub.add_parser("pictures", help="one PNG per env (DMC variants next to their base task)"),
    }
    for command in commands.values():
        command.add_argument("names", nargs="*", help="env names (default: all, or --family / --paper)")
        command.add_argument("--family", choices=FAMILIES, default=None)
        command.add_argument("--paper", action="store_true", help="only the paper's tasks")
    commands["random"].add_argument("--episodes", type=int, default=10)
    commands["random"].add_argument("--seed", type=int, default=0)
    commands["random"].add_argument("--fast-render", action="store_true", help="same rewards, faster")
    commands["pictures"].add_argument("-o", "--output", type=Path, required=True)
    commands["pictures"].add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    names = _names(args)
    if args.command == "list":
        print(format_table(names))
    elif args.command == "random":
        from coworld_trl.envs.baselines import random_policy_stats

        for name in names:
            print(json.dumps(random_policy_stats(name, episodes=args.episodes, seed=args.seed,
                                                 fast_render=args.fast_render)), flush=True)
    else:
        _pictures(names, args.output, args.size)


if __name__ == "__main__":
    main()
