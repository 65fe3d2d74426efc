"""Shared fixtures for the coworld_trl unit tests: tiny models and synthetic TED batches.

Everything here is sized to run in milliseconds on a shared 2-core CPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from coworld_trl.modules import Actor, ScalarHead, make_world_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# A shared 2-core machine: do not let intra-op threading oversubscribe it.
torch.set_num_threads(1)

TINY_WM = dict(latent="discrete", stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16,
               mlp_layers=2, reward_layers=1)


def pytest_configure(config):
    # ValueLoss owns target params that tests update by hand (or not at all).
    config.addinivalue_line("filterwarnings", "ignore:No target network updater:UserWarning")


@pytest.fixture
def compose_recipe():
    """``compose_recipe("coworld_metaworld", "preset=paper")``: a recipe's config as
    ``python recipes/coworld_metaworld.py preset=paper --cfg job`` prints it, composed by Hydra
    in this process (a fresh interpreter spends seconds importing torch and TorchRL)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from coworld_trl.training.config import register_hydra_schemas
    from coworld_trl.training.recipe import register_resolvers

    register_hydra_schemas()
    register_resolvers()

    def composed(recipe: str, *overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(RECIPES / "config"), version_base=None):
            return OmegaConf.to_container(compose(recipe, overrides=list(overrides)))

    return composed


@pytest.fixture(autouse=True)
def _one_thread_each_test(request):
    """A test that leaves torch's threads changed fails (and the next starts at 1 again): beside
    a training run, the suite's later tests ran 5-13x slower after one closed a TorchRL SerialEnv."""
    yield
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
        pytest.fail(f"{request.node.nodeid} left torch at {threads} threads; restore 1 (conftest.py)")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (tests also seed explicitly where it matters)."""
    torch.manual_seed(0)
    yield


def ted_batch(
    batch: int,
    steps: int,
    *,
    action_dim: int = 2,
    obs_shape: tuple[int, ...] = (3, 64, 64),
    obs_key: str = "pixels",
    is_init: torch.Tensor | None = None,
) -> TensorDict:
    """A random ``[B, T]`` batch in TorchRL's TED layout (uint8 pixels or float vectors)."""
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (batch, steps, *obs_shape), dtype=torch.uint8)
    else:
        obs = torch.randn(batch, steps, *obs_shape)
    if is_init is None:
        is_init = torch.zeros(batch, steps, 1, dtype=torch.bool)
        is_init[:, 0] = True
    return TensorDict(
        {
            obs_key: obs,
            "action": torch.rand(batch, steps, action_dim) * 2 - 1,
            "is_init": is_init,
            "next": TensorDict(
                reward=torch.randn(batch, steps, 1),
                terminated=torch.zeros(batch, steps, 1, dtype=torch.bool),
                batch_size=[batch, steps],
            ),
        },
        batch_size=[batch, steps],
    )


@pytest.fixture
def make_batch():
    return ted_batch


@pytest.fixture
def tiny_world_model():
    """Factory for a tiny DreamerV2 world model; keyword arguments override :data:`TINY_WM`."""

    def factory(action_dim: int = 2, **overrides):
        kw = {**TINY_WM, **overrides}
        return make_world_model(action_dim=action_dim, **kw)

    return factory


@pytest.fixture
def tiny_agent(tiny_world_model):
    """``(world_model, actor, critic)`` with tiny sizes (discrete latents, conv encoder)."""

    def factory(action_dim: int = 2, actor_dist: str = "trunc_normal", **overrides):
        wm = tiny_world_model(action_dim, **overrides)
        actor = Actor(wm.feature_dim, action_dim, layers=1, units=16, dist=actor_dist)
        critic = ScalarHead(wm.feature_dim, layers=1, units=16)
        return wm, actor, critic

    return factory
