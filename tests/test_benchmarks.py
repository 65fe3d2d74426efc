"""The benchmark scripts run end to end at toy sizes (they measure nothing here; their
numbers come from full runs recorded in docs/results.md)."""
from __future__ import annotations

import importlib.util
import json
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


def test_bench_update_times_the_agents_own_updates(tmp_path):
    bench = load("bench_update")
    tiny = ["--preset", "quick", "--batch", "2", "--seq-len", "4", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    result = bench.main([*tiny, "--json", str(tmp_path / "dreamer.json")])
    assert json.loads((tmp_path / "dreamer.json").read_text())["updates"] == ["world_model", "behaviour"]
    for name in ("world_model", "behaviour"):
        assert result[f"{name}_update_s"] > 0 and result[f"{name}_flops"] > 0 and result[f"{name}_gflops_per_s"] > 0
        assert result[f"ops_{name}"] and len(result[f"{name}_update_times"]) == 1
    assert result["peak_memory_bytes"] > 0 and result["total_s"] > 0
    # The sections come from hooks on the agent's optimisers: every phase of every optimiser is there.
    assert set(result["breakdown_s"]["world_model"]) >= {
        f"world model: {phase}" for phase in ("forward", "backward", "grad clip", "adam step")}
    assert {"actor: backward", "value: adam step"} <= set(result["breakdown_s"]["behaviour"])
    assert {"encoder", "decoder", "rssm observe loop"} <= set(result["parts_s"]["world_model"])
    assert all(s >= 0 for sections in result["breakdown_s"].values() for s in sections.values())

    coworld = bench.main([*tiny, "--coworld"])
    assert coworld["updates"] == ["target", "source"] and coworld["target_flops"] > 0
    assert "state alignment (Eq. 3)" in coworld["parts_s"]["target"]
    assert "source world-model loss with relabelling (Eq. 2, 4-5)" in coworld["parts_s"]["source"]
    assert "source world model: backward" in coworld["breakdown_s"]["source"]
