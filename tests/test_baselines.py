"""The paper's baselines' library pieces: Offline DV2's ensemble of prior heads and reward
penalty (Lu et al. 2023, V-D4RL), the agent's frozen-world-model hooks, and EWC
(Kirkpatrick et al. 2017) for DV2 Finetune + EWC."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from coworld_trl.agents import AgentConfig, DreamerV2Agent, ModelConfig, build_networks, make_dreamer_agent
from coworld_trl.modules import RSSM, LatentSpec
from coworld_trl.objectives import (
    EWCPenalty,
    ImaginedKeys,
    RewardUncertaintyPenalty,
    ValueLoss,
    diagonal_fisher,
    imagine,
)

KINDS = ("meandis", "log_prob_ens", "mixstd_mean")
LATENTS = ("discrete", "gaussian")
TINY = ModelConfig(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16, reward_layers=1,
                   actor_layers=1, critic_layers=1)
FAST = AgentConfig(horizon=3)
B, T, H = 2, 5, 3


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before: dict, module: nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def assert_one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def tiny_rssm(latent: str = "discrete", ensemble: int = 0, **kw) -> RSSM:
    return RSSM(2, 8, latent=latent, stoch=4, classes=3, deter=6, hidden=5, ensemble=ensemble, **kw)


def sequence(batch: int = 2, steps: int = 5):
    embed, action = torch.randn(batch, steps, 8), torch.randn(batch, steps, 2)
    first = torch.zeros(batch, steps, dtype=torch.bool)
    first[:, 0] = True
    return embed, action, first


def heads_used(rssm: RSSM, deter: torch.Tensor, prior_stats: torch.Tensor) -> torch.Tensor:
    """``[T]`` index of the head that produced ``prior_stats [B, T, S]``, asserting it is one
    head per step, shared by the batch."""
    every = rssm.ensemble_stats(deter)  # [B, T, E, S]
    match = torch.isclose(every, prior_stats.unsqueeze(-2), atol=1e-6).all(-1)  # [B, T, E]
    assert (match.sum(-1) == 1).all(), "each prior must come from exactly one head"
    index = match.float().argmax(-1)  # [B, T]
    assert (index == index[:1]).all(), "the head of a step is shared by the whole batch"
    return index[0]


# ================================================================== ensemble of prior heads
# Seeded sums of RSSM(2, 8, stoch=4, classes=3, deter=6, hidden=5) outputs, computed with the
# RSSM before the ensemble existed (commit c4a4289): ensemble=0 must give the same numbers.
GOLDEN = {
    "discrete": [39.999999701976776, 3.234526011161506, 3.143929686397314, -3.7430509477853775,
                 -0.8680953159928322, -0.4165892153978348, 7.999999940395355],
    "gaussian": [9.388912796974182, -3.5332744414918125, 49.718430913984776, 41.62134972959757,
                 -0.9682326801121235, 8.022512562572956, 0.07907842099666595],
}
PLAIN_KEYS = ["img_in.0.weight", "img_in.0.bias", "gru.linear.weight", "gru.norm.weight", "gru.norm.bias",
              "img_out.0.weight", "img_out.0.bias", "img_out.2.weight", "img_out.2.bias", "obs_in_deter.weight",
              "obs_in_deter.bias", "obs_in_embed.weight", "obs_out.1.weight", "obs_out.1.bias"]


@pytest.mark.parametrize("latent", LATENTS)
def test_rssm_without_ensemble_is_unchanged(latent):
    torch.manual_seed(0)
    rssm = tiny_rssm(latent)
    assert list(rssm.state_dict()) == PLAIN_KEYS
    embed, action, first = sequence()
    out = rssm.observe(embed, action, first)
    deter, stats, stoch = rssm.img_step(out["stoch"][:, -1], out["deter"][:, -1], action[:, 0])
    sums = [out[k].double().sum().item() for k in ("stoch", "deter", "post_stats", "prior_stats")]
    sums += [deter.double().sum().item(), stats.double().sum().item(), stoch.double().sum().item()]
    torch.testing.assert_close(torch.tensor(sums), torch.tensor(GOLDEN[latent]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="ensemble > 0"):
        rssm.ensemble_stats(out["deter"])


def test_model_config_ensemble_reaches_the_rssm():
    plain, _, _ = build_networks(TINY, action_dim=2, obs_shape=(3, 64, 64))
    assert plain.rssm.ensemble == 0 and not any("ensemble" in k for k in plain.state_dict())
    wm, _, _ = build_networks(dataclasses.replace(TINY, ensemble=7), action_dim=2, obs_shape=(3, 64, 64))
    assert wm.rssm.ensemble == 7 and not hasattr(wm.rssm, "img_out")
    assert wm.rssm.img_out_ensemble.in_weight.shape == (7, 16, 16)
    with pytest.raises(ValueError, match="ensemble=-1"):
        tiny_rssm(ensemble=-1)


@pytest.mark.parametrize("latent", LATENTS)
def test_ensemble_heads_all_and_one(latent):
    rssm = tiny_rssm(latent, ensemble=4)
    deter = torch.randn(3, 5, 6)
    every = rssm.ensemble_stats(deter)
    assert every.shape == (3, 5, 4, rssm.stats_dim)
    for k in range(4):
        torch.testing.assert_close(rssm.prior(deter, torch.tensor(k)), every[..., k, :])
    heads = torch.tensor([3, 0, 0, 2, 1])  # one head per step (dim -2)
    torch.testing.assert_close(rssm.prior(deter, heads), every[:, torch.arange(5), heads])
    if latent == "gaussian":
        assert (every[..., 4:] >= rssm.min_std).all()  # the std transform is applied to every head


def test_observe_draws_one_random_head_per_step_shared_by_the_batch():
    """V-D4RL's ``observe`` calls ``img_step`` once per step, which draws one head for the batch."""
    torch.manual_seed(1)
    rssm = tiny_rssm(ensemble=3)
    out = rssm.observe(*sequence(batch=4, steps=24))
    heads = heads_used(rssm, out["deter"], out["prior_stats"])
    assert set(heads.tolist()) == {0, 1, 2}  # random over steps: 24 draws cover 3 heads


