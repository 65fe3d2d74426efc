"""``python -m coworld_trl.training.report`` on small run folders written by hand: seeds grouped
per setup, IQM and stratified-bootstrap CIs against hand computations, the paper-style table,
each figure with the numbers behind it, sweep status, and bad folders refused in one line."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from coworld_trl.analysis.stats import iqm, mean, stratified_bootstrap
from coworld_trl.training.report import main as report_main

TASKS = ("dmc/walker_downhill", "dmc/walker_uphill")


def write_run(path: Path, records: list[dict], config: dict | None = None, status: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    if status is not None:
        (path / "status.json").write_text(json.dumps(status))
    return path


def recipe_run(root: Path, method: str, task: str, seed: int, returns: list[float], **config) -> Path:
    """A run folder as the recipes lay it out (``runs/<task>/<method>/seed<N>``), one evaluation
    per return, 1000 frames apart."""
    path = root / task / method / f"seed{seed}"
    records = [{"frames": 1000 * (i + 1), "updates": 10 * (i + 1), "eval/return_mean": r, "eval/return_std": 1.0}
               for i, r in enumerate(returns)]
    records[-1].update(config.pop("last", {}))  # extra metrics of the last evaluation
    full = {"target": {"name": task}, "train": {"seed": seed, "device": "cpu", "total_frames": 1000},
            "output_dir": str(path), "method": method.split("/")[0], **config}
    return write_run(path, records, full)


def report(capsys, *argv) -> str:
    report_main([str(a) for a in argv])
    return capsys.readouterr().out


def refused(capsys, *argv) -> str:
    """The one-line error of a refused command (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        report_main([str(a) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ====================================================================== statistics
def test_iqm_and_stratified_bootstrap_cis_match_a_hand_computation():
    """Tasks A = {0, 1} and B = {2, 4} (2 seeds each). IQM of the 4 scores = mean of the middle two
    = 1.5; mean = 1.75. Every stratified resample keeps A's scores below B's, so IQM = (max A +
    min B) / 2, which is 1 with probability 3/16, 1.5 (9/16), 2 (1/16), 2.5 (3/16): its 2.5th and
    97.5th percentiles are 1 and 2.5. The mean's resampled sums run 4..10 with P(4) = P(10) = 1/16,
    so its interval is [4/4, 10/4] too."""
    scores = [[0.0, 1.0], [2.0, 4.0]]
    assert iqm(np.array([0.0, 1.0, 2.0, 4.0])) == 1.5
    assert iqm(np.array([1, 2, 3, 4, 5, 6, 7, 100.0])) == 4.5  # 2 cut from each end of 8
    estimate = stratified_bootstrap(scores, iqm, reps=4000)
    assert estimate.value == 1.5 and estimate.ci == (1.0, 2.5)
    estimate = stratified_bootstrap(scores, mean, reps=4000)
    assert estimate.value == 1.75 and estimate.ci == (1.0, 2.5)
    assert stratified_bootstrap([[3.0, 3.0], [5.0, 5.0]], mean).ci == (4.0, 4.0)  # no spread, no interval width
    assert stratified_bootstrap([[3.0], [5.0, 6.0]], mean).ci is None  # a task with one seed: no interval
    assert stratified_bootstrap(scores, iqm, seed=3) == stratified_bootstrap(scores, iqm, seed=3)


# ========================================================================= tables
def test_table_groups_seeds_by_config_in_recipe_folders_and_by_name_in_s_folders(tmp_path, capsys):
    """Recipe folders ``<task>/<method>/seed<N>`` are grouped by their config.yaml (seeds differing
    also in device still group); folders without config by their ``_s<N>`` suffix. A setup that
    differs from its namesake in config is refused naming the difference."""
    runs = tmp_path / "runs"
    recipe_run(runs, "coworld_quick", TASKS[0], 0, [0.25, 1.0], coupling={"beta": 1.5})
    recipe_run(runs, "coworld_quick", TASKS[0], 1, [0.5, 3.0], coupling={"beta": 1.5})
    config = yaml.safe_load((runs / TASKS[0] / "coworld_quick/seed1/config.yaml").read_text())
    config["train"]["device"] = "cuda"
    (runs / TASKS[0] / "coworld_quick/seed1/config.yaml").write_text(yaml.safe_dump(config))
    out = report(capsys, "table", runs)  # a sweep folder: its run folders are found below it
    assert "| coworld_quick/seed1 | 0.50 / 3.00 | 3.00 +- 1.00 | - |" in out
    assert "- dmc/walker_downhill coworld_quick: n = 2, final return 2.00 +- 1.00 (mean +- std over seeds)" in out

    for name, (ret, bias) in {"cw_s0": (1.0, 0.5), "cw_s1": (3.0, 1.5), "alone_s0": (2.0, 2.0)}.items():
        write_run(tmp_path / "legacy" / name, [{"eval/return_mean": 0.25, "eval/return_std": 0.0, "eval/value_bias": -0.5},
                                               {"eval/return_mean": ret, "eval/return_std": 0.1, "eval/value_bias": bias}])
    out = report(capsys, "table", *sorted((tmp_path / "legacy").iterdir()))
    assert "| cw_s1 | 0.25 / 3.00 | 3.00 +- 0.10 | -0.50 / +1.50 |" in out
    assert "- cw: n = 2, final return 2.00 +- 1.00, final value bias +1.00 +- 0.50" in out
    assert "- alone: n = 1, final return 2.00, final value bias +2.00" in out

    recipe_run(tmp_path / "other", "coworld_quick", TASKS[0], 2, [5.0], coupling={"beta": 2.0})
    err = refused(capsys, "table", runs, tmp_path / "other")
    assert "are both 'dmc/walker_downhill coworld_quick' but differ (coupling.beta: 1.5 vs 2.0)" in err


def table3_runs(root: Path) -> Path:
    """2 methods x 2 tasks x 2 seeds: coworld 10/20 and 30/50 (the second task's from a sweep over
    sources), offline_dv2 12/14 and 5/5."""
    finals = {("coworld_quick", TASKS[0]): (10.0, 20.0), ("coworld_quick/sources=dmc-cheetah_run", TASKS[1]): (30.0, 50.0),
              ("offline_dv2_quick", TASKS[0]): (12.0, 14.0), ("offline_dv2_quick", TASKS[1]): (5.0, 5.0)}
    for (method, task), values in finals.items():
        for seed, value in enumerate(values):
            recipe_run(root, method, task, seed, [1.0, value])
    return root


def test_aggregate_writes_the_paper_table_in_markdown_latex_and_json(tmp_path, capsys):
    """Methods x tasks, mean ± std over seeds (population std), an average column, the best of each
    column in bold; IQM and mean with CIs per method; normalised scores; display names by pattern
    (two sweep folders of one method share a row)."""
    runs = table3_runs(tmp_path / "runs")
    out = report(capsys, "aggregate", runs)
    assert "| coworld_quick/sources=dmc-cheetah_run | - | **40.0 ± 10.0** | - |" in out
    out = report(capsys, "aggregate", runs, "--latex", tmp_path / "t.tex", "--json", tmp_path / "t.json",
                 "--markdown", tmp_path / "t.md", "--name", "coworld_quick*=CoWorld", "--reps", 500)
    assert "| Method | dmc/walker_downhill | dmc/walker_uphill | Avg. |" in out
    assert "| CoWorld | **15.0 ± 5.0** | **40.0 ± 10.0** | **27.5** |" in out
    assert "| offline_dv2_quick | 13.0 ± 1.0 | 5.0 ± 0.0 | 9.0 |" in out
    assert "| CoWorld | 4 | 2 | 25 [" in out  # IQM of 10, 20, 30, 50: mean of 20 and 30
    latex = (tmp_path / "t.tex").read_text()
    assert "\\textbf{15.0 $\\pm$ 5.0}" in latex and "offline\\_dv2\\_quick & 13.0 $\\pm$ 1.0" in latex
    assert latex.startswith("\\begin{tabular}{lrrr}") and "\\bottomrule" in latex
    numbers = json.loads((tmp_path / "t.json").read_text())
    coworld = numbers["methods"]["CoWorld"]
    assert coworld["tasks"][TASKS[0]]["scores"] == [10.0, 20.0] and coworld["tasks"][TASKS[0]]["seeds"] == [0, 1]
    assert coworld["iqm"]["value"] == 25.0 and coworld["mean"]["value"] == 27.5 and coworld["average"] == 27.5
    low, high = coworld["mean"]["ci"]
    assert 10.0 <= low < 27.5 < high <= 50.0
    assert (tmp_path / "t.md").read_text().startswith("eval/return_mean")

    (tmp_path / "scores.json").write_text(json.dumps({TASKS[0]: {"random": 0, "expert": 20},
                                                      TASKS[1]: [10, 60]}))
    out = report(capsys, "aggregate", runs, "--normalize", tmp_path / "scores.json", "--digits", 2,
                 "--name", "coworld_quick*=CoWorld")
    assert "| CoWorld | **0.75 ± 0.25** | **0.60 ± 0.20** | **0.68** |" in out
    (tmp_path / "partial.json").write_text(json.dumps({TASKS[0]: [0, 20]}))
    assert "no random/expert scores for task 'dmc/walker_uphill'" in refused(
        capsys, "aggregate", runs, "--normalize", tmp_path / "partial.json")


def test_unfinished_runs_are_marked_left_out_of_final_scores_or_compared_at_one_point(tmp_path, capsys):
    """A run whose status.json says unfinished has no final score: ``table`` marks it with its
    progress and leaves it out of the summary; ``aggregate`` refuses it unless ``--finished-only``
    leaves it out with a note or ``--at`` scores every run at one evaluation point (here
    agent_updates 20, which both seeds have)."""
    runs = tmp_path / "runs"
    for seed, returns in ((0, [1.0, 4.0, 6.0]), (1, [2.0, 8.0])):
        path = recipe_run(runs, "offline_dv2_quick", TASKS[0], seed, returns)
        records = [{**json.loads(line), "agent_updates": 10 * (i + 1)}
                   for i, line in enumerate((path / "results.jsonl").read_text().splitlines())]
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        done = len(returns) == 3
        (path / "status.json").write_text(json.dumps({"finished": done, "done": 10 * len(returns), "total": 30,
                                                      "unit": "update"}))
    started = write_run(runs / TASKS[0] / "offline_dv2_quick/seed2", [],  # a job that has not evaluated yet
                        {"target": {"name": TASKS[0]}, "train": {"seed": 2}})
    report_main(["table", str(runs)])
    out, err = capsys.readouterr()
    assert f"note: left out 1 run without an evaluation yet: {started}" in err and "seed2" not in out
    assert "| offline_dv2_quick/seed1 (unfinished: 67% of 30 updates) | 2.00 / 8.00 | 8.00 +- 1.00 | - |" in out
    assert "results.jsonl holds no evaluation yet" in refused(capsys, "table", started)  # named: refused
    shutil.rmtree(started)
    assert ("- dmc/walker_downhill offline_dv2_quick: n = 1, final return 6.00 (mean +- std over seeds); "
            "1 unfinished run left out") in out
    err = refused(capsys, "aggregate", runs)
    assert "offline_dv2_quick/seed1 is not finished (67% of 30 updates)" in err and "--at agent_updates=N" in err
    report_main(["aggregate", str(runs), "--finished-only"])
    out, err = capsys.readouterr()
    assert f"note: left out 1 unfinished run: {path} (67% of 30 updates)" in err
    assert "| offline_dv2_quick | **6.0** | **6.0** |" in out  # seed 0 alone
    assert f"no run is finished: {path} (67% of 30 updates); re-run them" in refused(
        capsys, "aggregate", path, "--finished-only")
    out = report(capsys, "aggregate", runs, "--at", "agent_updates=20", "--json", tmp_path / "at.json")
    assert out.startswith("eval/return_mean: evaluation at agent_updates=20, mean ± std over seeds")
    assert "| offline_dv2_quick | **6.0 ± 2.0** | **6.0** |" in out  # seeds 4 and 8
    out = report(capsys, "aggregate", runs / TASKS[0] / "offline_dv2_quick/seed0")
    assert "| offline_dv2_quick | **6.0** | **6.0** |" in out  # one seed: no std over seeds
    assert json.loads((tmp_path / "at.json").read_text())["methods"]["offline_dv2_quick"]["tasks"][TASKS[0]][
        "scores"] == [4.0, 8.0]
    assert "seed1 has no evaluation at agent_updates=30 (it has 10, 20); choose a point every run has" in refused(
        capsys, "aggregate", runs, "--at", "agent_updates=30")
    assert "--at 'agent_updates'" in refused(capsys, "aggregate", runs, "--at", "agent_updates")
    assert "--at 'steps=10': use COUNTER=N" in refused(capsys, "aggregate", runs, "--at", "steps=10")
    assert "has no counter 'target_updates'" in refused(capsys, "aggregate", runs, "--at", "target_updates=10")
    assert "seed1 is not finished (67% of 30 updates)" in refused(capsys, "value", path, "-o", tmp_path / "v.png")
    report(capsys, "curves", runs, "-o", tmp_path / "c.png", "--x", "agent_updates", "--each-seed")
    curve = json.loads((tmp_path / "c.json").read_text())["tasks"][TASKS[0]]["offline_dv2_quick"]
    assert curve["x"] == [10.0, 20.0] and curve["mean"] == [1.5, 6.0] and curve["unfinished_seeds"] == [1]


# ======================================================================== figures
def test_learning_curves_with_bands_and_their_numbers(tmp_path, capsys):
    """Mean over seeds per evaluation point, the band inside the seeds' range; seeds evaluated at
    other points are interpolated onto the points they all cover."""
    runs = tmp_path / "runs"
    recipe_run(runs, "coworld_quick", TASKS[0], 0, [0.0, 10.0, 20.0])
    recipe_run(runs, "coworld_quick", TASKS[0], 1, [2.0, 14.0])
    out = report(capsys, "curves", runs, "-o", tmp_path / "curves.png", "--reps", 300, "--each-seed")
    assert (tmp_path / "curves.png").stat().st_size > 5000 and "curves.json" in out
    numbers = json.loads((tmp_path / "curves.json").read_text())["tasks"][TASKS[0]]["coworld_quick"]
    assert numbers["x"] == [1000.0, 2000.0] and numbers["mean"] == [1.0, 12.0]
    # every seed's own evaluations, beyond the range the mean covers
    assert numbers["per_seed"]["0"] == {"x": [1000.0, 2000.0, 3000.0], "y": [0.0, 10.0, 20.0]}
    assert numbers["per_seed"]["1"] == {"x": [1000.0, 2000.0], "y": [2.0, 14.0]}
    assert numbers["ci_low"][1] >= 10.0 and numbers["ci_high"][1] <= 14.0


def test_curves_of_every_agent_on_their_shared_update_axis_with_reference_lines(tmp_path, capsys):
    """``--x agent_updates`` puts online, offline and CoWorld runs on one axis; ``--hline`` draws a
    dataset's mean and the random return, in every panel or in one task's, and writes them with
    the numbers; ``--name`` renames the methods; a malformed line, an unknown task or two methods
    of one task given one name are refused in one line."""
    runs = tmp_path / "runs"
    for method in ("offline_dv2_quick", "coworld_quick"):
        path = recipe_run(runs, method, TASKS[0], 0, [1.0, 3.0])
        records = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
        for i, record in enumerate(records):
            record["agent_updates"] = 250 * (i + 1)
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = report(capsys, "curves", runs, "-o", tmp_path / "c.png", "--x", "agent_updates", "--reps", 100,
                 "--hline", "dataset mean=2.5", "--hline", f"{TASKS[0]}:random=0.5")
    assert "c.json" in out
    numbers = json.loads((tmp_path / "c.json").read_text())
    assert numbers["hlines"] == [{"task": None, "label": "dataset mean", "value": 2.5},
                                 {"task": TASKS[0], "label": "random", "value": 0.5}]
    assert numbers["x"] == "agent_updates"
    assert numbers["tasks"][TASKS[0]]["coworld_quick"]["x"] == [250.0, 500.0]
    report(capsys, "curves", runs, "-o", tmp_path / "n.png", "--x", "agent_updates", "--name", "coworld*=CoWorld",
           "--name", "offline_dv2*=Offline DV2")
    assert set(json.loads((tmp_path / "n.json").read_text())["tasks"][TASKS[0]]) == {"CoWorld", "Offline DV2"}
    assert "are both named 'same'" in refused(capsys, "curves", runs, "-o", tmp_path / "d.png", "--name", "*=same")
    for bad in ("dataset mean", "=3", "random=abc", "random=nan", f"{TASKS[0]}:=3"):
        assert f"--hline {bad!r}: use [TASK:]LABEL=NUMBER" in refused(capsys, "curves", runs, "-o", tmp_path / "d.png",
                                                                     "--hline", bad)
    assert "--hline for dmc/nope: no run of that task; the runs' tasks are " + TASKS[0] in refused(
        capsys, "curves", runs, "-o", tmp_path / "d.png", "--hline", "dmc/nope:random=1")


def test_report_curve_plots_any_agents_results_against_a_chosen_counter(tmp_path, capsys):
    """``report curve --x`` takes any counter the results records carry (a CoWorld run's target updates)
    and writes the numbers it drew beside the PNG; one the records lack is refused in one line
    listing the ones they have."""
    run = write_run(tmp_path / "cw", [{"frames": 4000, "updates": 200, "target_updates": 100, "source_updates": 100,
                                       "eval/return_mean": 1.0, "eval/return_std": 0.5},
                                      {"frames": 4400, "updates": 400, "target_updates": 200, "source_updates": 200,
                                       "eval/return_mean": 2.0, "eval/return_std": 0.5}])
    report(capsys, "curve", run / "results.jsonl", "-o", tmp_path / "c.png", "--x", "target_updates")
    assert (tmp_path / "c.png").stat().st_size > 1000
    drawn = json.loads((tmp_path / "c.json").read_text())
    assert drawn["x"] == "target_updates" and drawn["lines"] == [
        {"results": str(run / "results.jsonl"), "x": [100, 200], "mean": [1.0, 2.0], "std": [0.5, 0.5]}]
    assert ("no 'behaviour_updates' counter; use --x with one of frames, updates, target_updates, source_updates"
            in refused(capsys, "curve", run / "results.jsonl", "-o", tmp_path / "d.png", "--x", "behaviour_updates"))


def test_value_overestimation_figure_and_numbers(tmp_path, capsys):
    """Fig. 5b: per method the last evaluation's critic estimate and discounted true return, mean
    over seeds; runs without the two terms are refused naming the run."""
    runs = tmp_path / "runs"
    for seed, (estimate, true) in enumerate([(50.0, 20.0), (70.0, 30.0)]):
        recipe_run(runs, "offline_dv2_quick", TASKS[0], seed, [1.0, 2.0],
                   last={"eval/value_estimate": estimate, "eval/value_true": true})
    for seed, (estimate, true) in enumerate([(21.0, 20.0), (29.0, 30.0)]):
        recipe_run(runs, "coworld_quick", TASKS[0], seed, [1.0, 2.0],
                   last={"eval/value_estimate": estimate, "eval/value_true": true})
    out = report(capsys, "value", runs, "-o", tmp_path / "value.png")
    assert "| dmc/walker_downhill | offline_dv2_quick | 60 | 25 | 35 |" in out
    assert "| dmc/walker_downhill | coworld_quick | 25 | 25 | 0 |" in out
    assert (tmp_path / "value.png").stat().st_size > 5000
    rows = {r["method"]: r for r in json.loads((tmp_path / "value.json").read_text())}
    assert rows["offline_dv2_quick"]["estimate_std"] == 10.0 and rows["offline_dv2_quick"]["seeds"] == [0, 1]
    assert (tmp_path / "value.csv").read_text().splitlines()[0].startswith("task,method,seeds,estimate_mean")
    recipe_run(tmp_path / "old", "dreamer_quick", TASKS[1], 0, [1.0])
    assert "has no eval/value_estimate and eval/value_true" in refused(capsys, "value", tmp_path / "old", "-o",
                                                                       tmp_path / "v.png")


def test_transfer_matrix_of_return_ratios(tmp_path, capsys):
    """Fig. 3: CoWorld's mean final return over seeds / the baseline's on the same target, per
    source x target; a target without baseline runs is refused."""
    coworld, baseline = tmp_path / "coworld", tmp_path / "baseline"
    for source in ("dmc/walker_walk", "dmc/cheetah_run"):
        for target, values in zip(TASKS, ([30.0, 50.0], [10.0, 10.0]) if source == "dmc/walker_walk"
                                  else ([20.0, 20.0], [40.0, 60.0])):
            for seed, value in enumerate(values):
                recipe_run(coworld, f"coworld_quick/sources={source.replace('/', '-')}", target, seed, [value],
                           sources=[source])
    for target, value in zip(TASKS, (20.0, 25.0)):
        recipe_run(baseline, "offline_dv2_quick", target, 0, [value])
    out = report(capsys, "transfer", "--coworld", coworld, "--baseline", baseline, "-o", tmp_path / "t.png")
    assert "| dmc/walker_walk | dmc/walker_downhill | 40 | 20 | 2 |" in out
    assert "| dmc/cheetah_run | dmc/walker_uphill | 50 | 25 | 2 |" in out
    assert "| dmc/walker_walk | dmc/walker_uphill | 10 | 25 | 0.4 |" in out
    cells = json.loads((tmp_path / "t.json").read_text())
    assert {(c["source"], c["target"]): c["ratio"] for c in cells}[("dmc/cheetah_run", TASKS[0])] == 1.0
    assert (tmp_path / "t.png").stat().st_size > 5000 and (tmp_path / "t.csv").exists()
    assert "no baseline run on 'dmc/walker_uphill'" in refused(
        capsys, "transfer", "--coworld", coworld, "--baseline", baseline / TASKS[0], "-o", tmp_path / "u.png")


def test_sensitivity_over_a_one_at_a_time_sweep(tmp_path, capsys):
    """Fig. 6: for each parameter, runs whose other parameters hold the sweep's most common value,
    mean +- std over seeds per value; baseline runs give a band."""
    sweep = tmp_path / "sweep"
    settings = [(0.5, 0.9), (1.5, 0.9), (3.0, 0.9), (1.5, 0.1), (1.5, 0.5)]
    for beta, k in settings:
        for seed in (0, 1):
            value = 10 * beta + 100 * k + seed * 2
            recipe_run(sweep, f"coworld_quick/coupling.beta={beta},coupling.k={k}", TASKS[0], seed, [value],
                       coupling={"beta": beta, "k": k, "alpha": 1.0})
    recipe_run(tmp_path / "finetune", "finetune_quick", TASKS[0], 0, [40.0])
    out = report(capsys, "sensitivity", sweep, "-o", tmp_path / "s.png", "--baseline", tmp_path / "finetune")
    numbers = json.loads((tmp_path / "s.json").read_text())
    assert numbers["base"] == {"coupling.beta": 1.5, "coupling.k": 0.9, "coupling.alpha": 1.0}
    assert [(p["value"], p["mean"], p["std"]) for p in numbers["params"]["coupling.beta"]] == [
        (0.5, 96.0, 1.0), (1.5, 106.0, 1.0), (3.0, 121.0, 1.0)]
    assert [p["value"] for p in numbers["params"]["coupling.k"]] == [0.1, 0.5, 0.9]
    assert [p["value"] for p in numbers["params"]["coupling.alpha"]] == [1.0]
    assert numbers["baseline"] == {"mean": 40.0, "std": 0.0, "seeds": 1}
    assert "| coupling.k | 0.1 | 26 | 1 | 2 |" in out and (tmp_path / "s.png").stat().st_size > 5000
    assert "no run's config.yaml has 'coupling.eta'" in refused(capsys, "sensitivity", sweep, "-o", tmp_path / "x.png",
                                                                "--params", "coupling.eta")


def tiny_dataset(path: Path, frames: int = 24) -> Path:
    """A 2-episode offline dataset of random 64 x 64 frames."""
    from coworld_trl.data import import_npz

    rng = np.random.default_rng(0)
    episodes = path.parent / "npz"
    episodes.mkdir()
    for i in range(2):
        n = frames // 2
        np.savez(episodes / f"ep{i}.npz", image=rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (n, 6)).astype(np.float32), reward=rng.random(n).astype(np.float32),
                 discount=np.ones(n, np.float32), is_first=np.eye(1, n, dtype=bool)[0],
                 is_last=np.eye(1, n, n - 1, dtype=bool)[0], is_terminal=np.zeros(n, bool))
    import_npz(episodes, path, env="dmc/walker_downhill")
    return path


def test_latent_alignment_tsne_from_two_coworld_checkpoints(tmp_path, capsys):
    """Fig. 11: the same target observations through the source and target encoders of two
    checkpoints; "after" has the target encoder equal to the source's, so its Eq. 3 KL is 0,
    "before" (independent encoders) is positive. Map, numbers and coordinates are written."""
    from coworld_trl.agents import AgentConfig, ModelConfig
    from coworld_trl.agents.coworld import CouplingConfig, make_coworld_agent
    from coworld_trl.training.checkpoint import save_checkpoint

    dataset = tiny_dataset(tmp_path / "dataset")
    model = dict(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16)
    for name in ("before", "after"):
        agent = make_coworld_agent(ModelConfig(**model), AgentConfig(), CouplingConfig(), action_dim=2,
                                   eta_steps_default=10)
        if name == "after":
            agent.target.world_model.encoder.load_state_dict(agent.sources[0].world_model.encoder.state_dict())
        run = tmp_path / name / "seed0"
        run.mkdir(parents=True)
        save_checkpoint(run / "checkpoint.pt", {"agent": agent.checkpoint_state()})
        (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "dataset": str(dataset),
                                                         "target": {"name": TASKS[0]}, "train": {"seed": 0}}))
    out = report(capsys, "alignment", tmp_path / "before" / "seed0" / "checkpoint.pt", tmp_path / "after" / "seed0",
                 "-o", tmp_path / "tsne.png", "--observations", 20)
    numbers = json.loads((tmp_path / "tsne.json").read_text())
    assert numbers["observations"] == 20 and numbers["dataset"] == str(dataset)
    assert numbers["before"]["alignment_kl"] > 1e-4 and numbers["after"]["alignment_kl"] == pytest.approx(0, abs=1e-6)
    assert len(numbers["after"]["points"]["target"]) == 20 and "before " in out
    assert len((tmp_path / "tsne.csv").read_text().splitlines()) == 1 + 4 * 20
    assert (tmp_path / "tsne.png").stat().st_size > 5000
    write_run(tmp_path / "dreamer", [{"eval/return_mean": 1.0}], {"model": model, "train": {"seed": 0}})
    save_checkpoint(tmp_path / "dreamer" / "checkpoint.pt", {"agent": {"modules": {}}})
    assert "is not a CoWorld checkpoint" in refused(capsys, "alignment", tmp_path / "dreamer", tmp_path / "after/seed0",
                                                    "-o", tmp_path / "x.png")


