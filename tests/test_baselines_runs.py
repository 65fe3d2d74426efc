"""The baselines' schedules end to end on the experiment layer: Offline DV2 (joint and two-stage),
DV2 Finetune + EWC killed in its finetuning phase and resumed, and every baseline recipe's Hydra
composition. Tiny models on dmc/cartpole (125 agent steps per episode at action repeat 8)."""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coworld_trl.training import FinetuneConfig, OfflineDV2Config, recipe_config, run_finetune, run_offline_dv2
from coworld_trl.training.checkpoint import load_checkpoint
from coworld_trl.training.experiment import Callback

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def tiny(tmp_path, **sections):
    """Tiny sizes and a fast target env; ``sections`` override whole sections."""
    return {**dict(
        model=dict(stoch=4, classes=4, deter=32, hidden=32, cnn_depth=16, mlp_units=32, ensemble=3),
        data=dict(batch_size=2, seq_len=8, buffer_capacity=2_000, whole_episodes=False),  # runs < 1 episode
        train=dict(device="cpu", threads=1, prefill_frames=400, train_every=5),
        eval=dict(every_updates=10**6, episodes=1, video=False),
        logger=dict(checkpoint_every_updates=3, log_every_updates=2),
        target=dict(name="dmc/cartpole_swingup", action_repeat=8, fast_render=True),
        make_dataset_episodes=2, dataset=str(tmp_path / "ds" / "medium-replay"), output_dir=str(tmp_path / "run"),
    ), **sections}