def test_img_step_draws_one_random_head_per_call():
    torch.manual_seed(2)
    rssm = tiny_rssm("gaussian", ensemble=3)
    stoch, deter = torch.randn(4, 4), torch.randn(4, 6)
    drawn = set()
    for _ in range(20):
        deter, stats, stoch = rssm.img_step(stoch, deter, torch.randn(4, 2))
        drawn.add(heads_used(rssm, deter.unsqueeze(1), stats.unsqueeze(1)).item())
    assert drawn == {0, 1, 2}


def test_the_kl_trains_only_the_heads_drawn_for_the_sequence():
    torch.manual_seed(3)
    rssm = tiny_rssm(ensemble=7)
    out = rssm.observe(*sequence(batch=2, steps=3))
    heads = set(heads_used(rssm, out["deter"], out["prior_stats"]).tolist())
    rssm.kl(out["post_stats"].detach(), out["prior_stats"]).sum().backward()
    ensemble = rssm.img_out_ensemble
    for name in ("in_weight", "in_bias", "out_weight", "out_bias"):
        grad = getattr(ensemble, name).grad
        trained = {k for k in range(7) if grad[k].abs().sum() > 0}
        assert trained == heads, (name, trained, heads)
    assert 0 < len(heads) < 7  # heads drawn and heads not: both sides of the check are exercised


def test_imagination_writes_every_heads_stats(tiny_agent, make_batch):
    wm, actor, _ = tiny_agent(ensemble=3)
    batch = wm(make_batch(B, T))
    imagined = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H)
    stats = imagined["next", "ensemble_stats"]
    assert stats.shape == (B * T, H, 3, wm.rssm.stats_dim)
    deter = imagined["next", "features"][..., wm.rssm.stoch_dim:]
    torch.testing.assert_close(stats, wm.rssm.ensemble_stats(deter))
    renamed = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H, keys=ImaginedKeys(ensemble_stats="ens_r"))
    assert renamed["ens_r"].shape == stats.shape and ("next", "ensemble_stats") not in renamed.keys(True)
    plain, actor, _ = tiny_agent()
    batch = plain(make_batch(B, T))
    assert ("next", "ensemble_stats") not in imagine(plain, actor, batch["stoch"], batch["deter"], horizon=H).keys(True)


