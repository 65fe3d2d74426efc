"""Environment throughput: frames per second per family, faithful and fast rendering,
one env and a TorchRL ``ParallelEnv``.

Usage::

    python benchmarks/bench_envs.py                              # one paper task per family
    python benchmarks/bench_envs.py dmc/walker_downhill --steps 400 --workers 2
    python benchmarks/bench_envs.py --json /tmp/envs.json

Each measurement steps the env with uniformly random actions for ``--steps`` agent steps
per env copy (after one untimed reset and warm-up step), rendering 64x64 pixels every
agent step, and reports agent steps/s and simulator frames/s (agent steps x action
repeat). ``parallel`` runs ``--workers`` copies, one process each; its rate counts the
steps of all copies. Episode ends reset inside the loop, as in collection.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from coworld_trl.envs import env_info, list_envs, make_batched_env, make_env

DEFAULT_ENVS = ("dmc/walker_walk", "metaworld/button-press", "robodesk/push_green")


def steps_per_second(name: str, *, fast_render: bool, workers: int, steps: int) -> float:
    """Agent steps per second (summed over copies) of random actions, resets included."""
    env = (make_env(name, seed=0, fast_render=fast_render) if workers == 1
           else make_batched_env(name, workers, parallel=True, seed=0, fast_render=fast_render))
    env.rollout(1)  # start workers, first renders
    start = time.perf_counter()
    rollout = env.rollout(steps, break_when_any_done=False)
    elapsed = time.perf_counter() - start
    env.close()
    return rollout.numel() / elapsed


def run(names: list[str], *, steps: int, workers: int) -> list[dict[str, Any]]:
    results = []
    for name in names:
        repeat = env_info(name).action_repeat
        for fast in (False, True):
            for copies in sorted({1, workers}):
                rate = steps_per_second(name, fast_render=fast, workers=copies, steps=steps)
                results.append(dict(env=name, render="fast" if fast else "faithful",
                                    mode="single" if copies == 1 else f"parallel x{copies}",
                                    steps_per_s=rate, frames_per_s=rate * repeat, action_repeat=repeat))
                print(f"{name:<28}{results[-1]['render']:<10}{results[-1]['mode']:<13}"
                      f"{rate:>9.1f} steps/s{rate * repeat:>9.1f} frames/s", flush=True)
    return results


def main(argv=None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"env names (default: {', '.join(DEFAULT_ENVS)})")
    parser.add_argument("--steps", type=int, default=200, help="agent steps per env copy")
    parser.add_argument("--workers", type=int, default=2, help="ParallelEnv copies")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    available = set(list_envs())
    names = args.names or [n for n in DEFAULT_ENVS if n in available]
    print(f"{'env':<28}{'render':<10}{'mode':<13}")
    results = run(names, steps=args.steps, workers=args.workers)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