# ========================================================================= status
def test_status_lists_a_sweep_in_progress(tmp_path, capsys):
    """``report status`` reads every run's status.json: finished, running, stale and not started;
    the last evaluation (results.jsonl) is placed by the evaluated agent's updates, and by frames
    where the run has any (an offline run has none). A running run's time left comes from the pace
    its process logged: 60 updates left at 0.01 updates/s, 30 s of which have passed since."""
    now = time.time()
    base = {"frames": 500, "updates": 40, "done": 40, "total": 100, "unit": "update", "host": "node1", "pid": 1}
    sweep = tmp_path / "runs"
    write_run(sweep / "a" / "seed0", [{"frames": 900, "updates": 100, "agent_updates": 50, "eval/return_mean": 12.5}],
              {"train": {"seed": 0}}, {**base, "phase": "finished", "finished": True, "updated_at": now - 7200,
                                       "done": 100})
    write_run(sweep / "a" / "seed1", [], {"train": {"seed": 1}},
              {**base, "phase": "online 3", "finished": False, "updated_at": now - 30, "last_eval": None,
               "rate": 0.01})
    write_run(sweep / "a" / "seed2", [{"frames": 0, "updates": 20, "agent_updates": 20, "eval/return_mean": 3.0}],
              {"train": {"seed": 2}}, {**base, "phase": "offline 2", "finished": False, "updated_at": now - 3600})
    write_run(sweep / "a" / "seed3", [], {"train": {"seed": 3}})
    out = report(capsys, "status", sweep, "--json", tmp_path / "status.json")
    assert ("| a/seed0 | finished | 100% of 100 updates | 500 | 40 | 12.5 after 50 agent updates, 900 frames "
            "| 2.0 h ago | - |") in out
    assert "| a/seed1 | online 3 | 40% of 100 updates | 500 | 40 | - | 30 s ago | 1.7 h at 36 updates/h |" in out
    assert ("| a/seed2 | offline 2 (stale) | 40% of 100 updates | 500 | 40 | 3.0 after 20 agent updates "
            "| 1.0 h ago | - |") in out
    assert "| a/seed3 | no status |" in out
    assert "4 runs: 1 finished, 1 running, 1 stale, 1 without status" in out
    assert [r["state"] for r in json.loads((tmp_path / "status.json").read_text())] == [
        "finished", "running", "stale", "no status"]