# ================================================================== reward penalty
def spread_stats(latent: str, spread: float, heads: int = 4, stoch: int = 3, classes: int = 4) -> torch.Tensor:
    """``[2, 5, heads, stats]`` stats: one base distribution, each head moved by ``spread`` in
    its own fixed random direction (the mean only, for Gaussian latents)."""
    gen = torch.Generator().manual_seed(0)
    size = stoch * classes if latent == "discrete" else stoch
    base = torch.randn(2, 5, 1, size, generator=gen)
    direction = torch.randn(1, 1, heads, size, generator=gen)
    mean = base + spread * direction
    if latent == "discrete":
        return mean
    return torch.cat([mean, torch.full_like(mean, 0.7)], -1)


def penalty_for(latent: str, kind: str, **kw) -> RewardUncertaintyPenalty:
    return RewardUncertaintyPenalty(LatentSpec(latent, 3, 4), kind=kind, **kw)


def next_sample(latent: str, stats: torch.Tensor) -> torch.Tensor:
    """A latent sample from head 0 (what imagination's random head would give)."""
    spec = LatentSpec(latent, 3, 4)
    rssm = RSSM(2, 8, latent=latent, stoch=spec.stoch, classes=spec.classes, deter=4, hidden=4)
    return rssm.sample(stats[..., 0, :]).detach()


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_uncertainty_is_zero_when_heads_agree_and_grows_with_their_spread(latent, kind):
    penalty = penalty_for(latent, kind)
    spreads = (0.0, 0.05, 0.3, 1.0)
    values = []
    for spread in spreads:
        stats = spread_stats(latent, spread)
        u = penalty.uncertainty(stats, next_sample(latent, spread_stats(latent, 0.0)))
        assert u.shape == (2, 5)
        values.append(u)
    if kind == "mixstd_mean":  # not a pure disagreement: agreeing heads give their own std
        own = LatentSpec(latent, 3, 4).variance(spread_stats(latent, 0.0)[..., 0, :]).sqrt().mean(-1)
        torch.testing.assert_close(values[0], own)
    else:
        torch.testing.assert_close(values[0], torch.zeros(2, 5), atol=1e-6, rtol=0)
    if kind == "mixstd_mean" and latent == "discrete":
        # a mixture of categoricals is the categorical of the mean probabilities: its std is
        # sqrt(p_bar (1 - p_bar)), which moves with the spread but not monotonically
        stats = spread_stats(latent, 1.0)
        p_bar = stats.unflatten(-1, (3, 4)).softmax(-1).mean(-3).flatten(-2)
        torch.testing.assert_close(values[-1], (p_bar * (1 - p_bar)).sqrt().mean(-1))
        return
    means = [u.mean() for u in values]  # per state, log_prob_ens depends on where the sample falls
    assert means[0] < means[1] < means[2] < means[3], (kind, latent, means)


def test_meandis_and_the_other_kinds_by_hand():
    # discrete, 1 categorical of 2 classes, 2 heads: probs (0.5, 0.5) and (0.75, 0.25)
    stats = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    meandis = RewardUncertaintyPenalty(LatentSpec("discrete", 1, 2))
    # m_bar = (0.625, 0.375); each head is 0.125 * sqrt(2) away (Frobenius); mean over heads
    torch.testing.assert_close(meandis.uncertainty(stats), torch.tensor(0.125 * math.sqrt(2)))
    # Gaussian, 2 dims: means (0, 0) and (3, 4) -> m_bar (1.5, 2), each 2.5 away
    gauss = torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 4.0, 1.0, 1.0]])
    torch.testing.assert_close(RewardUncertaintyPenalty(LatentSpec("gaussian", 2, 1)).uncertainty(gauss),
                               torch.tensor(2.5))
    # log_prob_ens: N(0, 1) and N(1, 1) at z = 0: log-probs differ by 0.5 -> population std 0.25
    one_d = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    log_prob = RewardUncertaintyPenalty(LatentSpec("gaussian", 1, 1), kind="log_prob_ens")
    torch.testing.assert_close(log_prob.uncertainty(one_d, torch.zeros(1)), torch.tensor(0.25))
    # mixstd_mean: N(0, 1) and N(2, 1): variance mean(1 + 0, 1 + 4) - 1^2 = 2
    mix = RewardUncertaintyPenalty(LatentSpec("gaussian", 1, 1), kind="mixstd_mean")
    torch.testing.assert_close(mix.uncertainty(torch.tensor([[0.0, 1.0], [2.0, 1.0]])), torch.tensor(math.sqrt(2)))
    # discrete mixture: p_bar = (0.625, 0.375): std sqrt(p_bar (1 - p_bar)) for both entries
    mix_d = RewardUncertaintyPenalty(LatentSpec("discrete", 1, 2), kind="mixstd_mean")
    torch.testing.assert_close(mix_d.uncertainty(stats), torch.tensor(math.sqrt(0.625 * 0.375)))


