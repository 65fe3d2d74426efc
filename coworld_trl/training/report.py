"""Reports over run folders: tables, aggregate statistics, the paper's figures, sweep status.

    python -m coworld_trl.training.report random dmc/walker_walk --episodes 10
    python -m coworld_trl.training.report curve runs/.../results.jsonl -o curve.png --baseline 35
    python -m coworld_trl.training.report table runs/dmc/walker_downhill
    python -m coworld_trl.training.report aggregate runs/dmc --latex table3.tex --json table3.json
    python -m coworld_trl.training.report aggregate runs/dmc --at agent_updates=1000         # runs in progress
    python -m coworld_trl.training.report aggregate runs/dmc --finished-only                 # ... their finished runs
    python -m coworld_trl.training.report curves runs/dmc -o curves.png --x agent_updates --hline 'dataset mean=23.4'
    python -m coworld_trl.training.report value runs/metaworld -o value.png                      # Fig. 5b
    python -m coworld_trl.training.report alignment before/ after/ -o tsne.png                   # Fig. 11
    python -m coworld_trl.training.report transfer --coworld runs/t --baseline runs/b -o t.png   # Fig. 3
    python -m coworld_trl.training.report sensitivity runs/sweep -o sensitivity.png              # Fig. 6
    python -m coworld_trl.training.report status runs/

Run arguments take run folders or folders holding them (a sweep's). Figures write the PNG and
the numbers behind it next to it (``.json``; ``.csv`` for the per-cell ones). The analysis
package (:mod:`coworld_trl.analysis`) holds the work; errors are one line (``error: ...``,
exit status 2).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import torch

from coworld_trl.errors import CoWorldError


def read_results(path: Path) -> list[dict]:
    """The evaluation records of a ``results.jsonl`` file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results file at {path}; pass a run's results.jsonl (or its run folder for 'table')")
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


X_AXES = ("frames", "updates", "agent_updates", "target_updates", "source_updates", "behaviour_updates")


def plot_curves(results: list[Path], output: Path, *, baseline: float | None = None, title: str = "",
                x: str = "frames") -> dict:
    """Eval return (mean +- std over episodes) against ``x`` (a counter every results record of the
    run has: ``frames``, ``updates``, or its agent's ``target_updates``, ``source_updates``,
    ``behaviour_updates``), one line per results file; returns the numbers drawn."""
    from coworld_trl.analysis.figures import pyplot, save
    from coworld_trl.analysis.runs import RunFolderError

    fig, ax = pyplot().subplots(figsize=(6, 4))
    numbers = {"x": x, "baseline": baseline, "lines": []}
    for path in results:
        records = read_results(path)
        if any(x not in r for r in records):
            raise RunFolderError(f"{path} has no {x!r} counter; use --x with one of "
                             f"{', '.join(k for k in X_AXES if all(k in r for r in records))}")
        frames = [r[x] for r in records]
        mean = torch.tensor([r["eval/return_mean"] for r in records])
        std = torch.tensor([r["eval/return_std"] for r in records])
        line, = ax.plot(frames, mean, marker="o", label=f"{Path(path).parent.name} eval")
        ax.fill_between(frames, mean - std, mean + std, alpha=0.2, color=line.get_color())
        numbers["lines"].append({"results": str(path), "x": frames, "mean": mean.tolist(), "std": std.tolist()})
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
    save(fig, output)
    return numbers


