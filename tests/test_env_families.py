"""Tests for the DMC variants, Meta-World, RoboDesk, action padding, batched envs and the CLI.

Renders are the cost here (Meta-World ~75 ms, RoboDesk ~300 ms per faithful 64x64 frame on
CPU), so most envs use ``fast_render`` (same physics and rewards) and take a few steps;
one task per family always runs, the others are marked slow.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from coworld_trl.envs import PadAction, env_info, list_envs, make_batched_env, make_env
from coworld_trl.envs.__main__ import main as envs_cli
from coworld_trl.envs.dmc import VARIANTS, load_variant, variant_xml

PAPER_DMC_VARIANTS = sorted(f"dmc/{v}" for v in VARIANTS)
PAPER_METAWORLD = ["door-close", "button-press", "window-close", "handle-press", "drawer-close", "button-press-topdown"]
PAPER_ROBODESK = ["push_green", "open_slide", "drawer_open", "upright_block_off_table"]


def fixed_actions(dim: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(dim, generator=gen) * 2 - 1 for _ in range(steps)]


def step_all(env, actions):
    """Reset, then step through ``actions``; the list of ``next`` TensorDicts."""
    td, out = env.reset(), []
    for action in actions:
        td["action"] = action.clone()
        nxt = env.step(td)["next"]
        out.append(nxt)
        td = nxt.clone()
    return out


def assert_pixel_env(env, action_dim: int):
    """The common contract: uint8 [3, 64, 64] pixels, [-1, 1] actions, is_init, TorchRL's spec check."""
    assert env.action_spec.shape == (action_dim,)
    assert torch.all(env.action_spec.space.low == -1) and torch.all(env.action_spec.space.high == 1)
    check_env_specs(env, seed=0)
    td = env.reset()
    assert td["pixels"].dtype == torch.uint8 and td["pixels"].shape == (3, 64, 64)
    assert td["pixels"].float().std() > 5, "blank render"
    assert td["is_init"].item() is True


# ------------------------------------------------------------------ DMC variants
def _episode_return(env, seed: int) -> float:
    rng, total = np.random.default_rng(seed), 0.0
    step = env.reset()
    while not step.last():
        step = env.step(rng.uniform(-1, 1, env.action_spec().shape))
        total += step.reward
    return total


@pytest.mark.parametrize("domain, base", [("walker", "walk"), ("cheetah", "run")])
def test_slope_physics_downhill_beats_flat_beats_uphill(domain, base):
    """One fixed random action stream, one episode each (physics only, no rendering):
    gravity tilted forwards helps, backwards hurts."""
    from dm_control import suite

    flat = _episode_return(suite.load(domain, base, task_kwargs={"random": 0}), seed=0)
    downhill = _episode_return(load_variant(f"{domain}_downhill", seed=0), seed=0)
    uphill = _episode_return(load_variant(f"{domain}_uphill", seed=0), seed=0)
    assert downhill > flat > uphill, (downhill, flat, uphill)


@pytest.mark.parametrize("variant, geom", [("walker_nofoot", "right_foot"), ("cheetah_nopaw", "ffoot")])
def test_nofoot_shrinks_the_foot_geom_and_keeps_the_action_6d(variant, geom):
    """The foot geom is 0.001 x 0.001 in the compiled model; every motor is still there."""
    from dm_control import suite

    domain = VARIANTS[variant].domain
    shrunk = load_variant(variant, seed=0).physics.named.model.geom_size[geom][:2]
    original = suite.load(domain, VARIANTS[variant].base_task).physics.named.model.geom_size[geom][:2]
    np.testing.assert_allclose(shrunk, [0.001, 0.001])
    assert original.min() > 0.04
    assert env_info(f"dmc/{variant}").action_dim == 6


