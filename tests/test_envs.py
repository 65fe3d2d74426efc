"""Tests for coworld_trl.envs: the registry, the DMC pixel pipeline, action repeat and input errors.

Each env step renders a 64x64 frame (~25 ms on CPU), so every test takes a handful of steps.
The other families and the DMC variants are tested in test_env_families.py.
"""
from __future__ import annotations

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from coworld_trl.envs import list_envs, make_env

TASK = "dmc/walker_walk"


def actions(env, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """A fixed, seeded stream of in-bounds actions."""
    gen = torch.Generator().manual_seed(seed)
    shape = env.action_spec.shape
    return [torch.rand(shape, generator=gen) * 2 - 1 for _ in range(steps)]


@pytest.fixture(scope="module")
def walker():
    env = make_env(TASK, seed=0)
    yield env
    env.close()


def test_dmc_env_passes_torchrl_spec_check(walker):
    """The env's specs match what reset/step produce (TorchRL's own contract check)."""
    check_env_specs(walker, seed=0)


def test_dmc_pixels_are_uint8_chw_and_is_init_marks_reset(walker):
    """pixels uint8 [3, 64, 64] in spec and data; is_init True at reset and False after a step; actions in [-1, 1]."""
    assert walker.observation_spec["pixels"].shape == (3, 64, 64)
    assert walker.observation_spec["pixels"].dtype == torch.uint8
    assert torch.all(walker.action_spec.space.low == -1) and torch.all(walker.action_spec.space.high == 1)
    td = walker.reset()
    assert td["pixels"].dtype == torch.uint8 and td["pixels"].shape == (3, 64, 64)
    assert td["pixels"].float().std() > 0, "blank render"
    assert td["is_init"].shape == (1,) and td["is_init"].item() is True
    td["action"] = actions(walker, 1)[0]
    out = walker.step(td)
    assert out["next", "is_init"].item() is False
    assert out["next", "reward"].shape == (1,) and out["next", "reward"].dtype == torch.float32


def test_dmc_same_seed_same_actions_is_deterministic():
    """Two envs with the same seed and the same action stream give identical frames and rewards."""
    envs = [make_env(TASK, seed=3), make_env(TASK, seed=3)]
    other = make_env(TASK, seed=4)
    tds = [e.reset() for e in envs]
    assert torch.equal(tds[0]["pixels"], tds[1]["pixels"])
    assert not torch.equal(tds[0]["pixels"], other.reset()["pixels"]), "the seed does not change the initial state"
    for action in actions(envs[0], 4):
        nexts = []
        for env, td in zip(envs, tds):
            td["action"] = action.clone()
            nexts.append(env.step(td)["next"])
        assert torch.equal(nexts[0]["pixels"], nexts[1]["pixels"])
        assert torch.equal(nexts[0]["reward"], nexts[1]["reward"])
        tds = [n.clone() for n in nexts]
    for env in (*envs, other):
        env.close()


def test_dmc_action_repeat_sums_rewards_and_renders_last_frame():
    """One step with action_repeat=2 equals two steps with action_repeat=1 under the same action:
    same frame after the repeat and the two rewards summed."""
    once, twice = make_env(TASK, seed=1, action_repeat=1), make_env(TASK, seed=1, action_repeat=2)
    td1, td2 = once.reset(), twice.reset()
    assert torch.equal(td1["pixels"], td2["pixels"])
    for action in actions(once, 3, seed=1):
        td2["action"] = action.clone()
        out2 = twice.step(td2)["next"]
        reward1 = 0.0
        for _ in range(2):
            td1["action"] = action.clone()
            out1 = once.step(td1)["next"]
            reward1 += out1["reward"].item()
            td1 = out1.clone()
        assert torch.equal(out1["pixels"], out2["pixels"])
        assert out2["reward"].item() == pytest.approx(reward1, rel=1e-6, abs=1e-7)
        td2 = out2.clone()
    assert reward1 > 0, "walker_walk pays a positive reward; the sum would be vacuous otherwise"
    once.close(), twice.close()


def test_dmc_frames_are_copied_not_aliased(walker):
    """dm_control reuses its render buffer: a frame kept from step t must survive step t+1 unchanged."""
    td = walker.reset()
    stream = actions(walker, 3, seed=2)
    for action in stream:
        frame = td["pixels"]
        snapshot = frame.clone()
        td["action"] = action
        nxt = walker.step(td)["next"]
        assert torch.equal(frame, snapshot), "frame t was overwritten by the render of t+1"
        assert not torch.equal(nxt["pixels"], frame), "consecutive frames are identical"
        assert nxt["pixels"].data_ptr() != frame.data_ptr()
        td = nxt


def test_make_env_unknown_name_lists_valid_names():
    """An unknown task lists the family's valid names; an unknown family names the families."""
    with pytest.raises(ValueError, match="valid dmc names") as info:
        make_env("dmc/walker_fly")
    assert "dmc/walker_fly" in str(info.value) and TASK in str(info.value) and "dmc/walker_downhill" in str(info.value)
    with pytest.raises(ValueError, match="dmc, metaworld, robodesk") as info:
        make_env("atari/pong")
    assert "python -m coworld_trl.envs list" in str(info.value)
    assert TASK in list_envs()


@pytest.mark.parametrize(
    "kwargs, named",
    [(dict(image_size=8), "image_size=8"), (dict(image_size=1024), "image_size=1024"),
     (dict(action_repeat=0), "action_repeat=0"), (dict(action_repeat=-1), "action_repeat=-1")],
)
def test_make_env_out_of_range_arguments_name_the_value(kwargs, named):
    """Out-of-range image_size / action_repeat raise ValueError naming the bad value."""
    with pytest.raises(ValueError, match=named.replace("-", r"\-")):
        make_env(TASK, **kwargs)


@pytest.mark.parametrize("family", ["dmc", "metaworld", "robodesk"])
def test_a_family_that_cannot_be_imported_is_named_with_the_cause_and_the_install_command(family, monkeypatch):
    """A missing dependency of a family (e.g. lxml under dm_control) names the import error and how to install."""
    from coworld_trl.envs import registry
    from coworld_trl.errors import MissingDependencyError

    def broken(name):
        raise ImportError("No module named 'lxml'")

    monkeypatch.setattr(registry, "_family_names", broken)
    with pytest.raises(MissingDependencyError, match=r"could not be imported \(No module named 'lxml'\); pip install"):
        registry._parse(f"{family}/task")
