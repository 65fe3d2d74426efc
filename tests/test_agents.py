"""Agent invariants: non-finite losses (nan_policy), one state_dict entry per tensor, no source
tensor in the target's losses, eta's schedule and its checkpointed step, autocast around the
relabelled loss, keys renamed end to end, any TorchRL probabilistic actor, determinism, and the
layering (no algorithm module imports the experiment layer)."""
from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from coworld_trl.agents import (
    AgentConfig,
    CouplingConfig,
    DreamerV2Agent,
    ModelConfig,
    NonFiniteLossError,
    build_networks,
    make_coworld_agent,
    make_dreamer_agent,
)
from coworld_trl.modules import latent_state_primer
from coworld_trl.objectives import MixedRewardLoss

TINY_MODEL = ModelConfig(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=16, mlp_units=16, reward_layers=1,
                         actor_layers=1, critic_layers=1)
FAST = AgentConfig(horizon=5)
TINIER = dataclasses.replace(TINY_MODEL, cnn_depth=4)  # the 20-update determinism runs
B, T = 2, 6
PACKAGE = Path(__file__).resolve().parents[1] / "coworld_trl"


def dreamer(model: ModelConfig = TINY_MODEL, **kwargs) -> DreamerV2Agent:
    return make_dreamer_agent(model, FAST, action_dim=2, **kwargs)