@pytest.mark.parametrize("variant", ["walker_uphill", "walker_downhill", "cheetah_uphill", "cheetah_downhill"])
def test_slopes_tilt_gravity_roll_the_camera_and_lengthen_the_floor(variant):
    """Gravity is tilted 15 degrees along x (sign: uphill pulls backwards), the side camera rolls
    by the same angle, and the floor is 1000 long; the compiled model agrees with the XML."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(variant_xml(VARIANTS[variant])[0])
    roll = float(root.find(".//camera[@name='side']").get("euler").split()[2])
    gravity = load_variant(variant, seed=0).physics.model.opt.gravity
    sign = -1 if variant.endswith("uphill") else 1
    np.testing.assert_allclose(gravity, [sign * 2.54, 0, -9.47])
    assert np.degrees(np.arctan2(abs(gravity[0]), -gravity[2])) == pytest.approx(15, abs=0.05)
    assert roll == 15 * sign
    floor = "floor" if variant.startswith("walker") else "ground"
    assert root.find(f".//geom[@name='{floor}']").get("size").split()[0] == "1000"


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "dmc/walker_downhill" else pytest.mark.slow)
                                  for n in PAPER_DMC_VARIANTS])
def test_dmc_variants_reset_step_and_render(name):
    env = make_env(name, seed=0, fast_render=True)
    assert_pixel_env(env, 6)
    env.close()


def test_fast_render_changes_pixels_not_physics():
    """Shadows/reflections off: same rewards and states for the same actions, different pixels."""
    faithful, fast = make_env("dmc/walker_walk", seed=0, state=True), make_env("dmc/walker_walk", seed=0, fast_render=True,
                                                                               state=True)
    stream = fixed_actions(6, 3)
    a, b = step_all(faithful, stream), step_all(fast, stream)
    for x, y in zip(a, b):
        assert torch.equal(x["reward"], y["reward"]) and torch.equal(x["observation"], y["observation"])
    assert not torch.equal(a[-1]["pixels"], b[-1]["pixels"])


# ------------------------------------------------------------------ Meta-World
@pytest.fixture(scope="module")
def button_press():
    env = make_env("metaworld/button-press", seed=0, fast_render=True, state=True)
    yield env
    env.close()


def test_metaworld_contract_and_success(button_press):
    """4-d actions, a boolean ``success``, the 39-d state on request; the registry says 500-step
    episodes (a rollout shows it in the slow suite: test_metaworld_episodes_end_after_500_steps)."""
    assert_pixel_env(button_press, 4)
    assert button_press.observation_spec["success"].dtype == torch.bool
    assert button_press.observation_spec["observation"].shape == (39,)
    info = env_info("metaworld/button-press")
    assert (info.action_dim, info.episode_frames, info.action_repeat, info.success) == (4, 500, 1, True)


def test_metaworld_frames_are_flipped_upright(button_press):
    """MuJoCo 3 renders the corner camera upside down; the env returns the flipped frame."""
    td = button_press.reset()
    raw = button_press.base_env._env.env.render()  # the gymnasium env under the PixelRepeat wrapper
    assert np.array_equal(td["pixels"].permute(1, 2, 0).numpy(), raw[::-1])


def test_metaworld_same_seed_same_actions_is_deterministic():
    envs = [make_env("metaworld/drawer-close", seed=5, fast_render=True) for _ in range(2)]
    runs = [step_all(env, fixed_actions(4, 3)) for env in envs]
    for x, y in zip(*runs):
        assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["reward"], y["reward"])
    for env in envs:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", PAPER_METAWORLD)
def test_metaworld_paper_tasks_reset_step_and_render(task):
    env = make_env(f"metaworld/{task}", seed=0, fast_render=True)
    assert_pixel_env(env, 4)
    env.close()


@pytest.mark.slow
def test_metaworld_episodes_end_after_500_steps():
    env = make_env("metaworld/button-press", seed=0, fast_render=True)
    rollout = env.rollout(1000, break_when_any_done=True)  # random actions
    assert rollout.shape == (500,) and rollout["next", "done"][-1].item() and not rollout["next", "done"][:-1].any()
    env.close()


def test_padded_actions_are_accepted_and_the_padding_is_ignored():
    """Meta-World padded to RoboDesk's 5-d: the spec is 5-d and the 5th entry changes nothing."""
    envs = [make_env("metaworld/button-press", seed=1, fast_render=True, pad_action_dim=5) for _ in range(2)]
    assert envs[0].action_spec.shape == (5,)
    stream = fixed_actions(5, 3)
    a = step_all(envs[0], stream)
    b = step_all(envs[1], [torch.cat([x[:4], -x[4:]]) for x in stream])
    for x, y in zip(a, b):
        assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["reward"], y["reward"])
    td = envs[0].reset()
    td["action"] = torch.zeros(4)
    with pytest.raises(ValueError, match="4 dimensions; this env takes 5"):
        envs[0].step(td)
    with pytest.raises(ValueError, match="pad_action_dim=3 is smaller"):
        make_env("metaworld/button-press", seed=0, pad_action_dim=3).action_spec
    for env in envs:
        env.close()


def test_pad_action_transform_alone():
    """PadAction is a plain TorchRL transform: usable on any env, e.g. a DMC task."""
    env = make_env("dmc/cartpole_swingup", seed=0, fast_render=True)
    env.append_transform(PadAction(3))
    assert env.action_spec.shape == (3,)
    assert env.rollout(2)["action"].shape == (2, 3)
    env.close()


# ------------------------------------------------------------------ RoboDesk
@pytest.fixture(scope="module")
def robodesk_env():
    pytest.importorskip("robodesk")
    env = make_env("robodesk/push_green", seed=0, fast_render=True, state=True)
    yield env
    env.close()