def results(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def last_logged(run: Path, name: str) -> float:
    with open(run / "logs" / "scalars" / "train" / f"{name}.csv") as f:
        return float(list(csv.reader(f))[-1][1])


class Killed(Exception):
    """Stands in for a SIGKILL."""


@pytest.fixture
def envs_made(monkeypatch):
    """Every (env name, seed) a run makes through the factory."""
    from coworld_trl.training import factory

    made, original = [], factory.make_run_env

    def make_run_env(env, seed, **kwargs):
        made.append((kwargs.get("name") or env.name, seed))
        return original(env, seed, **kwargs)

    monkeypatch.setattr(factory, "make_run_env", make_run_env)
    return made


def assert_target_env_only_evaluates(made, target="dmc/cartpole_swingup", seed=0):
    from coworld_trl.training.factory import EVAL_SEED_OFFSET

    assert made and all(s == seed + EVAL_SEED_OFFSET for name, s in made if name == target), made


def test_offline_dv2_trains_on_the_dataset_with_its_penalty_then_says_finished(tmp_path, envs_made):
    config = recipe_config(OfflineDV2Config, "quick", **tiny(tmp_path, schedule=dict(updates=6),
                                                             eval=dict(every_updates=3, episodes=1, video=False)))
    progress = run_offline_dv2(config)
    assert progress.finished and progress.updates == progress.behaviour_updates == 6 and progress.frames == 0
    records = results(tmp_path / "run")
    assert [r["behaviour_updates"] for r in records] == [3, 6]
    assert all("eval/value_bias" in r for r in records)
    assert last_logged(tmp_path / "run", "uncertainty") > 0  # the ensemble disagrees, the penalty is on
    assert last_logged(tmp_path / "run", "reward_penalty") > 0
    again = run_offline_dv2(recipe_config(OfflineDV2Config, "quick", **tiny(
        tmp_path, schedule=dict(updates=6), eval=dict(every_updates=3, episodes=1, video=False))))
    assert again.updates == 6 and len(results(tmp_path / "run")) == 2
    assert_target_env_only_evaluates(envs_made)  # the dataset is the only training data
    assert_evaluate_opens_the_evaluated_agent(tmp_path / "run")
    from coworld_trl.errors import ConfigError
    from coworld_trl.training.evaluate import evaluate_run

    with pytest.raises(ConfigError, match=r"--env dmc/walker_walk acts in 6-d but .*'s agent in 1-d; give an env of "
                                          r"at most 1 action dims"):
        evaluate_run(tmp_path / "run", env="dmc/walker_walk")


def assert_evaluate_opens_the_evaluated_agent(run: Path, env: str = "dmc/cartpole_swingup"):
    """``evaluate`` opens any recipe's run read-only: the agent the run evaluates (CoWorld's target)
    with exactly the checkpoint's weights, evaluated on the run's evaluation env, twice alike."""
    from coworld_trl.training.evaluate import evaluate_run, load_run_agent

    before = sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*"))
    agent, env_name = load_run_agent(run)[0].evaluated()
    saved = load_checkpoint(run / "checkpoint.pt")["agent"]
    saved = saved["target"]["modules"] if "target" in saved else saved["modules"]
    loaded = agent.state_dict()
    assert env_name == env and loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    first, again = evaluate_run(run, episodes=1), evaluate_run(run, episodes=1)
    assert first["env"] == env and first["eval_action"] == "mode" and len(first["eval/returns"]) == 1
    assert first["eval/returns"] == again["eval/returns"] and "eval/value_bias" in first
    assert sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_offline_dv2_two_stage_schedule_freezes_the_world_model_after_its_stage(tmp_path):
    """schedule.world_model_updates=4: four world-model-only updates, then three actor-critic updates on
    the frozen model (its weights at the phase change are its final weights)."""
    frozen = {}

    class WorldModelAtPhaseChange(Callback):
        def on_checkpoint(self, experiment):
            if experiment.progress.phase == "behaviour" and not frozen:
                frozen.update({k: v.clone() for k, v in experiment.agent.world_model.state_dict().items()})

    config = recipe_config(OfflineDV2Config, "quick", **tiny(tmp_path, schedule=dict(updates=3, world_model_updates=4)))
    experiment_agent = {}

    class KeepAgent(Callback):
        def on_eval(self, experiment, metrics):
            experiment_agent["agent"] = experiment.agent

    progress = run_offline_dv2(config, callbacks=[WorldModelAtPhaseChange(), KeepAgent()])
    assert (progress.world_model_updates, progress.behaviour_updates, progress.updates) == (4, 3, 7)
    final = experiment_agent["agent"].world_model.state_dict()
    assert frozen and all(torch.equal(final[k], v) for k, v in frozen.items())


def test_finetune_with_ewc_resumes_in_its_finetuning_phase_and_anchors_to_the_pretrained_weights(tmp_path, caplog,
                                                                                               envs_made):
    """Pretraining on cartpole_balance (800 frames: updates from 400 stored frames on), the Fisher on
    two source batches, then finetuning on the cartpole_swingup dataset; killed after the checkpoint at 1
    finetuning update (the clock counts source and target updates: 11 + 1), the same call resumes there and finishes with the uninterrupted counts. The EWC
    anchors are the weights at the end of pretraining and the finetuning losses carry loss_ewc."""
    caplog.set_level(logging.INFO, logger="coworld_trl")
    pretrained = {}

    class Kill(Callback):
        def on_checkpoint(self, experiment):
            p = experiment.progress
            if p.phase == "finetune" and p.target_updates == 0 and not pretrained:
                pretrained.update({k: v.clone() for k, v in experiment.agent.world_model.state_dict().items()})
            if p.phase == "finetune" and p.target_updates > 0 and not p.finished:
                raise Killed

    sections = tiny(tmp_path, source="dmc/cartpole_balance", ewc=dict(lmbda=10.0, fisher_batches=2),
                    schedule=dict(pretrain_frames=800, finetune_updates=6))
    with pytest.raises(Killed):
        run_finetune(recipe_config(FinetuneConfig, "quick", **sections), callbacks=[Kill()])
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]["target_updates"] == 1

    progress = run_finetune(recipe_config(FinetuneConfig, "quick", **sections))
    assert "resuming" in caplog.text
    assert progress.finished and (progress.source_updates, progress.target_updates, progress.frames) == (11, 6, 800)
    assert [r["target_updates"] for r in results(tmp_path / "run")] == [6]
    agent_state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["agent"]["modules"]
    anchors = {k.split("anchor.", 1)[1]: v for k, v in agent_state.items() if "world_model" in k and ".anchor." in k}
    fishers = [v for k, v in agent_state.items() if "world_model" in k and ".fisher." in k]
    assert anchors.keys() == pretrained.keys()
    assert all(torch.equal(anchors[k], v) for k, v in pretrained.items())
    assert sum(f.sum() for f in fishers) > 0
    assert last_logged(tmp_path / "run", "target_loss_ewc_world_model") > 0
    assert_target_env_only_evaluates(envs_made)
    assert any(name == "dmc/cartpole_balance" for name, _ in envs_made)  # pretraining acts in the source


