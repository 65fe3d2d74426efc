"""The paper's figures over run folders, each returning the numbers it draws: learning curves
with CI bands, value overestimation (Fig. 5b), the transfer matrix (Fig. 3) and the
hyperparameter sensitivity (Fig. 6)."""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from coworld_trl.analysis.runs import Run, RunFolderError, display_name, group_runs
from coworld_trl.analysis.stats import mean_band, require


def pyplot():
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot")


def save(fig, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    pyplot().close(fig)


def _by_task(runs: list[Run]) -> dict[str | None, dict[str, list[Run]]]:
    tasks: dict[str | None, dict[str, list[Run]]] = {}
    for (method, task), members in group_runs(runs).items():
        tasks.setdefault(task, {})[method] = members
    return tasks


def _subplots(count: int, *, width: float = 5.0, height: float = 3.6):
    fig, axes = pyplot().subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, axes[0]


# ----------------------------------------------------------------------- curves
def learning_curves(runs: list[Run], output: Path, *, metric: str = "eval/return_mean", x: str = "frames",
                    reps: int = 2000, seed: int = 0, hlines: list[dict] = (), each_seed: bool = False,
                    names: dict[str, str] | None = None) -> dict:
    """Per task a panel, per method the mean over seeds of ``metric`` against ``x`` with its 95%
    bootstrap band (the legend counts the seeds and the unfinished ones among them). Seeds are
    interpolated onto the evaluation points they all cover;
    ``each_seed`` also draws every seed's own curve over all its evaluations. ``hlines``
    (``{"task": name or None for every panel, "label", "value"}``) are reference lines: a
    dataset's mean return, the random policy's. ``names``: display names of the methods
    matching shell patterns (``{"offline_dv2*": "Offline DV2"}``), in the legend and the numbers."""
    numbers = {}
    tasks = _by_task(runs)
    unknown = sorted({line["task"] for line in hlines} - {None, *map(str, tasks)})
    if unknown:
        raise RunFolderError(f"--hline for {', '.join(unknown)}: no run of that task; the runs' tasks are "
                             f"{', '.join(map(str, tasks))}")
    fig, axes = _subplots(len(tasks))
    for ax, (task, methods) in zip(axes, tasks.items()):
        for method, members in methods.items():
            shown = display_name(method, names)
            if shown in numbers.get(str(task), {}):
                raise RunFolderError(f"two methods on {task} are both named {shown!r} (one is {members[0].path}); "
                                     f"give them distinct --name")
            for run in members:
                if any(x not in r or metric not in r for r in run.results):
                    raise RunFolderError(f"{run.path}/results.jsonl has evaluations without {x!r} or {metric!r}; "
                                         f"choose --x and --metric among the counters every record has")
            xs = [np.array([r[x] for r in run.results], dtype=float) for run in members]
            ys = [np.array([r[metric] for r in run.results], dtype=float) for run in members]
            lo, hi = max(v.min() for v in xs), min(v.max() for v in xs)
            grid = np.unique(np.concatenate([v[(v >= lo) & (v <= hi)] for v in xs]))
            curves = np.stack([np.interp(grid, v, y) for v, y in zip(xs, ys)])
            mean, low, high = mean_band(curves, reps=reps, seed=seed)
            unfinished = [r.seed for r in members if r.unfinished]
            label = f"{shown} (n={len(members)}" + (f", {len(unfinished)} unfinished)" if unfinished else ")")
            line, = ax.plot(grid, mean, marker="o", markersize=3, label=label)
            if low is not None:
                ax.fill_between(grid, low, high, alpha=0.2, color=line.get_color())
            if each_seed:
                for v, y in zip(xs, ys):
                    ax.plot(v, y, color=line.get_color(), alpha=0.4, linewidth=0.8)
            numbers.setdefault(str(task), {})[shown] = {
                "x": grid.tolist(), "mean": mean.tolist(), "ci_low": None if low is None else low.tolist(),
                "ci_high": None if high is None else high.tolist(), "seeds": [r.seed for r in members],
                "unfinished_seeds": unfinished,
                "per_seed": {str(r.seed): {"x": v.tolist(), "y": y.tolist()} for r, v, y in zip(members, xs, ys)}}
        mine = [line for line in hlines if line["task"] in (None, str(task))]
        for line, style in zip(mine, ("--", ":", "-.") * len(mine)):
            ax.axhline(line["value"], color="gray", linestyle=style, label=line["label"])
        ax.set_title(str(task) if task else "")
        ax.set_xlabel({"frames": "environment frames"}.get(x, x.replace("_", " ")))
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    save(fig, output)
    return {"metric": metric, "x": x, "tasks": numbers, "hlines": list(hlines)}


# ------------------------------------------------------------ value (Fig. 5b)
VALUE_KEYS = ("eval/value_estimate", "eval/value_true")


def value_overestimation(runs: list[Run], output: Path) -> list[dict]:
    """Fig. 5b: per task a panel, per method the critic's estimate and the discounted true return
    (means over the steps of the last evaluation's episodes, then mean +- std over seeds)."""
    rows = []
    tasks = _by_task(runs)
    fig, axes = _subplots(len(tasks))
    for ax, (task, methods) in zip(axes, tasks.items()):
        for method, members in methods.items():
            for run in members:
                if any(k not in run.evaluation() for k in VALUE_KEYS):
                    raise RunFolderError(f"{run.path}/results.jsonl has no eval/value_estimate and eval/value_true (an "
                                         f"agent without a critic, or evaluated before they were recorded); "
                                         f"evaluate its checkpoint with this version")
            estimate = [run.final("eval/value_estimate") for run in members]
            true = [run.final("eval/value_true") for run in members]
            rows.append({"task": task, "method": method, "seeds": [r.seed for r in members],
                         "estimate_mean": statistics.mean(estimate), "estimate_std": statistics.pstdev(estimate),
                         "true_mean": statistics.mean(true), "true_std": statistics.pstdev(true),
                         "bias_mean": statistics.mean(e - t for e, t in zip(estimate, true))})
        mine = [r for r in rows if r["task"] == task]
        at = np.arange(len(mine))
        ax.bar(at - 0.2, [r["estimate_mean"] for r in mine], 0.4, yerr=[r["estimate_std"] for r in mine],
               label="estimated value", capsize=3)
        ax.bar(at + 0.2, [r["true_mean"] for r in mine], 0.4, yerr=[r["true_std"] for r in mine],
               label="true value (discounted return)", capsize=3)
        ax.set_xticks(at, [r["method"] for r in mine], rotation=20, ha="right")
        ax.set_title(str(task) if task else "")
        ax.set_ylabel("value")
        ax.legend(fontsize=8)
    save(fig, output)
    return rows


# ------------------------------------------------------ transfer matrix (Fig. 3)
def source_name(run: Run) -> str:
    sources = run.config.get("sources", run.config.get("source"))
    if sources is None:
        raise RunFolderError(f"{run.path}/config.yaml names no source (sources or source); pass CoWorld runs as "
                             f"--coworld and the baseline's as --baseline")
    return "+".join(sources) if isinstance(sources, tuple) else str(sources)


def transfer_matrix(coworld: list[Run], baseline: list[Run], output: Path, *,
                    metric: str = "eval/return_mean") -> list[dict]:
    """Fig. 3 (left): per source x target, CoWorld's mean final ``metric`` over seeds divided by
    the baseline's (Offline DV2) on the same target; the best source of each target is framed."""
    base: dict[str, list[float]] = {}
    for (_, task), members in group_runs(baseline).items():
        if task in base:
            raise RunFolderError(f"more than one baseline setup on {task!r} ({members[0].path}); pass one baseline")
        base[task] = [r.final(metric) for r in members]
    cells = []
    for (_, task), members in group_runs(coworld).items():
        if task not in base:
            raise RunFolderError(f"no baseline run on {task!r} (for {members[0].path}); add its Offline DV2 runs "
                                 f"to --baseline")
        scores, reference = [r.final(metric) for r in members], statistics.mean(base[task])
        cells.append({"source": source_name(members[0]), "target": task, "coworld_mean": statistics.mean(scores),
                      "baseline_mean": reference, "coworld_seeds": len(scores), "baseline_seeds": len(base[task]),
                      "ratio": statistics.mean(scores) / reference if reference else float("nan")})
    sources = sorted({c["source"] for c in cells})
    targets = sorted({c["target"] for c in cells})
    grid = np.full((len(sources), len(targets)), np.nan)
    for c in cells:
        grid[sources.index(c["source"]), targets.index(c["target"])] = c["ratio"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(targets) + 3, 0.6 * len(sources) + 2))
    finite = grid[np.isfinite(grid)]
    spread = max(abs(finite - 1).max(), 0.05) if finite.size else 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=1 - spread, vmax=1 + spread)
    for i in range(len(sources)):
        for j in range(len(targets)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    for j in range(len(targets)):
        column = grid[:, j]
        if np.isfinite(column).any():
            i = int(np.nanargmax(column))
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("target (offline)")
    ax.set_ylabel("source (online)")
    fig.colorbar(image, ax=ax, label="CoWorld / baseline return")
    save(fig, output)
    return cells


# ---------------------------------------------------------- sensitivity (Fig. 6)
def sensitivity(runs: list[Run], output: Path, *, params: list[str], metric: str = "eval/return_mean",
                baseline: list[Run] = ()) -> dict:
    """Fig. 6: per parameter a panel of the final ``metric`` (mean +- std over seeds) against its
    value, over the runs whose other ``params`` hold their most common value (the sweep's
    base setting); ``baseline`` runs draw a band (the paper's DV2 Finetune)."""
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise RunFolderError(f"the runs span tasks {', '.join(sorted(map(str, tasks)))}; pass one task's sweep")
    for param in params:
        if not any(param in r.config for r in runs):
            raise RunFolderError(f"no run's config.yaml has {param!r}; pass config keys such as coupling.beta")
    group_runs(runs)
    base = {p: Counter(r.config.get(p) for r in runs).most_common(1)[0][0] for p in params}
    result = {"metric": metric, "base": base, "params": {}}
    fig, axes = _subplots(len(params), width=4.0)
    reference = [r.final(metric) for r in baseline]
    for ax, param in zip(axes, params):
        chosen = [r for r in runs if all(r.config.get(q) == base[q] for q in params if q != param)]
        values = sorted({r.config.get(param) for r in chosen})
        points = []
        for value in values:
            scores = [r.final(metric) for r in chosen if r.config.get(param) == value]
            points.append({"value": value, "mean": statistics.mean(scores), "std": statistics.pstdev(scores),
                           "seeds": len(scores)})
        result["params"][param] = points
        ax.errorbar([p["value"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                    marker="o", capsize=3, label="CoWorld")
        if reference:
            mid, std = statistics.mean(reference), statistics.pstdev(reference)
            ax.axhline(mid, color="gray", linestyle="--", label="baseline")
            ax.axhspan(mid - std, mid + std, color="gray", alpha=0.15)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    if reference:
        result["baseline"] = {"mean": statistics.mean(reference), "std": statistics.pstdev(reference),
                              "seeds": len(reference)}
    save(fig, output)
    return result