# ===================================================================== bad input
def test_bad_folders_are_refused_in_one_line(tmp_path, capsys):
    assert "no results file at" in refused(capsys, "table", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "holds no run folder (no config.yaml below it)" in refused(capsys, "aggregate", tmp_path / "empty")
    write_run(tmp_path / "none", [])
    assert "results.jsonl holds no evaluation yet" in refused(capsys, "table", tmp_path / "none")
    bad = write_run(tmp_path / "bad", [{"eval/return_mean": 1.0}])
    (bad / "results.jsonl").write_text('{"eval/return_mean": 1.0}\n{"eval/ret\n')
    assert "bad/results.jsonl line 2 is not JSON" in refused(capsys, "table", bad)
    yaml_bad = write_run(tmp_path / "yaml", [{"eval/return_mean": 1.0, "eval/return_std": 0.0}])
    (yaml_bad / "config.yaml").write_text("train: [unclosed\n")
    assert "yaml/config.yaml is not YAML" in refused(capsys, "table", yaml_bad)
    run = recipe_run(tmp_path / "runs", "coworld_quick", TASKS[0], 0, [1.0])
    assert "has no 'eval/success_rate' in its last evaluation; use one of eval/return_mean" in refused(
        capsys, "aggregate", run, "--metric", "eval/success_rate")
    assert "--name 'coworld_quick': use OLD=NEW" in refused(capsys, "aggregate", run, "--name", "coworld_quick")
    recipe_run(tmp_path / "copy", "coworld_quick", TASKS[0], 0, [1.0])
    assert "are the same setup and seed 0" in refused(capsys, "table", run, tmp_path / "copy")


# ===================================================================== evaluator
def test_evaluator_records_the_value_estimate_the_discounted_true_return_and_the_action_spread():
    """Two episodes with rewards [1, 1] and [3]: returns 2 and 3; gamma 0.5: true returns 1.5, 1
    and 3 (mean 11/6); the critic says 3 everywhere: estimate 3, bias 7/6. Per action dimension: the share of steps
    at the bound (|a| >= 0.99), the std of the actions taken and the mean of the actor's scale."""
    from tensordict import TensorDict

    from coworld_trl.training.evaluation import Evaluator

    class Episodes:
        def __init__(self):
            self.rewards = iter([[1.0, 1.0], [3.0]])
            self.actions = iter([[[1.0, 0.2], [0.0, -0.5]], [[-0.995, 0.98]]])

        def rollout(self, steps, policy, break_when_any_done):
            reward = torch.tensor(next(self.rewards)).unsqueeze(-1)
            return TensorDict({"action": torch.tensor(next(self.actions)),
                               "next": TensorDict({"reward": reward}, [len(reward)])}, [len(reward)])

    scales = iter([torch.tensor([[0.1, 0.9], [0.3, 0.9]]), torch.tensor([[0.2, 0.6]])])
    evaluator = Evaluator(Episodes(), episodes=2, state_value=lambda rollout: torch.full(rollout.shape, 3.0),
                          actor_scale=lambda rollout: next(scales), gamma=0.5)
    metrics = evaluator(policy=None, step=0)
    assert metrics["eval/value_true"] == pytest.approx(11 / 6) and metrics["eval/value_estimate"] == 3.0
    assert metrics["eval/value_bias"] == pytest.approx(7 / 6) and metrics["eval/returns"] == [2.0, 3.0]
    assert metrics["eval/return_mean"] == 2.5 and metrics["eval/return_std"] == 0.5
    assert metrics["eval/action_at_bound"] == pytest.approx([2 / 3, 0.0])
    assert metrics["eval/action_std"] == pytest.approx([torch.tensor([1.0, 0.0, -0.995]).std(unbiased=False).item(),
                                                        torch.tensor([0.2, -0.5, 0.98]).std(unbiased=False).item()])
    assert metrics["eval/actor_scale"] == pytest.approx([0.2, 0.8])
