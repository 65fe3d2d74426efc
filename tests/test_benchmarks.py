"""The benchmark scripts run end to end at toy sizes (they measure nothing here; their
numbers come from full runs recorded in docs/results.md)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_dataset_reports_conversion_and_sampling(tmp_path):
    result = load("bench_dataset").main(["--frames", "1000", "--batches", "2", "--batch", "2", "--seq-len", "10",
                                         "--workdir", str(tmp_path / "work")])
    assert result["convert"]["frames"] == 1000 and result["sample"]["batches"] == 2
    assert result["convert"]["peak_anon_mib"] > 0 and result["sample"]["frames_per_s"] > 0
    assert not (tmp_path / "work").exists(), "the synthetic files were not cleaned up"


def test_bench_envs_reports_each_mode(tmp_path):
    results = load("bench_envs").main(["dmc/cartpole_swingup", "--steps", "3", "--workers", "1"])
    assert [(r["render"], r["mode"]) for r in results] == [("faithful", "single"), ("fast", "single")]
    assert all(r["frames_per_s"] == 2 * r["steps_per_s"] > 0 for r in results)
