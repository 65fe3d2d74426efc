"""Reporting helpers: learning-curve plots, result tables and random-policy baselines.

    python -m coworld_trl.training.report random dmc/walker_walk --episodes 10
    python -m coworld_trl.training.report curve runs/.../results.jsonl -o curve.png --baseline 35
    python -m coworld_trl.training.report table runs/cmp_coworld_s0 runs/cmp_coworld_s1 runs/cmp_alone_s0
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch


def read_results(path: Path) -> list[dict]:
    """The evaluation records of a ``results.jsonl`` file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results file at {path}; pass a run's results.jsonl (or its run folder for 'table')")
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def results_table(run_dirs: list[Path]) -> str:
    """A markdown table of each run's evaluations (return and, where logged, value bias), then the
    mean and std over seeds of the final evaluation, grouping runs whose folder names differ only
    in a trailing ``_s<seed>``."""
    lines = ["| run | eval return, per evaluation | final return (mean +- std over episodes) "
             "| value bias, per evaluation |", "|---|---|---|---|"]
    finals: dict[str, list[dict]] = {}
    for run in run_dirs:
        records = read_results(Path(run) / "results.jsonl")
        if not records:
            raise ValueError(f"{run}/results.jsonl holds no evaluation yet; run it until its first evaluation")
        returns = " / ".join(f"{r['eval/return_mean']:.2f}" for r in records)
        biases = " / ".join(f"{r['eval/value_bias']:+.2f}" for r in records if "eval/value_bias" in r) or "-"
        last = records[-1]
        lines.append(f"| {Path(run).name} | {returns} | {last['eval/return_mean']:.2f} +- "
                     f"{last['eval/return_std']:.2f} | {biases} |")
        finals.setdefault(re.sub(r"_s\d+$", "", Path(run).name), []).append(last)
    lines.append("")
    for group, lasts in finals.items():
        parts = [f"{group}: n = {len(lasts)}"]
        for key, name in (("eval/return_mean", "final return"), ("eval/value_bias", "final value bias")):
            values = [r[key] for r in lasts if key in r]
            if values:
                spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                sign = "+" if key == "eval/value_bias" else ""
                parts.append(f"{name} {statistics.mean(values):{sign}.2f}{spread}")
        lines.append("- " + ", ".join(parts) + " (mean +- std over seeds)")
    return "\n".join(lines)


X_AXES = ("frames", "updates", "target_updates", "source_updates", "behaviour_updates")


def plot_curves(results: list[Path], output: Path, *, baseline: float | None = None, title: str = "",
                x: str = "frames") -> None:
    """Eval return (mean +- std over episodes) against ``x`` (a counter every results record of the
    run has: ``frames``, ``updates``, or its agent's ``target_updates``, ``source_updates``,
    ``behaviour_updates``), one line per results file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for path in results:
        records = read_results(path)
        if any(x not in r for r in records):
            raise ValueError(f"{path} has no {x!r} counter; use --x with one of "
                             f"{', '.join(k for k in X_AXES if all(k in r for r in records))}")
        frames = [r[x] for r in records]
        mean = torch.tensor([r["eval/return_mean"] for r in records])
        std = torch.tensor([r["eval/return_std"] for r in records])
        line, = ax.plot(frames, mean, marker="o", label=f"{Path(path).parent.name} eval")
        ax.fill_between(frames, mean - std, mean + std, alpha=0.2, color=line.get_color())
        train_csv = Path(path).parent / "logs" / "scalars" / "train" / "episode_return.csv"
        if train_csv.exists() and x == "frames":
            steps, values = zip(*(map(float, row.split(",")) for row in train_csv.read_text().split()))
            ax.plot(steps, values, linewidth=0.8, alpha=0.6, color=line.get_color(), linestyle=":",
                    label=f"{Path(path).parent.name} training episodes")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="random policy")
    ax.set_xlabel({"frames": "environment frames"}.get(x, x.replace("_", " ")))
    ax.set_ylabel("eval return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coworld_trl.training.report")
    sub = parser.add_subparsers(dest="command", required=True)
    rand = sub.add_parser("random", help="random-policy return of an env")
    rand.add_argument("env")
    rand.add_argument("--episodes", type=int, default=10)
    rand.add_argument("--seed", type=int, default=0)
    rand.add_argument("--fast-render", action="store_true", help="no shadows/reflections (same rewards, faster)")
    curve = sub.add_parser("curve", help="plot eval returns from results.jsonl files")
    curve.add_argument("results", nargs="+", type=Path)
    curve.add_argument("-o", "--output", type=Path, required=True)
    curve.add_argument("--baseline", type=float)
    curve.add_argument("--title", default="")
    curve.add_argument("--x", choices=X_AXES, default="frames",
                       help="x-axis counter (offline agents: updates, target_updates or behaviour_updates)")
    table = sub.add_parser("table", help="markdown table of eval returns and value bias of run folders")
    table.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "random":
        from coworld_trl.envs.baselines import random_policy_stats

        print(json.dumps(random_policy_stats(args.env, episodes=args.episodes, seed=args.seed,
                                             fast_render=args.fast_render)))
    elif args.command == "table":
        try:
            print(results_table(args.runs))
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
    else:
        try:
            plot_curves(args.results, args.output, baseline=args.baseline, title=args.title, x=args.x)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