def imagined_with_ensemble(tiny_agent, make_batch, latent="discrete"):
    wm, actor, critic = tiny_agent(ensemble=3, latent=latent)
    batch = wm(make_batch(B, T))
    torch.manual_seed(5)
    return wm, critic, imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H)


@pytest.mark.parametrize("kind", KINDS)
def test_the_penalty_lowers_the_lambda_returns_and_zero_lambda_changes_nothing(tiny_agent, make_batch, kind):
    wm, critic, imagined = imagined_with_ensemble(tiny_agent, make_batch)
    value_loss = ValueLoss(critic)
    raw_reward = imagined["next", "reward"].detach().clone()
    plain = value_loss.targets(imagined.clone())["value_target"]

    off = imagined.clone()
    RewardUncertaintyPenalty(wm, kind=kind, lmbda=0.0)(off)
    assert torch.equal(off["next", "reward"], raw_reward)
    assert torch.equal(value_loss.targets(off)["value_target"], plain)

    on = imagined.clone()
    penalty = RewardUncertaintyPenalty(wm, kind=kind, lmbda=10.0)
    metrics = penalty(on)
    u = on["next", "uncertainty"]
    assert set(metrics.keys()) == {"uncertainty", "reward_penalty"} and not metrics["uncertainty"].requires_grad
    torch.testing.assert_close(on["next", "reward"], raw_reward - 10.0 * u)
    torch.testing.assert_close(on["next", "raw_reward"], raw_reward)
    torch.testing.assert_close(metrics["reward_penalty"], 10.0 * u.mean())
    penalised = value_loss.targets(on)["value_target"]
    assert (penalised < plain).all()
    penalty(on)  # a second call starts from raw_reward again: never applied twice
    torch.testing.assert_close(on["next", "reward"], raw_reward - 10.0 * on["next", "uncertainty"])


def test_the_penalty_reaches_the_actor_through_the_dynamics_not_the_world_model(tiny_agent, make_batch):
    wm, actor, _ = tiny_agent(ensemble=3)
    batch = wm(make_batch(B, T))
    imagined = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H)
    RewardUncertaintyPenalty(wm)(imagined)
    imagined["next", "uncertainty"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in wm.parameters())


def test_reward_penalty_renamed_keys(tiny_agent, make_batch):
    wm, _, imagined = imagined_with_ensemble(tiny_agent, make_batch)
    default = imagined.clone()
    RewardUncertaintyPenalty(wm, kind="log_prob_ens")(default)
    renamed = TensorDict({"ens_r": imagined["next", "ensemble_stats"], "rew_r": imagined["next", "reward"],
                          "feat_r": imagined["next", "features"]}, batch_size=imagined.batch_size)
    penalty = RewardUncertaintyPenalty(wm, kind="log_prob_ens")
    penalty.set_keys(ensemble_stats="ens_r", reward="rew_r", raw_reward="raw_r", uncertainty="u_r",
                     next_features="feat_r")
    assert penalty.in_keys == ["ens_r", "rew_r", "feat_r"]
    assert penalty.out_keys == ["uncertainty", "reward_penalty"]
    penalty(renamed)
    assert set(renamed.keys()) == {"ens_r", "rew_r", "feat_r", "raw_r", "u_r"}
    torch.testing.assert_close(renamed["rew_r"], default["next", "reward"])
    torch.testing.assert_close(renamed["u_r"], default["next", "uncertainty"])


