"""Run folders as the analyses read them: config, evaluations, status, and which runs are seeds
of one setup.

A run folder holds ``results.jsonl`` (one record per evaluation) and, when a recipe wrote it,
``config.yaml`` and ``status.json``. Runs are seeds of one *setup* when their configs agree on
everything but :data:`NOT_SETUP` (the seed, the folder, and settings that do not change
results); folders without ``config.yaml`` fall back to their layout: ``<setup>/seed<N>`` or
``<setup>_s<N>``. A setup is named by its *task* (``target.name``, else ``env.name``) and its
*method*: the folders between the task and the seed folder
(``runs/dmc/walker_downhill/coworld_quick/seed0`` -> ``coworld_quick``; a multirun job's
``coworld_quick/coupling.beta=2``), else the setup folder's name.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from coworld_trl.errors import CoWorldError

NOT_SETUP = ("train.seed", "output_dir", "train.device", "train.threads", "eval.video")
NOT_SETUP_PREFIXES = ("logger.",)
SEED_FOLDER = re.compile(r"^seed(\d+)$")
SEED_SUFFIX = re.compile(r"^(.*)_s(\d+)$")


class RunFolderError(CoWorldError, ValueError):
    """A folder is not a usable run folder (or run folders disagree); the message names it and the fix."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"coupling": {"beta": 1.5}}`` -> ``{"coupling.beta": 1.5}`` (lists become tuples, so values hash)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _read_json_lines(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RunFolderError(f"{path} line {number} is not JSON ({err.msg}); the file is damaged, "
                                     f"remove that line or the run") from None
    return records


@dataclass
class Run:
    """One run folder. ``config`` is its flattened ``config.yaml`` (empty without one)."""

    path: Path
    config: dict[str, Any]
    results: list[dict]
    seed: int | None = None
    task: str | None = None
    method: str = ""
    setup: tuple = field(default=(), repr=False)

    @property
    def status(self) -> dict | None:
        """``status.json`` (written by the experiment at every log, evaluation and checkpoint)."""
        path = self.path / "status.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def label(self) -> str:
        return f"{self.task} {self.method}" if self.task else self.method

    @property
    def unfinished(self) -> str | None:
        """How far an unfinished run is (``"51% of 2000 updates"``); ``None`` for a finished run or
        one without ``status.json`` (written before the experiment layer kept one)."""
        status = self.status
        if status is None or status["finished"]:
            return None
        return f"{100 * status['done'] / max(status['total'], 1):.0f}% of {status['total']} {status['unit']}s"

    def evaluation(self, at: tuple[str, float] | None = None) -> dict:
        """The final evaluation record (refused for an unfinished run), or with ``at = (counter,
        value)`` the one whose ``counter`` is ``value`` (``("agent_updates", 1000)``: every
        agent's runs compared at one point, finished or not)."""
        if at is None:
            if self.unfinished:
                raise RunFolderError(f"{self.path} is not finished ({self.unfinished}), so its last evaluation is no "
                                     f"final score; re-run it to finish, pass finished runs only, or score every run "
                                     f"at one point with 'report aggregate --at agent_updates=N'")
            return self.results[-1]
        counter, value = at
        points = [r.get(counter) for r in self.results]
        if counter not in self.results[-1]:
            raise RunFolderError(f"{self.path}/results.jsonl has no counter {counter!r}; use --at with one of "
                                 f"{', '.join(k for k in self.results[-1] if k.endswith(('frames', 'updates')))}")
        if value not in points:
            raise RunFolderError(f"{self.path} has no evaluation at {counter}={value:g} (it has "
                                 f"{', '.join(f'{p:g}' for p in points if p is not None)}); choose a point every run has")
        return self.results[points.index(value)]

    def final(self, metric: str, at: tuple[str, float] | None = None) -> float:
        """``metric`` of the final evaluation (or of the one at ``at``, see :meth:`evaluation`)."""
        record = self.evaluation(at)
        if metric not in record:
            have = ", ".join(k for k in record if k.startswith("eval/") and isinstance(record[k], (int, float)))
            raise RunFolderError(f"{self.path}/results.jsonl has no {metric!r} in its "
                                 f"{'last evaluation' if at is None else 'evaluation at %s=%g' % at}; use one of {have}")
        return float(record[metric])


def load_run(path: str | Path, *, need_results: bool = True) -> Run:
    """Read a run folder; a missing or damaged one is refused in one line naming it."""
    path = Path(path)
    results_file, config_file = path / "results.jsonl", path / "config.yaml"
    if need_results and not results_file.is_file():
        raise RunFolderError(f"no results file at {results_file}; pass run folders (each with results.jsonl, "
                             f"written at a run's first evaluation) or a sweep folder holding them")
    results = _read_json_lines(results_file) if results_file.is_file() else []
    if need_results and not results:
        raise RunFolderError(f"{results_file} holds no evaluation yet; run it until its first evaluation")
    config = {}
    if config_file.is_file():
        try:
            config = flatten(yaml.safe_load(config_file.read_text()) or {})
        except yaml.YAMLError as err:
            raise RunFolderError(f"{config_file} is not YAML ({str(err).splitlines()[0]}); the file is damaged, "
                                 f"restore it or remove the run") from None
    return _describe(Run(path=path, config=config, results=results))