def test_robodesk_contract(robodesk_env):
    assert_pixel_env(robodesk_env, 5)
    assert robodesk_env.observation_spec["success"].dtype == torch.bool
    assert robodesk_env.rollout(2)["next", "reward"].shape == (2, 1)


def test_robodesk_seeds_are_reproducible_and_leave_numpy_alone(robodesk_env):
    """Same seed, same initial layout; RoboDesk's use of np.random does not move the global state."""
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    robodesk_env.set_seed(7)
    first = robodesk_env.reset()["observation"]
    robodesk_env.set_seed(7)
    again = robodesk_env.reset()["observation"]
    assert torch.equal(first, again)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.slow
@pytest.mark.parametrize("task", PAPER_ROBODESK)
def test_robodesk_paper_tasks_reset_step_and_render(task):
    pytest.importorskip("robodesk")
    env = make_env(f"robodesk/{task}", seed=0, fast_render=True)
    assert_pixel_env(env, 5)
    env.close()


def test_missing_robodesk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "robodesk", None)
    monkeypatch.setitem(sys.modules, "robodesk.robodesk", None)
    with pytest.raises(ImportError, match=r"pip install 'coworld_trl\[robodesk\]'"):
        make_env("robodesk/push_green")


# ------------------------------------------------------------------ batched envs, listing
def test_serial_batched_env_seeds_each_copy_and_leaves_the_threads_alone():
    """Closing it leaves torch's threads at 1 (TorchRL's own close adds one per copy: this
    suite's next tests then ran 5-13x slower beside a training run)."""
    assert torch.get_num_threads() == 1
    env = make_batched_env("dmc/walker_walk", 2, parallel=False, seed=0, fast_render=True)
    td = env.reset()
    assert td["pixels"].shape == (2, 3, 64, 64)
    assert not torch.equal(td["pixels"][0], td["pixels"][1]), "both copies got the same seed"
    assert env.rollout(3).shape == (2, 3)
    env.close()
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_parallel_batched_env_matches_serial():
    serial = make_batched_env("dmc/walker_walk", 2, parallel=False, seed=0, fast_render=True)
    parallel = make_batched_env("dmc/walker_walk", 2, parallel=True, seed=0, fast_render=True)
    a, b = serial.reset(), parallel.reset()
    assert torch.equal(a["pixels"], b["pixels"])
    actions = torch.rand(5, 2, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for action in actions:  # the same actions: the same frames and rewards in both
        a, b = (env.step(td.set("action", action))["next"] for env, td in ((serial, a), (parallel, b)))
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["reward"], b["reward"])
    serial.close(), parallel.close()
    assert torch.get_num_threads() == 1


def test_list_cli_prints_every_paper_task_with_its_action_dim(capsys):
    envs_cli(["list", "--paper"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if "/" in line.split(" ")[0]}
    expected = {**{n: "6" for n in [*PAPER_DMC_VARIANTS, "dmc/walker_walk", "dmc/cheetah_run"]},
                **{f"metaworld/{t}": "4" for t in PAPER_METAWORLD}}
    if "robodesk/push_green" in list_envs():
        expected |= {f"robodesk/{t}": "5" for t in PAPER_ROBODESK}
    assert {name: row[2] for name, row in lines.items()} == expected  # row: name, "*", action dim, ...


def test_renderers_of_different_libraries_do_not_trample_each_other():
    """Meta-World (gymnasium's EGL contexts) and DMC / RoboDesk (dm_control's) in one process:
    between two renders of an env, other envs of both libraries are created, rendered,
    closed and garbage-collected (freeing a context releases the thread's current one).
    Every env still renders its own frames: the same as a twin env that rendered alone."""
    import gc

    names = ["metaworld/button-press", "dmc/walker_walk"]
    try:
        import robodesk  # noqa: F401
        names.append("robodesk/push_green")
    except ImportError:
        pass

    def two_resets(name, trample=None):
        env = make_env(name, seed=1, fast_render=True)
        frames = [env.reset()["pixels"].clone()]
        if trample is not None:
            trample()
        frames.append(env.reset()["pixels"].clone())
        env.close()
        return frames

    def trample():
        for other in names:
            env = make_env(other, seed=5, fast_render=True)
            env.reset()
            del env  # not closed: its context is freed by the garbage collector
        gc.collect()

    for name in names:
        alone = two_resets(name)
        interleaved = two_resets(name, trample)
        assert all(frame.float().std() > 5 for frame in interleaved), f"{name}: blank frame"
        assert torch.equal(alone[1], interleaved[1]), f"{name}: another renderer's context was used"