def test_reward_penalty_errors_are_one_line(tiny_agent, make_batch):
    wm, _, imagined = imagined_with_ensemble(tiny_agent, make_batch)
    with pytest.raises(KeyError) as err:
        RewardUncertaintyPenalty(wm)(imagined.exclude(("next", "ensemble_stats")))
    assert_one_line(err, "RewardUncertaintyPenalty", "('next', 'ensemble_stats')", "ensemble > 0")
    with pytest.raises(KeyError) as err:
        RewardUncertaintyPenalty(wm, kind="log_prob_ens")(imagined.exclude(("next", "features")))
    assert_one_line(err, "RewardUncertaintyPenalty", "('next', 'features')", "set_keys(next_features=...)")
    with pytest.raises(ValueError) as err:
        RewardUncertaintyPenalty()(imagined)
    assert_one_line(err, "latent kind", "set_latent")
    with pytest.raises(ValueError) as err:
        RewardUncertaintyPenalty(kind="meandist")
    assert_one_line(err, "meandist", "meandis")


# ================================================================== agent hooks
def offline_dv2(kind: str = "meandis", lmbda: float = 10.0, **kw) -> DreamerV2Agent:
    return make_dreamer_agent(dataclasses.replace(TINY, ensemble=3), FAST, action_dim=2,
                              reward_penalty=RewardUncertaintyPenalty(kind=kind, lmbda=lmbda), **kw)


def test_offline_dv2_agent_penalises_before_the_targets_and_reports_it(make_batch):
    agent = offline_dv2()
    assert agent.reward_penalty.latent_spec == agent.world_model.rssm.latent_spec  # set by the agent
    batch = make_batch(B, T)
    metrics = agent.update(batch)
    assert {"uncertainty", "reward_penalty", "loss_actor", "loss_value"} <= set(metrics.keys())
    assert metrics["reward_penalty"] > 0
    agent.observe(batch)
    torch.manual_seed(7)
    imagined = agent.imagine(batch)
    raw = imagined["next", "raw_reward"]
    torch.testing.assert_close(imagined["next", "reward"], raw - 10.0 * imagined["next", "uncertainty"])
    # the value targets are the lambda-returns of the penalised rewards, not of the raw ones
    target = agent.value_loss.tensor_keys.value_target
    torch.testing.assert_close(imagined[target], agent.value_loss.targets(imagined.clone())[target])
    from_raw = agent.value_loss.targets(imagined.clone().set(("next", "reward"), raw))[target]
    assert (imagined[target] < from_raw).all()


def test_the_agent_routes_the_penalty_keys(make_batch):
    agent = offline_dv2()
    agent.reward_penalty.set_keys(ensemble_stats="ens_r")
    imagined = agent.imagine(agent.observe(make_batch(B, T)))
    assert "ens_r" in imagined.keys() and ("next", "ensemble_stats") not in imagined.keys(True)
    agent.reward_penalty.set_keys(reward="other_reward")
    with pytest.raises(ValueError) as err:
        agent.imagine(agent.observe(make_batch(B, T)))
    assert_one_line(err, "reward", "'other_reward'", "set_keys(reward=...)")


def test_an_uncertainty_penalty_needs_an_ensemble_of_the_same_latents():
    with pytest.raises(ValueError) as err:
        make_dreamer_agent(TINY, FAST, action_dim=2, reward_penalty=RewardUncertaintyPenalty())
    assert_one_line(err, "one prior head", "ensemble")
    with pytest.raises(ValueError) as err:
        make_dreamer_agent(dataclasses.replace(TINY, ensemble=3), FAST, action_dim=2,
                           reward_penalty=RewardUncertaintyPenalty(LatentSpec("gaussian", 4, 4)))
    assert_one_line(err, "gaussian", "discrete")


def test_observe_writes_the_posterior_and_leaves_the_weights(make_batch):
    agent = offline_dv2()
    before = snapshot(agent)
    batch = agent.observe(make_batch(B, T))
    assert unchanged(before, agent)
    keys = agent.world_model.tensor_keys
    for key in (keys.stoch, keys.deter, keys.post_stats, keys.prior_stats, keys.embedding):
        assert key in batch.keys() and not batch[key].requires_grad
    assert all(p.grad is None for p in agent.parameters())
    world_model = snapshot(agent.world_model)
    agent.update_behaviour(batch)  # Offline DV2's second stage: the world model stays frozen
    assert unchanged(world_model, agent.world_model)
    assert not unchanged(before, agent)


# ================================================================== EWC
class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        self.inner = nn.Linear(2, 1)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)


