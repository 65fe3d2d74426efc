"""Throughput of online DreamerV2 as training runs it: env frames/s and updates/s for a fixed time.

Runs the ``OnlineDreamer`` schedule of the library's :class:`~coworld_trl.training.Experiment`
(collector with the acting policy, online replay, the agent's updates) on ``--env`` with the
``--preset``'s model and data sizes, for ``--seconds`` of wall clock, then stops (no final
evaluation or checkpoint). Reported separately: the prefill (random actions, no updates) and the
training phase (collect ``train_every`` steps, then ``updates_per_train`` updates), the latter's
frames/s and updates/s being what a long run sustains. Evaluation and checkpoints are off.

Usage::

    python benchmarks/bench_online.py --device cuda --preset paper --seconds 180 --json online.json
    python benchmarks/bench_online.py --device cuda --compile --cuda-graphs --autocast --replay-on-device
    python benchmarks/bench_online.py --smoke --json /tmp/online.json     # seconds on a CPU, tiny model
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld_trl.training import Callback, Experiment, OnlineDreamer, dreamer_config

# --smoke: a tiny model and replay that reach the training phase within seconds on a CPU.
SMOKE = dict(model=dict(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16, reward_layers=1,
                        actor_layers=1, critic_layers=1),
             data=dict(batch_size=2, seq_len=8, whole_episodes=False), agent=dict(horizon=3))


class Clock(Callback):
    """Stops the run after ``seconds`` and notes when the prefill ended."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()
        self.prefill_end: tuple[float, int, int] | None = None  # (time, frames, updates)

    def on_collect(self, experiment: Experiment, batch) -> None:
        now, progress = time.perf_counter(), experiment.progress
        if self.prefill_end is None and experiment.schedule.source.prefilled:
            self.prefill_end = (now, progress.frames + batch.numel() * experiment.schedule.source.frames_per_step,
                                progress.updates)
        if now - self.start >= self.seconds:
            experiment.stop_requested = True


def run(args: argparse.Namespace) -> dict[str, Any]:
    sections = SMOKE if args.smoke else {}
    train = dict(device=args.device, total_frames=10**9, compile=args.compile, cuda_graphs=args.cuda_graphs,
                 autocast=args.autocast, threads=args.threads, seed=args.seed)
    if args.smoke:
        train["prefill_frames"] = 100
    with tempfile.TemporaryDirectory() as output_dir:
        config = dreamer_config(
            args.preset, env={"name": args.env, "fast_render": args.smoke}, train=train,
            data={**sections.get("data", {}), "replay_on_device": args.replay_on_device},
            model=sections.get("model", {}), agent=sections.get("agent", {}),
            eval={"every_updates": 10**9, "episodes": 1, "video": False},
            logger={"log_every_updates": 100, "checkpoint_every_updates": 10**9, "checkpoint_every_minutes": 0},
            output_dir=output_dir)
        clock = Clock(args.seconds)
        setup_start = time.perf_counter()
        experiment = Experiment(config, OnlineDreamer(), callbacks=[clock])
        setup_s = time.perf_counter() - setup_start
        clock.start = time.perf_counter()
        schedule = experiment.schedule
        try:
            schedule.run(experiment)  # the schedule alone: no final evaluation or checkpoint
        finally:
            schedule.close()
        end = time.perf_counter()
    p = experiment.progress
    result: dict[str, Any] = dict(
        env=args.env, preset=args.preset, device=str(experiment.device), compile=args.compile,
        cuda_graphs=args.cuda_graphs, autocast=args.autocast, replay_on_device=args.replay_on_device,
        batch=config.data.batch_size, seq_len=config.data.seq_len, train_every=config.train.train_every,
        prefill_frames=config.train.prefill_frames, setup_s=setup_s, seconds=end - clock.start,
        frames=p.frames, updates=p.updates, frames_per_s=p.frames / (end - clock.start),
        updates_per_s=p.updates / (end - clock.start), torch=torch.__version__)
    if clock.prefill_end is not None:
        t, frames, updates = clock.prefill_end
        result.update(prefill_s=t - clock.start, prefill_frames_per_s=frames / max(t - clock.start, 1e-9),
                      training_s=end - t, training_frames_per_s=(p.frames - frames) / max(end - t, 1e-9),
                      training_updates_per_s=(p.updates - updates) / max(end - t, 1e-9))
    if experiment.device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(experiment.device))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="dmc/walker_walk")
    p.add_argument("--preset", default="paper", choices=["paper", "reference", "quick"])
    p.add_argument("--seconds", type=float, default=180.0, help="wall clock of the run, prefill included")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="train.compile")
    p.add_argument("--cuda-graphs", action="store_true", help="train.cuda_graphs (with --compile)")
    p.add_argument("--autocast", action="store_true", help="train.autocast (bf16)")
    p.add_argument("--replay-on-device", action="store_true", help="data.replay_on_device")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny model and prefill: the script end to end in seconds")
    p.add_argument("--json", default=None, help="write the results to this path")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    line = (f"online DreamerV2 on {result['env']} ({result['preset']}, {result['device']}): {result['frames']} frames, "
            f"{result['updates']} updates in {result['seconds']:.0f} s")
    if "training_s" in result:
        line += (f"; training phase {result['training_frames_per_s']:.1f} env frames/s, "
                 f"{result['training_updates_per_s']:.2f} updates/s")
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
