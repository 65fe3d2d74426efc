"""Tables over run folders: every run's evaluations (``report table``) and the paper-style
methods x tasks table with IQM and mean confidence intervals (``report aggregate``)."""
from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from coworld_trl.analysis.runs import Run, RunFolderError, display_name, group_runs, relative_names
from coworld_trl.analysis.stats import STATISTICS, Estimate, stratified_bootstrap


def runs_table(runs: list[Run]) -> str:
    """A markdown table of each run's evaluations (return and, where logged, value bias), then the
    mean and std over seeds of the final evaluation per setup (the population std, as in
    :func:`aggregate`). An unfinished run is marked with its progress and left out of its
    setup's summary: its last evaluation is no final score."""
    lines = ["| run | eval return, per evaluation | final return (mean +- std over episodes) "
             "| value bias, per evaluation |", "|---|---|---|---|"]
    for run, name in zip(runs, relative_names(runs)):
        returns = " / ".join(f"{r['eval/return_mean']:.2f}" for r in run.results)
        biases = " / ".join(f"{r['eval/value_bias']:+.2f}" for r in run.results if "eval/value_bias" in r) or "-"
        last = run.results[-1]
        name += f" (unfinished: {run.unfinished})" if run.unfinished else ""
        lines.append(f"| {name} | {returns} | {last['eval/return_mean']:.2f} +- {last['eval/return_std']:.2f} "
                     f"| {biases} |")
    lines.append("")
    for members in group_runs(runs).values():
        finished = [r for r in members if not r.unfinished]
        parts = [f"{members[0].label}: n = {len(finished)}"]
        for key, name in (("eval/return_mean", "final return"), ("eval/value_bias", "final value bias")):
            values = [r.results[-1][key] for r in finished if key in r.results[-1]]
            if values:
                spread = f" +- {statistics.pstdev(values):.2f}" if len(values) > 1 else ""
                sign = "+" if key == "eval/value_bias" else ""
                parts.append(f"{name} {statistics.mean(values):{sign}.2f}{spread}")
        running = len(members) - len(finished)
        summary = ", ".join(parts) + " (mean +- std over seeds)" if finished else f"{members[0].label}: no finished run"
        lines.append(f"- {summary}" + (f"; {running} unfinished run{'s' * (running > 1)} left out" if running else ""))
    return "\n".join(lines)


@dataclass
class Cell:
    """One method on one task: the final ``metric`` of each seed."""

    runs: list[Run]
    scores: list[float]

    @property
    def mean(self) -> float:
        return statistics.mean(self.scores)

    @property
    def std(self) -> float:
        """Population std over seeds (0 for one seed)."""
        return statistics.pstdev(self.scores)


@dataclass
class Aggregate:
    """Per method: a :class:`Cell` per task, the average over tasks, and IQM / mean with CIs."""

    metric: str
    normalized: bool
    tasks: list[str]
    cells: dict[str, dict[str, Cell]]
    estimates: dict[str, dict[str, Estimate]] = field(default_factory=dict)

    def average(self, method: str) -> float | None:
        """The mean over tasks of the per-task means (the paper's AVG column); ``None`` unless the
        method ran on every task."""
        cells = self.cells[method]
        return statistics.mean(cells[t].mean for t in self.tasks) if all(t in cells for t in self.tasks) else None

    def as_dict(self) -> dict:
        return {
            "metric": self.metric, "normalized": self.normalized, "tasks": self.tasks,
            "methods": {m: {"tasks": {t: {"runs": [str(r.path) for r in c.runs], "seeds": [r.seed for r in c.runs],
                                          "scores": c.scores, "mean": c.mean, "std": c.std} for t, c in cells.items()},
                            "average": self.average(m),
                            **{name: est.as_dict() for name, est in self.estimates[m].items()}}
                        for m, cells in self.cells.items()},
        }


def aggregate(runs: list[Run], *, metric: str = "eval/return_mean", normalize: dict[str, tuple[float, float]] | None = None,
              names: dict[str, str] | None = None, reps: int = 2000, seed: int = 0,
              at: tuple[str, float] | None = None) -> Aggregate:
    """Final ``metric`` of every run, per method and task, and each method's IQM and mean over
    all its (seed, task) scores with 95% stratified-bootstrap CIs. An unfinished run is refused
    unless ``at`` scores every run at one point.

    Keyword Args:
        at: ``(counter, value)``: each run's score is its evaluation where ``counter`` (a
            results.jsonl counter such as ``agent_updates``) equals ``value``, finished or not.
        normalize: ``{task: (random, expert)}``: scores become ``(x - random) / (expert - random)``.
        names: display names of the methods and tasks matching shell patterns
            (``{"coworld_paper*": "CoWorld"}``); methods given one name share a row.
    """
    cells: dict[str, dict[str, Cell]] = {}
    tasks: list[str] = []
    for (method, task), members in group_runs(runs).items():
        method, task = display_name(method, names), display_name(str(task), names)
        scores = [r.final(metric, at) for r in members]
        if normalize is not None:
            if members[0].task not in normalize:
                raise RunFolderError(f"no random/expert scores for task {members[0].task!r} in the normalisation "
                                     f"file; add it as \"{members[0].task}\": {{\"random\": ..., \"expert\": ...}}")
            low, high = normalize[members[0].task]
            scores = [(s - low) / (high - low) for s in scores]
        if task in cells.setdefault(method, {}):
            raise RunFolderError(f"{cells[method][task].runs[0].path} and {members[0].path} are both {method!r} on "
                                 f"{task!r} after renaming; give them distinct names")
        cells[method][task] = Cell(members, scores)
        if task not in tasks:
            tasks.append(task)
    result = Aggregate(metric, normalize is not None, tasks, cells)
    for method, per_task in cells.items():
        result.estimates[method] = {name: stratified_bootstrap([c.scores for c in per_task.values()], fn, reps=reps,
                                                               seed=seed) for name, fn in STATISTICS.items()}
    return result