@pytest.mark.parametrize("recipe", [
    pytest.param(f"{method}_{benchmark}", marks=[pytest.mark.slow] if benchmark != "dmc" else [])
    for method in ("offline_dv2", "finetune") for benchmark in ("dmc", "metaworld", "robodesk")])
def test_baseline_recipes_compose_their_presets(recipe, compose_recipe):
    """Every baseline recipe composes (``--cfg job``) with the paper preset's schedule lengths."""
    config = compose_recipe(recipe, "preset=paper")
    if recipe.startswith("offline_dv2"):
        assert config["model"]["ensemble"] == 7 and config["schedule"]["updates"] == 300_000
        assert config["uncertainty"] == {"kind": "meandis", "lmbda": 10.0}
    else:
        lengths = (600_000, 600_000) if recipe.endswith("dmc") else (160_000, 300_000)
        assert (config["schedule"]["pretrain_frames"], config["schedule"]["finetune_updates"]) == lengths
        assert config["ewc"]["lmbda"] == 0.0


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished tiny online DreamerV2 run on dmc/cartpole_balance (3 updates)."""
    from coworld_trl.training import dreamer_config, run_online_dreamer

    run = tmp_path_factory.mktemp("source") / "run"
    sections = tiny(run.parent)
    run_online_dreamer(dreamer_config(
        "quick", model=sections["model"] | {"ensemble": 0}, data=sections["data"], eval=sections["eval"],
        env=dict(name="dmc/cartpole_balance", action_repeat=8, fast_render=True),
        train=sections["train"] | {"total_frames": 480}, output_dir=str(run)))
    return run


def test_finetune_from_a_source_checkpoint_skips_pretraining_and_anchors_ewc_to_its_weights(tmp_path, source_run):
    """source_checkpoint: the finished DreamerV2 run's weights replace pretraining (nothing collected in
    the source env), its replay gives the Fisher, and the EWC anchors are exactly its weights."""
    sections = tiny(tmp_path, source="dmc/cartpole_balance", source_checkpoint=str(source_run),
                    ewc=dict(lmbda=10.0, fisher_batches=2), schedule=dict(pretrain_frames=800, finetune_updates=2))
    sections["model"]["ensemble"] = 0
    progress = run_finetune(recipe_config(FinetuneConfig, "quick", **sections))
    assert (progress.frames, progress.source_updates, progress.target_updates) == (0, 0, 2)
    source = load_checkpoint(source_run / "checkpoint.pt")["agent"]["modules"]
    finetuned = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["agent"]["modules"]
    prefix = "regularizers.world_model.anchor."
    anchors = {k[len(prefix):]: v for k, v in finetuned.items() if k.startswith(prefix)}
    pretrained = {k[len("world_model_loss.world_model."):]: v for k, v in source.items()
                  if k.startswith("world_model_loss.world_model.")}
    assert anchors and all(torch.equal(anchors[k], pretrained[k]) for k in anchors)
    assert not (tmp_path / "run" / "replay_source").exists()
    assert_evaluate_opens_the_evaluated_agent(tmp_path / "run")


@pytest.mark.parametrize("change, named", [
    (dict(model={"deter": 16}), "has another model size (model.deter=32 there, 16 here)"),
    (dict(target={"name": "dmc/walker_walk"}), "acts in 1-d but this run's agent takes 6-d actions"),
    (dict(source="dmc/cartpole_swingup"), "was trained on dmc/cartpole_balance, but source=dmc/cartpole_swingup"),
    (dict(remove_replay=True), "ewc.lmbda=10.0 needs the source agent's Fisher on its replay"),
])
def test_a_source_checkpoint_that_does_not_fit_is_refused_in_one_line_before_the_run_folder(
        tmp_path, source_run, change, named):
    import shutil

    run = source_run
    if change.pop("remove_replay", False):
        run = tmp_path / "copy"
        shutil.copytree(source_run, run, ignore=shutil.ignore_patterns("replay"))
    sections = tiny(tmp_path, source="dmc/cartpole_balance", source_checkpoint=str(run),
                    ewc=dict(lmbda=10.0, fisher_batches=2), schedule=dict(pretrain_frames=800, finetune_updates=2))
    sections["model"]["ensemble"] = 0
    for key, value in change.items():
        sections[key] = sections[key] | value if isinstance(value, dict) else value
    if "target" in change:
        sections["dataset"] = str(tmp_path / "walker" / "medium-replay")
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        run_finetune(recipe_config(FinetuneConfig, "quick", **sections))
    assert named in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def coworld_from(tmp_path, source_run, **schedule):
    """A tiny CoWorld config whose one source starts from ``source_run``."""
    from coworld_trl.training import CoWorldConfig

    sections = tiny(tmp_path, sources=["dmc/cartpole_balance"], source_checkpoints=[str(source_run)],
                    schedule=dict(source_pretrain_frames=800, rounds=1, offline_updates=2, online_updates=0) | schedule)
    sections["model"]["ensemble"] = 0
    return recipe_config(CoWorldConfig, "quick", **sections)


def test_coworld_from_a_source_checkpoint_starts_from_its_weights_and_replay_without_pretraining(
        tmp_path, source_run, envs_made):
    """source_checkpoints: the source agent is the DreamerV2 run's (weights equal at its first
    collection), its replay is carried into the CoWorld run (same rows, episode ids included),
    and nothing is collected or updated before the rounds; the online phase then collects on top
    of the carried rows."""
    from coworld_trl.training import run_coworld

    source = load_checkpoint(source_run / "checkpoint.pt")
    theirs, at_first_collection = source["agent"]["modules"], []

    class FirstCollection(Callback):
        def on_collect(self, experiment, batch):
            if not at_first_collection:
                at_first_collection.append({k: v.clone() for k, v in experiment.agent.sources[0].state_dict().items()})
                # the carried rows plus this first collection's 5 steps: nothing was collected before
                assert len(experiment.schedule.source_envs[0].replay) == carried + 5

    carried = source["schedule"]["replays"][0]["len"]
    progress = run_coworld(coworld_from(tmp_path, source_run, online_updates=2), callbacks=[FirstCollection()])
    ours = at_first_collection[0]
    assert set(ours) - set(theirs) == {"world_model_loss.eta_step"}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # no pretraining: the 2 source updates and 2 collections (5 steps, action repeat 8) are the online phase's
    assert (progress.source_updates, progress.target_updates, progress.frames) == (2, 2, 2 * 5 * 8)
    assert [name for name, _ in envs_made if name == "dmc/cartpole_balance"] == ["dmc/cartpole_balance"]
    replay = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["schedule"]["replays"][0]
    assert carried > 0 and replay["len"] == carried + 2 * 5
    assert_evaluate_opens_the_evaluated_agent(tmp_path / "run")  # the target agent's


def test_coworld_source_checkpoints_that_do_not_fit_are_refused_in_one_line_before_the_run_folder(
        tmp_path, source_run):
    from coworld_trl.training import run_coworld

    cases = [
        (dict(source_checkpoints=[str(source_run), str(source_run)]),
         "source_checkpoints has 2 runs for 1 sources ['dmc/cartpole_balance']; give one run per source"),
        (dict(sources=["dmc/cartpole_swingup"]),
         "was trained on dmc/cartpole_balance, but sources[0]=dmc/cartpole_swingup; set sources[0]=dmc/cartpole_balance"),
        (dict(source_checkpoints=[str(tmp_path / "nothing")]),
         f"source_checkpoints[0]={tmp_path / 'nothing'} holds no DreamerV2 run"),
    ]
    for change, named in cases:
        config = coworld_from(tmp_path, source_run)
        for key, value in change.items():
            setattr(config, key, value)
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            run_coworld(config)
        assert named in str(info.value) and "\n" not in str(info.value)
        assert not (tmp_path / "run").exists()


TINY_OVERRIDES = [
    "model.stoch=4", "model.classes=4", "model.deter=32", "model.hidden=32", "model.cnn_depth=16",
    "model.mlp_units=32", "model.ensemble=3", "data.batch_size=2", "data.seq_len=8", "data.buffer_capacity=5000",
    "data.whole_episodes=false", "train.threads=1", "train.device=cpu", "target.fast_render=true", "eval.episodes=1", "eval.every_updates=2",
    "make_dataset_episodes=2",
]
RECIPE_RUNS = {
    "offline_dv2_dmc": ["target.action_repeat=8", "schedule.updates=4"],
    "finetune_dmc": ["target.action_repeat=8", "model.ensemble=0", "schedule.pretrain_frames=2400",
                     "train.prefill_frames=2000", "schedule.finetune_updates=4", "ewc.lmbda=1", "ewc.fisher_batches=2"],
    "offline_dv2_metaworld": ["target.action_repeat=5", "schedule.updates=4"],
    "finetune_metaworld": ["target.action_repeat=5", "model.ensemble=0", "schedule.pretrain_frames=700",
                           "train.prefill_frames=500", "schedule.finetune_updates=4"],
    "offline_dv2_robodesk": ["target.action_repeat=5", "schedule.updates=4"],
    "finetune_robodesk": ["target.action_repeat=5", "model.ensemble=0", "schedule.pretrain_frames=700",
                          "train.prefill_frames=500", "schedule.finetune_updates=4"],
}


@pytest.mark.parametrize("recipe", [
    pytest.param(name, marks=[pytest.mark.slow] if name != "offline_dv2_dmc" else [])
    for name in RECIPE_RUNS])
def test_baseline_recipes_run_end_to_end_as_users_run_them(tmp_path, recipe):
    """``python recipes/<recipe>.py`` with tiny sizes (all but one marked slow: the schedules themselves
    run in the suite above, in process): makes its small dataset, trains, evaluates twice
    (return, value bias, success where the env has it), checkpoints; a re-run says it is finished."""
    if "robodesk" in recipe:
        pytest.importorskip("robodesk")
    out = tmp_path / "run"
    command = [sys.executable, str(RECIPES / f"{recipe}.py"), *TINY_OVERRIDES, *RECIPE_RUNS[recipe],
               f"output_dir={out}", f"dataset={tmp_path / 'ds' / 'medium-replay'}"]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = results(out)
    counter = "behaviour_updates" if recipe.startswith("offline_dv2") else "target_updates"
    assert [r[counter] for r in records] == [2, 4]
    assert all("eval/value_bias" in r for r in records)
    assert all(("eval/success_rate" in r) == ("dmc" not in recipe) for r in records)
    assert (out / "checkpoint.pt").exists()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "finished" in again.stderr + again.stdout