def coworld(num_sources: int = 2, eta_steps_default: int | None = 1_000, model: ModelConfig = TINY_MODEL,
            **coupling):
    return make_coworld_agent(model, FAST, CouplingConfig(**coupling), action_dim=2, num_sources=num_sources,
                              eta_steps_default=eta_steps_default)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before: dict, module: nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def one_entry_per_tensor(module: nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    assert len(state) == len({t.data_ptr() for t in state.values()}), "a tensor has two state_dict entries"
    return state


# =============================================================== non-finite losses
def nan_reward_batch(make_batch):
    batch = make_batch(B, T)
    batch["next", "reward"][0, 2] = float("nan")
    return batch


def test_nan_reward_raises_naming_loss_reward_and_changes_nothing(make_batch):
    agent = dreamer()
    before = snapshot(agent)
    with pytest.raises(NonFiniteLossError) as err:
        agent.update(nan_reward_batch(make_batch))
    message = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in message
    assert "loss_reward=nan" in message and "world_model update" in message
    assert "loss_image" not in message and "loss_kl" not in message  # only the non-finite terms
    assert unchanged(before, agent)
    assert all(not state for state in (opt.state for opt in agent.optimizers.values()))


def test_nan_policy_skip_skips_that_step_and_reports_it(make_batch):
    agent = dreamer(nan_policy="skip")
    world_model, others = snapshot(agent.world_model_loss), snapshot(agent.value_loss)
    metrics = agent.update(nan_reward_batch(make_batch))
    assert metrics["skipped_world_model"].item() == 1.0
    assert metrics["skipped_actor"].item() == 0.0 and metrics["skipped_value"].item() == 0.0
    assert unchanged(world_model, agent.world_model_loss), "a skipped step changed the world model"
    assert not agent.optimizers["world_model"].state  # not even Adam's moments
    assert not unchanged(others, agent.value_loss)  # the behaviour steps were finite and taken
    metrics = agent.update(make_batch(B, T))
    assert metrics["skipped_world_model"].item() == 0.0 and not unchanged(world_model, agent.world_model_loss)
    with pytest.raises(ValueError, match="nan_policy='ignore'"):
        dreamer(nan_policy="ignore")


def test_coworld_passes_nan_policy_and_names_the_relabelled_term(make_batch):
    agent = coworld(num_sources=1)
    assert {a.nan_policy for a in (agent.target, *agent.sources)} == {"raise"}
    with pytest.raises(NonFiniteLossError, match="loss_reward_relabelled=nan") as err:
        agent.source_update(make_batch(B, T), nan_reward_batch(make_batch))
    assert "loss_image" not in str(err.value)
    skip = make_coworld_agent(TINY_MODEL, FAST, CouplingConfig(), action_dim=2, eta_steps_default=10,
                              nan_policy="skip")
    assert {a.nan_policy for a in (skip.target, *skip.sources)} == {"skip"}
    metrics = skip.source_update(make_batch(B, T), nan_reward_batch(make_batch))
    assert metrics["skipped_world_model"].item() == 1.0


# =============================================================== state_dict
def test_dreamer_state_dict_has_one_entry_per_tensor():
    agent = dreamer()
    state = one_entry_per_tensor(agent)
    networks = [agent.world_model, agent.actor, agent.critic]
    distinct = sum(len(list(n.parameters())) + len(list(n.buffers())) for n in networks)
    slow_critic = len(list(agent.value_loss.target_value_network_params.values(True, True)))
    assert len(state) == distinct + slow_critic
    assert not any(k.startswith(("world_model.", "actor.")) for k in state)  # views, not registered twice
    assert agent.world_model is agent.world_model_loss.world_model and agent.actor is agent.actor_loss.actor


def test_coworld_state_dict_has_one_entry_per_tensor_and_no_source_tensor_in_the_target():
    agent = coworld()
    state = one_entry_per_tensor(agent)
    assert len(state) == sum(len(a.state_dict()) for a in (agent.target, *agent.sources))
    assert agent.alignment_loss.state_dict() == {} and agent.penalty.state_dict() == {}
    target = {t.data_ptr() for t in one_entry_per_tensor(agent.target).values()}
    for source in agent.sources:
        assert not target & {t.data_ptr() for t in source.state_dict().values()}
    # the target's losses and optimisers see no source tensor
    sources = {p.data_ptr() for s in agent.sources for p in s.parameters()}
    for optimizer in agent.target.optimizers.values():
        assert not sources & {p.data_ptr() for g in optimizer.param_groups for p in g["params"]}


# =============================================================== eta
def test_eta_decays_to_exactly_0_1_at_the_end_of_the_run(make_batch):
    """eta_steps_default = N relabelled source updates: the first uses 1.0, the N-th 0.1; source
    updates without a target batch (pretraining) do not move eta."""
    agent = coworld(num_sources=1, eta_steps_default=4)
    agent.source_update(make_batch(B, T))  # pretraining: Eq. 2 alone
    loss = agent.sources[0].world_model_loss
    assert isinstance(loss, MixedRewardLoss) and loss.eta_step.item() == 0
    etas = [agent.source_update(make_batch(B, T), make_batch(B, T))["eta"] for _ in range(4)]
    assert etas[0].item() == 1.0 and etas[-1] == torch.tensor(0.1)
    torch.testing.assert_close(torch.stack(etas), torch.tensor([1.0, 0.7, 0.4, 0.1]))
    assert agent.source_update(make_batch(B, T), make_batch(B, T))["eta"] == torch.tensor(0.1)  # holds
    # coupling.eta_steps, when set, wins over the run's default
    fixed = coworld(num_sources=1, eta_steps_default=4, eta_steps=2)
    assert fixed.sources[0].world_model_loss.eta.steps == 1


def test_eta_steps_must_come_from_config_or_run():
    with pytest.raises(ValueError) as err:
        coworld(eta_steps_default=None)
    assert "coupling.eta_steps" in str(err.value) and "\n" not in str(err.value)
    coworld(eta_steps_default=None, relabel=False)  # no eta without relabelling


def test_eta_step_is_checkpointed_with_the_mixed_reward_loss(make_batch):
    agent = coworld()
    for _ in range(3):
        agent.source_update(make_batch(B, T), make_batch(B, T), index=1)
    loss = agent.sources[1].world_model_loss
    assert loss.eta_step.item() == 3 and loss.state_dict()["eta_step"].item() == 3
    assert agent.state_dict()["sources.1.world_model_loss.eta_step"].item() == 3
    state = copy.deepcopy(agent.checkpoint_state())
    fresh = coworld()
    fresh.load_checkpoint_state(state)
    assert fresh.sources[1].world_model_loss.eta_step.item() == 3 and fresh.sources[0].world_model_loss.eta_step == 0
    assert fresh.source_updates == [0, 3]
    torch.testing.assert_close(fresh.sources[1].world_model_loss.current_eta(), loss.current_eta())


# =============================================================== autocast
def test_the_relabelled_loss_runs_under_autocast(make_batch):
    agent = make_coworld_agent(TINY_MODEL, AgentConfig(horizon=2), CouplingConfig(), action_dim=2, autocast=True,
                               eta_steps_default=10)
    loss = agent.sources[0].world_model_loss
    seen = []
    forward = loss.forward
    loss.forward = lambda td: seen.append(torch.is_autocast_enabled("cpu")) or forward(td)
    metrics = agent.source_update(make_batch(B, T), make_batch(B, T))
    assert seen == [True] and torch.isfinite(metrics["loss_reward_relabelled"])


# =============================================================== keys end to end
def test_an_agent_runs_on_a_batch_with_renamed_keys(make_batch):
    """Renaming through the agent's losses: the world model reads and writes the new names,
    imagination writes what the actor and value losses read; same losses as the default names."""
    default, agent = dreamer(), dreamer()
    agent.load_state_dict(default.state_dict())
    agent.world_model_loss.set_keys(pixels="obs", action="act", is_init="first", reward=("nx", "r"),
                                    terminated=("nx", "done"), embedding="e", stoch="s", deter="d", post_stats="q",
                                    prior_stats="p")
    for loss in (agent.actor_loss, agent.value_loss):
        loss.set_keys(features="z", value_target="ret", weight="w")
    agent.actor_loss.set_keys(action="a", policy_params="theta")
    agent.value_loss.set_keys(next_features=("nxt", "z"), reward=("nxt", "r"), discount=("nxt", "g"))
    batch = make_batch(B, T)
    batch_r = TensorDict({"obs": batch["pixels"], "act": batch["action"], "first": batch["is_init"],
                          "nx": {"r": batch["next", "reward"], "done": batch["next", "terminated"]}}, batch_size=[B, T])
    torch.manual_seed(1)
    expected = default.update(batch)
    torch.manual_seed(1)
    metrics = agent.update(batch_r)
    for key in expected.keys():
        torch.testing.assert_close(metrics[key], expected[key], msg=key)
    assert {"s", "d", "e"} <= set(batch_r.keys()) and "stoch" not in batch_r.keys()
    assert agent.policy().in_keys[:2] == ["obs", "first"]
    agent.actor_loss.set_keys(features="other")
    with pytest.raises(ValueError, match="set_keys\\(features=...\\) the same on both"):
        agent.update_behaviour(batch_r)


# =============================================================== any probabilistic actor
def test_an_agent_with_a_torchrl_probabilistic_actor(make_batch):
    world_model, _, critic = build_networks(TINY_MODEL, action_dim=2, obs_shape=(3, 64, 64))
    net = nn.Sequential(MLP(in_features=world_model.feature_dim, out_features=4, num_cells=[16]),
                        NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, in_keys=["features"], out_keys=["loc", "scale"]),
                               in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=False)
    agent = DreamerV2Agent(world_model, actor, critic, FAST)
    before = snapshot(actor)
    metrics = agent.update(make_batch(B, T))
    assert torch.isfinite(metrics["loss_actor"]) and not unchanged(before, actor)
    env_step = TensorDict({"pixels": make_batch(3, 1)["pixels"][:, 0], "is_init": torch.ones(3, 1, dtype=torch.bool)},
                          batch_size=[3])
    primer = latent_state_primer(world_model)
    for key, spec in primer.primers.items():
        env_step[key] = spec.zero((3,))
    for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
        with set_exploration_type(mode):
            action = agent.policy()(env_step.clone())["action"]
        assert action.shape == (3, 2) and (action.abs() <= 1).all()


