"""Merge what ``gpu_check.sh`` has measured so far into ``OUT/gpu_check.json`` (run after every stage).

Reads the stages' statuses from the command line (``name:status:seconds``), the pytest log and
the JSON each benchmark stage wrote into ``OUT/parts/``; writes one JSON with a ``summary`` of the
numbers issue 15 asks for. Standard library only (it also runs where a stage failed to import the
project).
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

GOAL_S = 0.050  # one CoWorld iteration at the paper preset, 50 x 50 (issue 15)
PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def stage_log(out: Path, name: str) -> str:
    """What stage ``name`` printed (its part of ``gpu_check.log``, or its own log while it runs)."""
    own = out / "parts" / f"{name}.log"
    if own.exists():
        return own.read_text(errors="replace")
    log = out / "gpu_check.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    start = text.find(f"== {name} ")
    end = text.find("\n== ", start + 1)
    return text[start:end if end >= 0 else None] if start >= 0 else ""


def pytest_results(text: str) -> dict[str, Any]:
    """Outcome of every test in a ``pytest -v`` log (what ran before a timeout, too)."""
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        match = PYTEST_LINE.match(line)
        if match:
            outcomes[match.group(1)] = match.group(2).lower()
    counts = {kind: sum(v == kind for v in outcomes.values()) for kind in ("passed", "failed", "skipped", "error")}
    errors = [line for line in text.splitlines() if line.startswith(("E   ", "FAILED ", "ERROR "))][:40]
    return {**counts, "tests": outcomes, "error_lines": errors}


def read_part(out: Path, name: str) -> dict[str, Any] | None:
    path = out / "parts" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"goal_coworld_iteration_s": GOAL_S}
    coworld = (result.get("coworld_iteration") or {}).get("runs", {})
    for run in coworld.values():
        times = {name: v["total_s"] for name, v in run["variants"].items() if "total_s" in v}
        summary["coworld_iteration_s"] = times
        summary["coworld_iteration_peak_memory_bytes"] = {
            name: v["peak_memory_bytes"] for name, v in run["variants"].items() if "peak_memory_bytes" in v}
        summary["coworld_speedup_over_eager"] = {
            name: v["speedup_over_eager"] for name, v in run["variants"].items() if "speedup_over_eager" in v}
        if times:
            best = min(times, key=times.get)
            summary.update(coworld_best_variant=best, coworld_best_iteration_s=times[best],
                           goal_met=times[best] <= GOAL_S,
                           paper_schedule_hours_at_best=times[best] * 460_000 / 3600)
    updates = (result.get("updates") or {}).get("runs", {})
    summary["updates_total_s"] = {key: {name: v["total_s"] for name, v in run["variants"].items() if "total_s" in v}
                                  for key, run in updates.items()}
    online = result.get("online") or {}
    for key in ("training_frames_per_s", "training_updates_per_s", "frames_per_s", "updates_per_s",
                "peak_memory_bytes"):
        if key in online:
            summary[f"online_{key}"] = online[key]
    return summary


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", default="0")
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("stages", nargs="*", help="name:status:seconds of every stage run so far")
    args = p.parse_args(argv)
    out = Path(args.out)
    stages = {}
    for entry in args.stages:
        name, status, seconds = entry.rsplit(":", 2)
        stages[name] = {"status": status, "seconds": int(seconds)}
    result: dict[str, Any] = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "smoke": args.smoke == "1", "budget_s": args.budget,
        "machine": {"host": platform.node(), "gpu": gpu_name()}, "stages": stages,
    }
    if "imports" in stages:
        lines = [line for line in stage_log(out, "imports").splitlines() if "import" in line and "==" not in line]
        result["imports"] = lines[-1] if lines else None
    if "pytest_gpu" in stages:
        result["pytest_gpu"] = pytest_results(stage_log(out, "pytest_gpu"))
    for key, part in (("coworld_iteration", "coworld_iteration"), ("updates", "updates"),
                      ("online", "online_walker_walk")):
        result[key] = read_part(out, part)
    result["summary"] = summarize(result)
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "gpu_check.json")
    return result


if __name__ == "__main__":
    main()