def test_diagonal_fisher_of_a_quadratic():
    module = Quadratic()
    targets = [torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, -2.0, 1.5]), torch.tensor([1.0, 1.0, 1.0])]

    def loss(c):  # d/dtheta = theta - c
        return 0.5 * (module.theta - c).pow(2).sum() + 0.0 * module.inner.weight.sum()

    fisher = diagonal_fisher(module, loss, targets)
    expected = torch.stack([(module.theta - c).detach().pow(2) for c in targets]).mean(0)
    torch.testing.assert_close(fisher["theta"], expected)
    assert set(fisher) == {"theta", "inner.weight", "inner.bias", "frozen"}
    assert torch.equal(fisher["inner.bias"], torch.zeros(1)) and torch.equal(fisher["frozen"], torch.zeros(2))
    assert module.theta.grad is None  # autograd.grad: .grad untouched
    with pytest.raises(ValueError, match="no batches"):
        diagonal_fisher(module, loss, [])


def test_ewc_is_zero_at_the_anchor_and_its_gradient_is_lmbda_f_delta():
    module = Quadratic()
    ewc = EWCPenalty(module, lmbda=3.0)
    assert ewc()["loss_ewc"] == 0 and not bool(ewc.consolidated)
    fisher = {name: torch.rand_like(p) for name, p in module.named_parameters()}
    ewc.consolidate(fisher)
    assert bool(ewc.consolidated)
    out = ewc(TensorDict())  # the input is ignored
    assert out["loss_ewc"] == 0 and out["ewc_distance"] == 0
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    anchor = {name: ewc.anchor.get_buffer(name) for name, _ in module.named_parameters()}
    out = ewc()
    expected = sum((fisher[n] * (p - anchor[n]).pow(2)).sum() for n, p in module.named_parameters())
    torch.testing.assert_close(out["loss_ewc"], 1.5 * expected.detach())
    assert not out["ewc_distance"].requires_grad and out["ewc_distance"] > 0
    out["loss_ewc"].backward()
    for name, p in module.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, 3.0 * fisher[name] * (p - anchor[name]).detach())


def test_ewc_buffers_mirror_the_parameters_and_consolidate_checks_them():
    module = Quadratic()
    ewc = EWCPenalty(module)
    names = [n for n, _ in module.named_parameters()]
    assert {f"anchor.{n}" for n in names} | {f"fisher.{n}" for n in names} | {"consolidated"} == set(ewc.state_dict())
    assert not any(k.startswith("module") for k in ewc.state_dict())  # the module is its owner's
    with pytest.raises(ValueError) as err:
        ewc.consolidate({"theta": torch.ones(3)})
    assert_one_line(err, "missing", "inner.weight")
    bad = {n: torch.ones_like(p) for n, p in module.named_parameters()} | {"theta": torch.ones(4)}
    with pytest.raises(ValueError) as err:
        ewc.consolidate(bad)
    assert_one_line(err, "'theta'", "(4,)", "(3,)")


def finetune_agent(**kw) -> DreamerV2Agent:
    return make_dreamer_agent(TINY, FAST, action_dim=2, ewc_lmbda=100.0, **kw)