def _describe(run: Run) -> Run:
    """Seed, task, method and setup key from the config, else from the folder layout."""
    name = run.path.resolve().name
    folder_seed, suffix_seed = SEED_FOLDER.match(name), SEED_SUFFIX.match(name)
    if folder_seed:
        setup_dir, run.seed = run.path.resolve().parent, int(folder_seed.group(1))
    elif suffix_seed:
        setup_dir, run.seed = run.path.resolve().with_name(suffix_seed.group(1)), int(suffix_seed.group(2))
    else:
        setup_dir = run.path.resolve()
    run.method = setup_dir.name
    if not run.config:
        run.setup = ("folder", str(setup_dir))
        return run
    run.seed = run.config.get("train.seed", run.seed)
    run.task = run.config.get("target.name", run.config.get("env.name"))
    parts, task = setup_dir.parts, tuple(str(run.task).split("/")) if run.task else ()
    for start in range(len(parts) - len(task), -1, -1):  # the last place the task's folders appear
        if task and parts[start:start + len(task)] == task and start + len(task) < len(parts):
            run.method = "/".join(parts[start + len(task):])
            break
    run.setup = ("config", tuple(sorted((k, v) for k, v in run.config.items()
                                        if k not in NOT_SETUP and not k.startswith(NOT_SETUP_PREFIXES))))
    return run


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders among ``paths``: a path with ``results.jsonl`` or ``config.yaml`` is one; any
    other folder is searched (hidden folders such as ``.submitit`` skipped) for folders holding
    ``config.yaml``. A path that is neither is refused."""
    found = []
    for path in map(Path, paths):
        if (path / "results.jsonl").is_file() or (path / "config.yaml").is_file() or not path.is_dir():
            found.append(path)
            continue
        below = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if "config.yaml" in files:
                below.append(Path(root))
                dirs[:] = []  # a run folder's own subfolders (replay/, logs/) hold no run
        if not below:
            raise RunFolderError(f"{path} holds no run folder (no config.yaml below it); pass run folders or the "
                                 f"folder a sweep wrote them to")
        found += below
    return found


def load_runs(paths: Iterable[str | Path], *, finished_only: bool = False) -> list[Run]:
    """:func:`find_runs`, each read with :func:`load_run`; runs that collide are refused (see
    :func:`group_runs`). A run found below a folder that has no evaluation yet (a sweep's job
    just started) is left out with a note on stderr; one passed by name is refused. With
    ``finished_only``, unfinished runs are left out too, named on stderr with their progress."""
    runs, waiting = [], []
    for path in map(Path, paths):
        named = (path / "results.jsonl").is_file() or (path / "config.yaml").is_file() or not path.is_dir()
        for found in find_runs([path]):
            results = found / "results.jsonl"
            if not named and (not results.is_file() or not results.read_text().strip()):
                waiting.append(str(found))
                continue
            runs.append(load_run(found))
    if waiting:
        print(f"note: left out {len(waiting)} run{'s' * (len(waiting) > 1)} without an evaluation yet: "
              f"{', '.join(waiting)}", file=sys.stderr)
    if finished_only:
        progress = [(r, r.unfinished) for r in runs]  # each reads status.json: once per run
        running = [f"{r.path} ({left})" for r, left in progress if left]
        if running and len(running) == len(runs):
            raise RunFolderError(f"no run is finished: {', '.join(running)}; re-run them to finish, or score them at "
                                 f"one point with --at agent_updates=N")
        if running:
            print(f"note: left out {len(running)} unfinished run{'s' * (len(running) > 1)}: {', '.join(running)}",
                  file=sys.stderr)
            runs = [r for r, left in progress if not left]
    group_runs(runs)
    return runs


def group_runs(runs: list[Run]) -> dict[tuple[str, str | None], list[Run]]:
    """Seeds per setup, keyed ``(method, task)`` in first-seen order. Two setups that share method
    and task, or one setup's seed found twice, are refused in one line naming both folders."""
    groups: dict[tuple[str, str | None], list[Run]] = {}
    for run in runs:
        members = groups.setdefault((run.method, run.task), [])
        for other in members:
            if other.setup != run.setup:
                theirs, ours = (dict(r.setup[1]) if r.setup[0] == "config" else {} for r in (other, run))
                diff = next((f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in sorted(set(theirs) | set(ours))
                             if theirs.get(k) != ours.get(k)), "different folders")
                raise RunFolderError(f"{other.path} and {run.path} are both {run.label!r} but differ ({diff}); "
                                     f"pass them separately or give them distinct output_dir folders")
            if other.seed == run.seed:
                raise RunFolderError(f"{other.path} and {run.path} are the same setup and seed {run.seed}; "
                                     f"pass one of them")
        members.append(run)
    return groups


def display_name(label: str, names: dict[str, str] | None) -> str:
    """``names`` maps shell patterns to display names (``{"coworld_paper*": "CoWorld"}``); the
    first pattern that matches ``label`` names it, else it keeps its own."""
    return next((new for pattern, new in (names or {}).items() if fnmatch.fnmatchcase(label, pattern)), label)


def relative_names(runs: list[Run]) -> list[str]:
    """Each run's path relative to the folder all runs share, from its setup folder on for
    ``seed<N>`` folders (``coworld_quick/seed0``)."""
    resolved = [r.path.resolve() for r in runs]
    base = Path(os.path.commonpath([p.parent for p in resolved]))
    while base.parent != base and any(SEED_FOLDER.match(p.relative_to(base).parts[0]) for p in resolved):
        base = base.parent
    return [str(p.relative_to(base)) for p in resolved]