def read_normalization(path: Path) -> dict[str, tuple[float, float]]:
    """``{"task": {"random": r, "expert": e}}`` (or ``[r, e]``) -> ``{task: (r, e)}``."""
    from coworld_trl.analysis.runs import RunFolderError

    try:
        table = json.loads(Path(path).read_text())
        scores = {task: (float(v["random"]), float(v["expert"])) if isinstance(v, dict) else (float(v[0]), float(v[1]))
                  for task, v in table.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise RunFolderError(f"--normalize {path}: not a JSON object of task -> {{\"random\": r, \"expert\": e}} "
                             f"({type(err).__name__}: {err})") from None
    for task, (low, high) in scores.items():
        if high == low:
            raise RunFolderError(f"--normalize {path}: task {task!r} has random == expert ({low}); they must differ")
    return scores


def parse_names(pairs: list[str]) -> dict[str, str]:
    from coworld_trl.analysis.runs import RunFolderError

    names = {}
    for pair in pairs:
        old, sep, new = pair.rpartition("=")  # OLD may hold '=' (a sweep folder's key), NEW may not
        if not sep or not old or not new:
            raise RunFolderError(f"--name {pair!r}: use OLD=NEW, e.g. --name 'coworld_paper*=CoWorld'")
        names[old] = new
    return names


def parse_at(text: str | None) -> tuple[str, float] | None:
    """``aggregate --at agent_updates=1000`` -> ``("agent_updates", 1000.0)``."""
    from coworld_trl.analysis.runs import RunFolderError

    if text is None:
        return None
    counter, _, value = text.partition("=")
    try:
        if counter in X_AXES:
            return counter, float(value)
    except ValueError:
        pass
    raise RunFolderError(f"--at {text!r}: use COUNTER=N with COUNTER one of {', '.join(X_AXES)}, "
                         f"e.g. --at agent_updates=1000")


def parse_hlines(pairs: list[str]) -> list[dict]:
    """``[TASK:]LABEL=NUMBER`` reference lines: ``{"task": TASK or None (every panel), "label", "value"}``."""
    from coworld_trl.analysis.runs import RunFolderError

    lines = []
    for pair in pairs:
        scoped, _, value = pair.rpartition("=")
        task, _, label = scoped.rpartition(":")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not label or not math.isfinite(number):
            raise RunFolderError(f"--hline {pair!r}: use [TASK:]LABEL=NUMBER, e.g. --hline 'dataset mean=23.4' "
                                 f"or --hline 'dmc/cheetah_run:random=6.69'")
        lines.append({"task": task or None, "label": label, "value": number})
    return lines


def write_numbers(output: Path, numbers, rows: list[dict] | None = None) -> list[Path]:
    """The numbers behind a figure next to it: ``<output>.json`` and, for per-cell rows, ``.csv``."""
    written = [output.with_suffix(".json")]
    written[0].write_text(json.dumps(numbers, indent=1, default=str) + "\n")
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        written.append(output.with_suffix(".csv"))
        written[1].write_text(buffer.getvalue())
    return written


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m coworld_trl.training.report", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
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

    def add_names(command, what: str, more: str = ""):
        command.add_argument("--name", action="append", default=[], metavar="OLD=NEW",
                             help=f"display name of the {what} matching OLD (a shell pattern: "
                                  f"'coworld_paper*=CoWorld'){more}")

    def runs_command(name: str, help: str, *, output: bool = True, metric: bool = True, runs: bool = True):
        command = sub.add_parser(name, help=help)
        if runs:
            command.add_argument("runs", nargs="+", type=Path, help="run folders or folders holding them")
        if output:
            command.add_argument("-o", "--output", type=Path, required=True, help="the PNG (numbers: .json/.csv beside it)")
        if metric:
            command.add_argument("--metric", default="eval/return_mean", help="results.jsonl key of the score")
        return command

    agg = runs_command("aggregate", "methods x tasks table (mean +- std over seeds), IQM and mean with 95%% "
                                    "stratified-bootstrap CIs", output=False)
    agg.add_argument("--normalize", type=Path, help='JSON {"task": {"random": r, "expert": e}}: scores become '
                                                    "(x - r) / (e - r)")
    add_names(agg, "methods or tasks", "; methods given one name share a row")
    agg.add_argument("--at", metavar="COUNTER=N",
                     help="score every run at the evaluation where COUNTER is N (agent_updates=1000), unfinished "
                          "runs included; without it unfinished runs are refused")
    agg.add_argument("--finished-only", action="store_true",
                     help="score the finished runs and leave the unfinished ones out with a note on stderr")
    agg.add_argument("--digits", type=int, default=1)
    agg.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    agg.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    agg.add_argument("--markdown", type=Path, help="also write the tables here")
    agg.add_argument("--latex", type=Path, help="write the methods x tasks table as a LaTeX tabular")
    agg.add_argument("--json", type=Path, help="write every score and estimate as JSON")
    curves = runs_command("curves", "learning curves: mean over seeds with 95%% bootstrap bands, a panel per task")
    curves.add_argument("--x", choices=X_AXES, default="frames",
                        help="x-axis counter; agent_updates (the evaluated agent's updates) is shared by every agent")
    curves.add_argument("--reps", type=int, default=2000)
    curves.add_argument("--hline", action="append", default=[], metavar="[TASK:]LABEL=VALUE",
                        help="a reference line in every panel, or in TASK's: --hline 'dataset mean=23.4' "
                             "--hline 'dmc/cheetah_run:random=6.69'")
    add_names(curves, "methods", ", in the legend and the numbers")
    curves.add_argument("--each-seed", action="store_true",
                        help="also draw every seed's own curve (all its evaluations; the mean covers the common range)")
    runs_command("value", "Fig. 5b: the critic's estimate against the discounted true return, per method",
                 metric=False)
    transfer = runs_command("transfer", "Fig. 3: CoWorld / baseline return over a source x target grid", runs=False)
    transfer.add_argument("--coworld", nargs="+", type=Path, required=True, help="CoWorld runs (one source each)")
    transfer.add_argument("--baseline", nargs="+", type=Path, required=True, help="Offline DV2 runs of the targets")
    sens = runs_command("sensitivity", "Fig. 6: return against beta2, k and alpha from a sweep")
    sens.add_argument("--params", nargs="+", default=["coupling.beta", "coupling.k", "coupling.alpha"])
    sens.add_argument("--baseline", nargs="+", type=Path, default=[], help="runs drawn as a band (DV2 Finetune)")
    align = runs_command("alignment", "Fig. 11: t-SNE of source and target embeddings before and after alignment",
                         metric=False, runs=False)
    align.add_argument("before", type=Path, help="CoWorld checkpoint file or run folder, before alignment")
    align.add_argument("after", type=Path, help="CoWorld checkpoint file or run folder, after alignment")
    align.add_argument("--dataset", type=Path, help="target observations (default: the after run's dataset)")
    align.add_argument("--observations", type=int, default=500)
    align.add_argument("--seed", type=int, default=0)
    status = runs_command("status", "where each run of a sweep is (status.json)", output=False, metric=False)
    status.add_argument("--stale-minutes", type=float, default=30.0, help="flag unfinished runs silent this long")
    status.add_argument("--json", type=Path, help="also write the statuses as JSON")
    return p


def run(args) -> str:
    """Do ``args.command``; returns what to print."""
    from coworld_trl.analysis import alignment, figures, tables
    from coworld_trl.analysis.runs import find_runs, load_run, load_runs

    if args.command == "random":
        from coworld_trl.envs.baselines import random_policy_stats

        return json.dumps(random_policy_stats(args.env, episodes=args.episodes, seed=args.seed,
                                              fast_render=args.fast_render))
    if args.command == "curve":
        numbers = plot_curves(args.results, args.output, baseline=args.baseline, title=args.title, x=args.x)
        return f"wrote {args.output}, {write_numbers(args.output, numbers)[0]}"
    if args.command == "table":
        return tables.runs_table(load_runs(args.runs))
    if args.command == "status":
        text, rows = tables.sweep_status([load_run(p, need_results=False) for p in find_runs(args.runs)],
                                         stale_minutes=args.stale_minutes)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
        return text
    if args.command == "aggregate":
        normalize = read_normalization(args.normalize) if args.normalize else None
        at = parse_at(args.at)
        runs = load_runs(args.runs, finished_only=args.finished_only)
        result = tables.aggregate(runs, metric=args.metric, normalize=normalize, names=parse_names(args.name),
                                  reps=args.reps, seed=args.seed, at=at)
        point = "final evaluation" if at is None else "evaluation at %s=%g" % at
        text = (f"{args.metric}{' (normalised)' if normalize else ''}: {point}, mean ± std over seeds\n\n"
                f"{tables.paper_table(result, digits=args.digits)}\n\n{tables.estimates_table(result)}")
        if args.markdown:
            args.markdown.write_text(text + "\n")
        if args.latex:
            args.latex.write_text(tables.paper_table(result, digits=args.digits, latex=True) + "\n")
        if args.json:
            args.json.write_text(json.dumps(result.as_dict(), indent=1) + "\n")
        return text
    if args.command == "curves":
        numbers = figures.learning_curves(load_runs(args.runs), args.output, metric=args.metric, x=args.x,
                                          reps=args.reps, hlines=parse_hlines(args.hline), each_seed=args.each_seed,
                                          names=parse_names(args.name))
        written = write_numbers(args.output, numbers)
        return f"wrote {args.output}, {written[0]}"
    if args.command == "value":
        rows = figures.value_overestimation(load_runs(args.runs), args.output)
        written = write_numbers(args.output, rows, rows)
        return (markdown(rows, ["task", "method", "estimate_mean", "true_mean", "bias_mean"]) +
                f"\n\nwrote {args.output}, " + ", ".join(map(str, written)))
    if args.command == "transfer":
        cells = figures.transfer_matrix(load_runs(args.coworld), load_runs(args.baseline), args.output,
                                        metric=args.metric)
        written = write_numbers(args.output, cells, cells)
        return (markdown(cells, ["source", "target", "coworld_mean", "baseline_mean", "ratio"]) +
                f"\n\nwrote {args.output}, " + ", ".join(map(str, written)))
    if args.command == "sensitivity":
        baseline = load_runs(args.baseline) if args.baseline else []
        numbers = figures.sensitivity(load_runs(args.runs), args.output, params=args.params, metric=args.metric,
                                      baseline=baseline)
        rows = [{"param": param, **point} for param, points in numbers["params"].items() for point in points]
        written = write_numbers(args.output, numbers, rows)
        return (markdown(rows, ["param", "value", "mean", "std", "seeds"]) +
                f"\n\nwrote {args.output}, " + ", ".join(map(str, written)))
    result = alignment.latent_alignment(args.before, args.after, args.output, dataset=args.dataset,
                                        observations=args.observations, seed=args.seed)
    written = write_numbers(args.output, result)
    args.output.with_suffix(".csv").write_text(alignment.points_csv(result))
    return (f"Eq. 3 KL between source and target embeddings of {result['observations']} observations: "
            f"before {result['before']['alignment_kl']:.4g}, after {result['after']['alignment_kl']:.4g}\n"
            f"wrote {args.output}, {written[0]}, {args.output.with_suffix('.csv')}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        print(run(args))
    except (CoWorldError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)  # one line, no traceback
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