def test_ewc_regularises_each_optimiser_and_is_checkpointed(make_batch):
    agent = finetune_agent()
    assert set(agent.regularizers) == {"world_model", "actor", "value"}
    state = agent.state_dict()
    assert len(state) == len({t.data_ptr() for t in state.values()}), "a tensor has two state_dict entries"
    keys_before = set(state)
    fresh = finetune_agent()
    fresh.load_checkpoint_state(agent.checkpoint_state())  # resume before consolidation
    assert not any(bool(reg.consolidated) for reg in fresh.regularizers.values()) and unchanged(snapshot(agent), fresh)

    fishers = agent.consolidate_ewc([make_batch(B, T) for _ in range(2)])
    assert set(fishers) == {"world_model", "actor", "value"}
    assert set(fishers["value"]) == {n for n, _ in agent.critic.named_parameters()}
    assert all(bool(reg.consolidated) for reg in agent.regularizers.values())
    assert set(agent.state_dict()) == keys_before
    metrics = agent.update(make_batch(B, T))
    for part in ("world_model", "actor", "value"):
        assert f"loss_ewc_{part}" in metrics.keys() and f"ewc_distance_{part}" in metrics.keys()
    metrics = agent.update(make_batch(B, T))  # the weights have left the anchor
    assert metrics["loss_ewc_world_model"] > 0 and metrics["ewc_distance_actor"] > 0

    # The EWC term is in what the optimiser minimises: from this state (off the anchor), on one
    # batch and RNG, an update without the world model's term moves it elsewhere; one with it repeats.
    batch, weights = make_batch(B, T), {}
    for name, drop in (("with", False), ("again", False), ("without", True)):
        twin = finetune_agent()
        twin.load_checkpoint_state(copy.deepcopy(agent.checkpoint_state()))  # Adam's state is loaded by reference
        if drop:
            del twin.regularizers["world_model"]
        torch.manual_seed(3)
        twin.update(batch.clone())
        weights[name] = snapshot(twin.world_model)
    assert all(torch.equal(weights["with"][k], weights["again"][k]) for k in weights["with"])
    assert not all(torch.equal(weights["with"][k], weights["without"][k]) for k in weights["with"])

    resumed = finetune_agent()  # resume after consolidation
    resumed.load_checkpoint_state(agent.checkpoint_state())
    for name in ("world_model", "actor", "value"):
        assert bool(resumed.regularizers[name].consolidated)
        torch.testing.assert_close(resumed.regularizers[name]()["loss_ewc"], agent.regularizers[name]()["loss_ewc"])
    assert unchanged(snapshot(agent), resumed)


def test_fisher_changes_no_weight(make_batch):
    agent = offline_dv2()
    before = snapshot(agent)
    fishers = agent.fisher([make_batch(B, T)], parts=("world_model", "actor", "value"))
    assert unchanged(before, agent) and all(p.grad is None for p in agent.parameters())
    for part, fisher in fishers.items():
        module = agent.part_module(part)
        assert set(fisher) == {n for n, _ in module.named_parameters()}
        assert all((f >= 0).all() for f in fisher.values()) and any(f.sum() > 0 for f in fisher.values())


def test_regularizer_and_ewc_errors_are_one_line(make_batch):
    world_model, actor, critic = build_networks(TINY, action_dim=2, obs_shape=(3, 64, 64))
    with pytest.raises(ValueError) as err:
        DreamerV2Agent(world_model, actor, critic, FAST, regularizers={"critic": EWCPenalty(critic)})
    assert_one_line(err, "'critic'", "world_model", "value")
    other, _, _ = build_networks(TINY, action_dim=2, obs_shape=(3, 64, 64))
    with pytest.raises(ValueError) as err:
        DreamerV2Agent(world_model, actor, critic, FAST, regularizers={"world_model": EWCPenalty(other)})
    assert_one_line(err, "another module")
    agent = DreamerV2Agent(world_model, actor, critic, FAST, regularizers={"actor": EWCPenalty(actor)})
    with pytest.raises(ValueError) as err:
        agent.consolidate_ewc([make_batch(B, T)], parts=("world_model",))
    assert_one_line(err, "no EWCPenalty", "world_model")
    with pytest.raises(ValueError) as err:
        make_dreamer_agent(TINY, FAST, action_dim=2, ewc_lmbda=1.0, ewc_parts=("encoder",))
    assert_one_line(err, "encoder")
    assert len(make_dreamer_agent(TINY, FAST, action_dim=2).regularizers) == 0  # ewc_lmbda=0: plain finetune


def test_the_ensemble_and_penalty_trace_without_graph_breaks():
    """Compile-friendly: random heads are tensor indices (no data-dependent Python int)."""
    rssm = tiny_rssm("gaussian", ensemble=3)
    penalty = RewardUncertaintyPenalty(rssm, kind="log_prob_ens")
    ewc = EWCPenalty(rssm)

    def step(stoch, deter, action):
        deter, _, stoch = rssm.img_step(stoch, deter, action)
        return penalty.uncertainty(rssm.ensemble_stats(deter), stoch) + ewc()["loss_ewc"]

    def observe(embed, action, first):
        return rssm.observe(embed, action, first)["prior_stats"]

    torch.compile(step, fullgraph=True, backend="eager")(torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 2))
    torch.compile(observe, fullgraph=True, backend="eager")(*sequence())