def _best(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _spread(cell: Cell | None) -> float | None:
    """The std over seeds, or ``None`` (no ``+-``) for one seed, whose std says nothing."""
    return cell.std if cell is not None and len(cell.scores) > 1 else None


def paper_table(result: Aggregate, *, digits: int = 1, latex: bool = False) -> str:
    """Methods x tasks, ``mean +- std`` over seeds (the mean alone for one seed), an average
    column, the best of each column in bold; markdown, or a LaTeX ``tabular`` (booktabs)."""
    methods = list(result.cells)
    columns = [[result.cells[m][t].mean if t in result.cells[m] else None for m in methods] for t in result.tasks]
    columns.append([result.average(m) for m in methods])
    best = [_best(col) for col in columns]

    def fmt(value: float | None, spread: float | None, bold: bool) -> str:
        if value is None:
            return "-"
        pm = " $\\pm$ " if latex else " ± "
        text = f"{value:.{digits}f}" + (f"{pm}{spread:.{digits}f}" if spread is not None else "")
        return (f"\\textbf{{{text}}}" if latex else f"**{text}**") if bold else text

    header = ["Method", *result.tasks, "Avg."]
    rows = []
    for i, method in enumerate(methods):
        cells = [fmt(col[i], _spread(result.cells[method].get(t)), col[i] == best[j])
                 for j, (t, col) in enumerate(zip(result.tasks, columns))]
        cells.append(fmt(columns[-1][i], None, columns[-1][i] is not None and columns[-1][i] == best[-1]))
        rows.append([method, *cells])
    if not latex:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

    def tex(text: str) -> str:
        for char in "_&%#":
            text = text.replace(char, "\\" + char)
        return text

    lines = [f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", "\\toprule",
             " & ".join(tex(h) for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join([tex(row[0]), *row[1:]]) + " \\\\" for row in rows]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"])


def estimates_table(result: Aggregate) -> str:
    """IQM and mean with their CIs, per method (markdown)."""
    lines = ["| Method | runs | tasks | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|---|"]
    for method, per_task in result.cells.items():
        est = result.estimates[method]
        lines.append(f"| {method} | {sum(len(c.scores) for c in per_task.values())} | {len(per_task)} "
                     f"| {est['iqm']} | {est['mean']} |")
    return "\n".join(lines)


def sweep_status(runs: list[Run], *, stale_minutes: float = 30.0, now: float | None = None) -> tuple[str, list[dict]]:
    """A markdown table of the runs' ``status.json`` (phase, progress, counters, age), their last
    evaluation (from ``results.jsonl``), the time a running run has left at the pace of its
    current process, and a summary line; a run not finished whose status is older than
    ``stale_minutes`` is flagged stale (its job may have died: re-launch it to resume)."""
    now = time.time() if now is None else now
    lines = ["| run | phase | progress | frames | updates | last eval return | updated | left |",
             "|---|---|---|---|---|---|---|---|"]
    rows, counts = [], Counter()
    for run, name in zip(runs, relative_names(runs)):
        status = run.status
        if status is None:
            counts["without status"] += 1
            rows.append({"run": name, "path": str(run.path), "state": "no status"})
            lines.append(f"| {name} | no status | - | - | - | - | - | - |")
            continue
        age = now - status["updated_at"]
        state = ("finished" if status["finished"] else "stale" if age > 60 * stale_minutes
                 else "interrupted" if status["phase"] == "interrupted" else "running")
        counts[state] += 1
        rows.append({"run": name, "path": str(run.path), "state": state, **status})
        progress = f"{100 * status['done'] / max(status['total'], 1):.0f}% of {status['total']} {status['unit']}s"
        evaluation = _last_evaluation(run.results[-1]) if run.results else "-"
        phase = status["phase"] + (" (stale)" if state == "stale" else "")
        left = "-"
        if state == "running" and status.get("rate"):
            left = _duration((status["total"] - status["done"]) / status["rate"] - age)
            per_hour = status["rate"] * 3600
            left += f" at {per_hour:,.0f}" if per_hour >= 100 else f" at {per_hour:.3g}"
            left += f" {status['unit']}s/h"
        lines.append(f"| {name} | {phase} | {progress} | {status['frames']} | {status['updates']} | {evaluation} "
                     f"| {_ago(age)} | {left} |")
    order = ("finished", "running", "interrupted", "stale", "without status")
    lines += ["", f"{len(runs)} run{'s' * (len(runs) != 1)}: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k])]
    return "\n".join(lines), rows


def _last_evaluation(record: dict) -> str:
    """``1.1 after 250 agent updates, 2000 frames``: the evaluated agent's updates are the
    counter every agent shares (an offline run has no frames; CoWorld's are the source's)."""
    when = [f"{record['agent_updates']} agent updates"] if "agent_updates" in record else []
    when += [f"{record['frames']} frames"] if record.get("frames") else []
    return f"{record['eval/return_mean']:.1f}" + (f" after {', '.join(when)}" if when else "")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.{1 if unit != 'min' else 0}f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _ago(seconds: float) -> str:
    return _duration(seconds) + " ago"