def test_evaluation_acts_with_the_actors_mode_as_dreamerv2_its_mean_or_a_sample(make_batch):
    """``eval_action="mode"``: the truncated Normal's location (tanh of the actor's output, DreamerV2's
    ``actor.mode()``); ``"mean"``: its mean, pulled toward 0 by the truncation; ``"sample"``: a draw
    that differs between calls on the same state. Exploration samples."""
    torch.manual_seed(0)
    agent = dreamer()
    env_step = TensorDict({"pixels": make_batch(3, 1)["pixels"][:, 0], "is_init": torch.ones(3, 1, dtype=torch.bool)},
                          batch_size=[3])
    for key, spec in latent_state_primer(agent.world_model).primers.items():
        env_step[key] = spec.zero((3,))
    actions = {}
    for kind in ("mode", "mean"):
        agent.config = dataclasses.replace(FAST, eval_action=kind)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = agent.policy()(env_step.clone())
        actions[kind] = out["action"]
    features = agent.world_model.rssm.features(out["latent_stoch"], out["latent_deter"])
    location = torch.tanh(agent.actor.params(features).chunk(2, -1)[0])
    torch.testing.assert_close(actions["mode"], location)
    assert (actions["mean"].abs() < actions["mode"].abs()).all()
    torch.testing.assert_close(actions["mean"], agent.actor(features).mean)
    agent.config = dataclasses.replace(FAST, eval_action="sample")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        draws = [agent.policy()(env_step.clone()) for _ in range(2)]
    torch.testing.assert_close(draws[0]["latent_stoch"], out["latent_stoch"])  # still the posterior mode
    assert not torch.equal(draws[0]["action"], draws[1]["action"])
    assert not torch.equal(draws[0]["action"], actions["mode"]) and (draws[0]["action"].abs() <= 1).all()
    with pytest.raises(ValueError, match="eval_action='median' is unknown"):
        agent.config = dataclasses.replace(FAST, eval_action="median")
        agent.policy()


# =============================================================== determinism
def losses_of(agent, steps: int, update) -> list[TensorDict]:
    torch.manual_seed(123)
    return [update(agent) for _ in range(steps)]


def assert_same_runs(first: list[TensorDict], second: list[TensorDict]):
    assert len(first) == len(second)
    for step, (a, b) in enumerate(zip(first, second)):
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a[key], b[key]), (step, key)


def test_same_seed_gives_the_same_dreamer_losses(make_batch):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        agent = dreamer(TINIER)
        runs.append(losses_of(agent, 20, lambda a: a.update(make_batch(B, T))))
    assert_same_runs(*runs)


def test_same_seed_gives_the_same_coworld_losses(make_batch):
    def step(agent):
        metrics = agent.target_update(make_batch(B, T))
        return metrics.update(agent.source_update(make_batch(B, T), make_batch(B, T)).rename_key_("loss_reward", "src"))

    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        agent = coworld(num_sources=1, eta_steps_default=20, model=TINIER)
        runs.append(losses_of(agent, 20, step))
    assert_same_runs(*runs)
    assert runs[0][-1]["eta"] == torch.tensor(0.1)


# =============================================================== layering
def test_algorithm_layers_do_not_import_the_experiment_layer():
    """modules/, objectives/ and agents/ never import coworld_trl.training (not even for typing)."""
    offenders = []
    for layer in ("modules", "objectives", "agents"):
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                else:
                    continue
                if any(n == "coworld_trl.training" or n.startswith("coworld_trl.training.") for n in names):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders
