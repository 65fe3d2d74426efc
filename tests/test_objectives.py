"""Unit tests for coworld_trl.objectives: KL balancing, lambda-returns, gradient routing, slow critic,
data alignment and a world-model overfitting check."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import distributions as D
from torchrl.objectives.dreamer_v3 import categorical_kl_terms

from coworld_trl.modules import RSSM, ScalarHead, normal_nll, previous_step
from coworld_trl.objectives import (
    ActorLoss,
    ValueLoss,
    WorldModelLoss,
    balanced_kl,
    discount_weights,
    imagine,
    lambda_return,
)

STOCH, CLASSES = 4, 5


# =============================================================== helpers
def kl_rssm(latent: str) -> RSSM:
    return RSSM(2, 6, latent=latent, stoch=STOCH, classes=CLASSES, deter=8, hidden=8)


def random_stats(latent: str, shape=(3, 5), scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior and prior stats far enough apart that every step's KL is well above 1 nat."""
    if latent == "discrete":
        post = torch.randn(*shape, STOCH * CLASSES) * scale
        prior = torch.randn(*shape, STOCH * CLASSES) * scale
    else:
        post = torch.cat([torch.randn(*shape, STOCH) * scale, torch.rand(*shape, STOCH) + 0.2], -1)
        prior = torch.cat([torch.randn(*shape, STOCH) * scale, torch.rand(*shape, STOCH) + 0.2], -1)
    return post, prior


def reference_kl(latent: str, lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Per-step KL(lhs || rhs) from torch.distributions, independent of the library."""
    if latent == "discrete":
        def dist(stats):
            logits = stats.unflatten(-1, (STOCH, CLASSES))
            return D.Independent(D.OneHotCategoricalStraightThrough(logits=logits), 1)
    else:
        def dist(stats):
            mean, std = stats.chunk(2, -1)
            return D.Independent(D.Normal(mean, std), 1)
    return D.kl_divergence(dist(lhs), dist(rhs))


def grads(loss: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def no_grad_on(params) -> bool:
    """True when no parameter in ``params`` has received a non-zero gradient."""
    return all(p.grad is None or not p.grad.any() for p in params)


def some_grad_on(params) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def clear_grads(*modules) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


# =============================================================== 1. KL balancing and free nats
@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
def test_rssm_kl_matches_torch_distributions(latent):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, prior = random_stats(latent)
    torch.testing.assert_close(rssm.kl(post, prior), reference_kl(latent, post, prior), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rssm.kl(post, post), torch.zeros(3, 5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
def test_balanced_kl_value_mean_placement(latent):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, prior = random_stats(latent)
    kl = reference_kl(latent, post, prior)
    for free in (0.0, 1.0, float(kl.mean()) + 5.0):  # free below and above the mean KL
        loss, diag = balanced_kl(rssm.kl, post, prior, balance=0.8, free_nats=free, free_nats_placement="mean")
        expected = 0.8 * max(kl.mean().item(), free) + 0.2 * max(kl.mean().item(), free)
        assert loss.shape == ()
        assert math.isclose(loss.item(), expected, rel_tol=1e-5, abs_tol=1e-5)
        # The diagnostic is the raw (unclamped) mean KL, detached.
        torch.testing.assert_close(diag, kl.mean(), rtol=1e-5, atol=1e-5)
        assert not diag.requires_grad


@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
def test_balanced_kl_value_step_placement(latent):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, prior = random_stats(latent)
    kl = reference_kl(latent, post, prior)
    free = kl.median().item()  # about half the steps are clamped
    assert (kl < free).any() and (kl > free).any()
    loss, _ = balanced_kl(rssm.kl, post, prior, balance=0.8, free_nats=free, free_nats_placement="step")
    torch.testing.assert_close(loss, kl.clamp_min(free).mean(), rtol=1e-5, atol=1e-5)
    # Differs from clamping the mean: the two placements are not the same thing.
    mean_loss, _ = balanced_kl(rssm.kl, post, prior, free_nats=free, free_nats_placement="mean")
    assert not torch.allclose(loss, mean_loss)


@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
@pytest.mark.parametrize("placement", ["mean", "step"])
def test_balanced_kl_gradients_are_balanced(latent, placement):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, prior = random_stats(latent)
    post.requires_grad_()
    prior.requires_grad_()
    free = 0.5
    assert (reference_kl(latent, post, prior) > free).all()  # no clamping anywhere: non-zero gradients
    loss, _ = balanced_kl(rssm.kl, post, prior, balance=0.8, free_nats=free, free_nats_placement=placement)
    g_post, g_prior = grads(loss, post, prior)

    (ref_prior,) = grads(reference_kl(latent, post.detach(), prior).mean(), prior)  # KL(sg(q) || p)
    (ref_post,) = grads(reference_kl(latent, post, prior.detach()).mean(), post)  # KL(q || sg(p))
    assert ref_prior.abs().sum() > 0 and ref_post.abs().sum() > 0
    torch.testing.assert_close(g_prior, 0.8 * ref_prior, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_post, 0.2 * ref_post, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
def test_balanced_kl_step_placement_gradient_masks_clamped_steps(latent):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, prior = random_stats(latent)
    post.requires_grad_()
    prior.requires_grad_()
    kl = reference_kl(latent, post, prior).detach()
    ordered = kl.flatten().sort().values
    free = 0.5 * (ordered[7] + ordered[8]).item()  # between two steps: no step sits at the kink
    active = (kl > free).float()
    loss, _ = balanced_kl(rssm.kl, post, prior, balance=0.8, free_nats=free, free_nats_placement="step")
    g_post, g_prior = grads(loss, post, prior)
    (ref_prior,) = grads((reference_kl(latent, post.detach(), prior) * active).mean(), prior)
    (ref_post,) = grads((reference_kl(latent, post, prior.detach()) * active).mean(), post)
    torch.testing.assert_close(g_prior, 0.8 * ref_prior, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_post, 0.2 * ref_post, rtol=1e-4, atol=1e-6)
    assert not g_prior[kl < free].any() and not g_post[kl < free].any()


@pytest.mark.parametrize("latent", ["discrete", "gaussian"])
def test_balanced_kl_below_free_nats_has_no_gradient(latent):
    torch.manual_seed(0)
    rssm = kl_rssm(latent)
    post, _ = random_stats(latent, scale=1.0)
    prior = post + 0.01 * torch.randn_like(post)  # nearly identical: KL << 1 nat
    post.requires_grad_()
    prior.requires_grad_()
    assert reference_kl(latent, post, prior).mean() < 0.1
    loss, _ = balanced_kl(rssm.kl, post, prior, free_nats=1.0, free_nats_placement="mean")
    assert math.isclose(loss.item(), 1.0, rel_tol=1e-6)
    g_post, g_prior = grads(loss, post, prior)
    assert (g_post is None or not g_post.any()) and (g_prior is None or not g_prior.any())


def test_balanced_kl_matches_torchrl_categorical_kl_terms():
    torch.manual_seed(0)
    rssm = kl_rssm("discrete")
    post, prior = random_stats("discrete", shape=(4, 6), scale=1.5)
    post.requires_grad_()
    prior.requires_grad_()
    for free in (0.0, 1.0, 100.0):
        dyn, rep = categorical_kl_terms(post.unflatten(-1, (STOCH, CLASSES)), prior.unflatten(-1, (STOCH, CLASSES)),
                                        free_nats=0, unimix=0)
        expected = 0.8 * dyn.clamp_min(free) + 0.2 * rep.clamp_min(free)
        loss, _ = balanced_kl(rssm.kl, post, prior, balance=0.8, free_nats=free, free_nats_placement="mean")
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        if free < dyn.item():
            ours, theirs = grads(loss, post, prior), grads(expected, post, prior)
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_balanced_kl_unknown_placement_raises():
    torch.manual_seed(0)
    rssm = kl_rssm("discrete")
    post, prior = random_stats("discrete")
    with pytest.raises(ValueError, match="sideways"):
        balanced_kl(rssm.kl, post, prior, free_nats_placement="sideways")


def test_world_model_loss_kl_term_uses_balanced_kl(tiny_world_model, make_batch):
    torch.manual_seed(0)
    wm = tiny_world_model()
    batch = make_batch(2, 5)
    loss = WorldModelLoss(wm, kl_scale=0.5, free_nats=0.0, kl_balance=0.8)(batch)
    kl = wm.rssm.kl(batch["post_stats"], batch["prior_stats"]).mean()
    torch.testing.assert_close(loss["loss_kl"], 0.5 * kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["kl"], kl.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("balance", [0.8, 0.5])
def test_world_model_loss_passes_its_kl_balance_and_free_nats_on(tiny_world_model, make_batch, balance):
    """The value alone cannot show the balance (``b KL + (1 - b) KL = KL``): the gradients on the
    prior and posterior statistics do, ``kl_scale * b`` and ``kl_scale * (1 - b)`` of KL's; and the
    free nats and their placement reach the loss (``free`` between the smallest and the mean
    per-step KL, where the two placements differ)."""
    wm, raw = tiny_world_model(), make_batch(2, 5)

    def filtered(**kw):
        batch = raw.clone()
        torch.manual_seed(1)  # the same latent draws in every call
        return WorldModelLoss(wm, kl_scale=0.5, kl_balance=balance, **kw)(batch), batch

    loss, batch = filtered(free_nats=0.0)
    post, prior = batch["post_stats"], batch["prior_stats"]
    g_post, g_prior = torch.autograd.grad(loss["loss_kl"], [post, prior], retain_graph=True)
    (ref_prior,) = torch.autograd.grad(wm.rssm.kl(post.detach(), prior).mean(), prior, retain_graph=True)
    (ref_post,) = torch.autograd.grad(wm.rssm.kl(post, prior.detach()).mean(), post, retain_graph=True)
    torch.testing.assert_close(g_prior, 0.5 * balance * ref_prior, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g_post, 0.5 * (1 - balance) * ref_post, rtol=1e-4, atol=1e-7)

    per_step = wm.rssm.kl(post, prior).detach()
    free = (per_step.min() + per_step.mean()).item() / 2
    values = {}
    for placement in ("mean", "step"):
        loss, batch = filtered(free_nats=free, free_nats_placement=placement)
        expected, _ = balanced_kl(wm.rssm.kl, batch["post_stats"], batch["prior_stats"], balance=balance,
                                  free_nats=free, free_nats_placement=placement)
        torch.testing.assert_close(loss["loss_kl"], 0.5 * expected, rtol=1e-5, atol=1e-6)
        values[placement] = loss["loss_kl"].item()
    assert values["step"] > values["mean"]


# =============================================================== 2. lambda-return and weights
def loop_lambda_return(reward, next_value, discount, lmbda):
    n, h = reward.shape
    out = torch.zeros(n, h, dtype=torch.float64)
    for i in range(n):
        ret = reward[i, h - 1] + discount[i, h - 1] * next_value[i, h - 1]
        out[i, h - 1] = ret
        for k in range(h - 2, -1, -1):
            ret = reward[i, k] + discount[i, k] * ((1 - lmbda) * next_value[i, k] + lmbda * ret)
            out[i, k] = ret
    return out


@pytest.mark.parametrize("lmbda", [0.0, 0.5, 0.95, 1.0])
def test_lambda_return_matches_loop(lmbda):
    torch.manual_seed(0)
    n, h = 3, 7
    reward, next_value = torch.randn(n, h), torch.randn(n, h)
    discount = torch.rand(n, h) * 0.5 + 0.5  # random per-step discounts in [0.5, 1)
    out = lambda_return(reward, next_value, discount, lmbda)
    assert out.shape == (n, h)
    expected = loop_lambda_return(reward.double(), next_value.double(), discount.double(), lmbda)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    if lmbda == 0.0:  # one-step TD target
        torch.testing.assert_close(out, reward + discount * next_value)


def test_lambda_return_is_differentiable():
    """Gradients of the return w.r.t. rewards follow d R_0 / d r_k = prod_{i<k} lambda g_i."""
    torch.manual_seed(0)
    n, h, lmbda = 2, 5, 0.9
    reward = torch.randn(n, h, requires_grad=True)
    next_value, discount = torch.randn(n, h), torch.rand(n, h) * 0.5 + 0.5
    (g,) = grads(lambda_return(reward, next_value, discount, lmbda)[:, 0].sum(), reward)
    expected = torch.cumprod(torch.cat([torch.ones(n, 1), lmbda * discount[:, :-1]], 1), 1)
    torch.testing.assert_close(g, expected)


def test_discount_weights_match_loop():
    torch.manual_seed(0)
    discount = (torch.rand(3, 6) * 0.5 + 0.5).requires_grad_()
    w = discount_weights(discount)
    expected = torch.ones(3, 6)
    for i in range(3):
        for k in range(1, 6):
            expected[i, k] = expected[i, k - 1] * discount[i, k - 1].item()
    torch.testing.assert_close(w, expected)
    assert not w.requires_grad  # weights are constants for every loss


# =============================================================== 3. gradient routing
def behaviour_setup(tiny_agent, make_batch, *, rho=1.0, entropy_scale=1e-4, horizon=4):
    wm, actor, critic = tiny_agent(action_dim=2)
    wm_loss = WorldModelLoss(wm)
    value_loss = ValueLoss(critic)
    actor_loss = ActorLoss(actor, rho=rho, entropy_scale=entropy_scale)
    batch = make_batch(2, 5)
    losses = wm_loss(batch)
    return wm, actor, critic, wm_loss, value_loss, actor_loss, batch, losses


def test_world_model_loss_reaches_only_world_model(tiny_agent, make_batch):
    torch.manual_seed(0)
    wm, actor, critic, _, value_loss, _, _, losses = behaviour_setup(tiny_agent, make_batch)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    assert no_grad_on(actor.parameters())
    assert no_grad_on(value_loss.parameters()) and no_grad_on(critic.parameters())
    for name in ("encoder", "rssm", "decoder", "reward_head"):
        assert some_grad_on(getattr(wm, name).parameters()), name
    # The diagnostics are detached.
    for key in ("kl", "post_entropy", "prior_entropy"):
        assert not losses[key].requires_grad


def imagined_for(wm, actor, value_loss, batch, horizon=4):
    imagined = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=horizon, gamma=0.99)
    # imagine holds the world model out only temporarily.
    assert all(p.requires_grad for p in wm.parameters())
    return value_loss.targets(imagined)


def test_actor_loss_dynamics_backprop_routing(tiny_agent, make_batch):
    torch.manual_seed(0)
    wm, actor, critic, _, value_loss, actor_loss, batch, _ = behaviour_setup(
        tiny_agent, make_batch, rho=1.0, entropy_scale=0.0
    )
    imagined = imagined_for(wm, actor, value_loss, batch)
    # One imagined trajectory per posterior state of the [2, 5] batch.
    assert imagined.shape == (10, 4) and imagined["features"].shape == (10, 4, wm.feature_dim)
    assert imagined["value_target"].requires_grad  # the graph through the dynamics is kept
    assert not imagined["weight"].requires_grad
    out = actor_loss(imagined)
    out["loss_actor"].backward()
    # Pure dynamics backprop (no entropy bonus): the actor still learns.
    assert some_grad_on(actor.parameters())
    assert no_grad_on(wm.parameters())
    assert no_grad_on(critic.parameters()) and no_grad_on(value_loss.value_network_params.values(True, True))
    assert all(p.grad is None for p in value_loss.target_value_network_params.values(True, True))
    assert not out["entropy"].requires_grad


def test_actor_loss_rho1_gradient_is_weighted_value_target(tiny_agent, make_batch):
    """With rho = 1 the loss is -mean(w * R): d loss / d R = -w / numel."""
    torch.manual_seed(0)
    wm, actor, _, _, value_loss, actor_loss, batch, _ = behaviour_setup(tiny_agent, make_batch, rho=1.0,
                                                                        entropy_scale=0.0)
    imagined = imagined_for(wm, actor, value_loss, batch)
    leaf = imagined["value_target"].detach().clone().requires_grad_()
    imagined["value_target"] = leaf
    actor_loss(imagined)["loss_actor"].backward()
    torch.testing.assert_close(leaf.grad, -imagined["weight"] / leaf.numel())


def test_value_loss_reaches_only_online_critic(tiny_agent, make_batch):
    torch.manual_seed(0)
    wm, actor, critic, _, value_loss, actor_loss, batch, _ = behaviour_setup(tiny_agent, make_batch)
    imagined = imagined_for(wm, actor, value_loss, batch)
    actor_loss(imagined)["loss_actor"].backward()
    clear_grads(actor, wm, critic)

    out = value_loss(imagined)
    out["loss_value"].backward()
    assert some_grad_on(critic.parameters())
    assert no_grad_on(actor.parameters())
    assert no_grad_on(wm.parameters())
    assert all(p.grad is None for p in value_loss.target_value_network_params.values(True, True))
    assert not out["value"].requires_grad and not out["value_target"].requires_grad


def test_value_loss_target_is_detached(tiny_agent, make_batch):
    """The critic gradient equals that of 0.5 * w * (v - const)^2 and never reaches value_target."""
    torch.manual_seed(0)
    wm, actor, critic, _, value_loss, _, batch, _ = behaviour_setup(tiny_agent, make_batch)
    imagined = imagined_for(wm, actor, value_loss, batch)
    params = list(critic.parameters())

    leaf = imagined["value_target"].detach().clone().requires_grad_()
    imagined["value_target"] = leaf
    loss = value_loss(imagined)["loss_value"]
    g_loss = grads(loss, *params, leaf)
    assert g_loss[-1] is None or not g_loss[-1].any()

    const = leaf.detach()
    value = critic(imagined["features"].detach())
    reference = (imagined["weight"] * 0.5 * (value - const).pow(2)).mean()
    torch.testing.assert_close(loss, reference)
    for a, b in zip(g_loss[:-1], grads(reference, *params)):
        torch.testing.assert_close(a, b)


def test_actor_loss_reinforce_does_not_backprop_value_target(tiny_agent, make_batch):
    torch.manual_seed(0)
    wm, actor, critic, _, value_loss, actor_loss, batch, _ = behaviour_setup(
        tiny_agent, make_batch, rho=0.0, entropy_scale=0.0
    )
    imagined = imagined_for(wm, actor, value_loss, batch)
    leaf = imagined["value_target"].detach().clone().requires_grad_()
    imagined["value_target"] = leaf
    loss = actor_loss(imagined)["loss_actor"]
    loss.backward()
    assert leaf.grad is None or not leaf.grad.any()
    assert some_grad_on(actor.parameters())  # score-function gradient only
    assert no_grad_on(wm.parameters()) and no_grad_on(critic.parameters())
    # Value: -mean(w * ln pi(a|s) * sg(R - v_slow)).
    dist = actor(imagined["features"].detach())
    advantage = leaf.detach() - imagined["state_value"]
    expected = -(imagined["weight"] * dist.log_prob(imagined["action"].detach()) * advantage).mean()
    torch.testing.assert_close(loss, expected)


def graph_leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors autograd would accumulate gradients into from ``tensor``."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def test_value_target_backprops_through_slow_critic():
    """Dynamics backprop: R_k's gradient reaches the imagined states through v_slow(s_{k+1}).

    DreamerV2 (and the official CoWorld ``ImagBehavior._compute_target``) computes the
    bootstrap ``value = slow_value(imag_feat).mode()`` inside the actor's gradient tape:
    the slow critic's *parameters* are not trained by the actor loss, but the lambda-return
    is differentiable w.r.t. the imagined features through it. With rewards that do not
    depend on the states, the only path is the value, so the gradient must be non-zero.
    """
    torch.manual_seed(0)
    feat_dim, n, h = 6, 3, 4
    critic = ScalarHead(feat_dim, layers=1, units=8)
    value_loss = ValueLoss(critic)
    next_features = torch.randn(n, h, feat_dim, requires_grad=True)
    imagined = TensorDict(
        features=torch.randn(n, h, feat_dim),
        next=TensorDict(features=next_features, reward=torch.zeros(n, h), discount=torch.full((n, h), 0.9),
                        batch_size=[n, h]),
        batch_size=[n, h],
    )
    value_loss.targets(imagined)
    target = imagined["value_target"]
    # Numerically the target uses the slow critic.
    with value_loss.target_value_network_params.to_module(value_loss.value_network):
        slow_next = value_loss.value_network(next_features.detach())
    torch.testing.assert_close(target.detach(), lambda_return(torch.zeros(n, h), slow_next, imagined["next", "discount"],
                                                              0.95))
    assert target.requires_grad, "value_target carries no graph through the slow critic"
    # The only leaf of the graph is the imagined features: no weight gradient is computed for
    # the slow critic (not even into temporaries that are then dropped).
    assert [leaf is next_features for leaf in graph_leaves(target)] == [True]
    target.sum().backward()
    assert next_features.grad is not None and next_features.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in critic.parameters())
    assert all(p.grad is None for p in value_loss.target_value_network_params.values(True, True))


def test_actor_loss_rejects_bad_rho(tiny_agent):
    torch.manual_seed(0)
    _, actor, _ = tiny_agent()
    for rho in (1.5, -0.1):
        with pytest.raises(ValueError, match="rho"):
            ActorLoss(actor, rho=rho)


# =============================================================== 4. slow critic and penalty
def test_slow_critic_hard_copy_every_100_steps():
    torch.manual_seed(0)
    critic = ScalarHead(6, layers=1, units=8)
    value_loss = ValueLoss(critic)
    updater = value_loss.make_target_updater(interval=100)
    online = list(value_loss.value_network_params.values(True, True))
    target = list(value_loss.target_value_network_params.values(True, True))
    assert len(online) == len(target) == 4

    def equal():
        return all(torch.equal(o, t) for o, t in zip(online, target))

    assert equal()  # the updater starts the slow critic as a copy
    probe = torch.randn(5, 6)
    snapshot = None
    for step in range(1, 251):
        with torch.no_grad():
            for p in online:
                p.add_(torch.randn_like(p) * 0.01)
        updater.step()
        # What the loss actually bootstraps with (slow_value) follows the copies too.
        slow_matches_online = torch.equal(value_loss.slow_value(probe), critic(probe).detach())
        if step % 100 == 0:
            assert equal() and slow_matches_online, f"not copied at step {step}"
            snapshot = [o.detach().clone() for o in online]
        else:
            assert not equal() and not slow_matches_online, f"copied early at step {step}"
            if snapshot is not None:  # the slow critic holds the last copy
                assert all(torch.equal(s, t) for s, t in zip(snapshot, target))
    # The online critic module itself keeps training its own parameters.
    assert all(p is q for p, q in zip(critic.parameters(), online))


class ScaledValuePenalty(torch.nn.Module):
    """A penalty ``alpha * w * v``: reads the critic's prediction ``value`` that ValueLoss writes."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.calls = 0

    def forward(self, imagined):
        self.calls += 1
        value = imagined["value"]
        assert value.shape == imagined.shape and value.requires_grad
        return TensorDict(loss_value_penalty=(imagined["weight"] * self.alpha * value).mean(),
                          penalty_calls=torch.tensor(float(self.calls)))


def test_value_loss_penalty_extension_point():
    torch.manual_seed(0)
    feat_dim, n, h, alpha = 6, 3, 4, 0.3
    critic = ScalarHead(feat_dim, layers=1, units=8)
    penalty = ScaledValuePenalty(alpha)
    value_loss = ValueLoss(critic, penalty=penalty)
    imagined = TensorDict(
        features=torch.randn(n, h, feat_dim),
        next=TensorDict(features=torch.randn(n, h, feat_dim), reward=torch.randn(n, h),
                        discount=torch.rand(n, h) * 0.5 + 0.5, batch_size=[n, h]),
        batch_size=[n, h],
    )
    value_loss.targets(imagined)
    out = value_loss(imagined)
    assert penalty.calls == 1 and out["penalty_calls"].item() == 1.0  # the penalty's entries are reported
    value = critic(imagined["features"])
    weight, target = imagined["weight"], imagined["value_target"].detach()
    torch.testing.assert_close(out["loss_value_penalty"], (weight * alpha * value).mean())
    torch.testing.assert_close(out["loss_value"], (weight * 0.5 * (value - target).pow(2)).mean())
    # The penalty has its own gradient to the critic: alpha * d mean(w v).
    params = list(critic.parameters())
    for a, b in zip(grads(out["loss_value_penalty"], *params), grads(alpha * (weight * value).mean(), *params)):
        torch.testing.assert_close(a, b)
    # Without a penalty, there is no such key and loss_value is unchanged.
    plain = ValueLoss(critic)(imagined)
    assert "loss_value_penalty" not in plain.keys()
    torch.testing.assert_close(plain["loss_value"], out["loss_value"])


# =============================================================== 6. data alignment
def alignment_batch(batch: int, steps: int) -> TensorDict:
    action = torch.randint(0, 2, (batch, steps, 1)).float() * 2 - 1
    is_init = torch.zeros(batch, steps, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict(
        {
            "observation": torch.randn(batch, steps, 4),
            "action": action,
            "is_init": is_init,
            "next": TensorDict(reward=action.clone(), batch_size=[batch, steps]),  # r_{t+1} = a_t
        },
        batch_size=[batch, steps],
    )


def test_reward_target_alignment(tiny_world_model):
    """loss_reward is the NLL of previous_step(next.reward) at s_t, over rows that are not resets."""
    torch.manual_seed(0)
    wm = tiny_world_model(action_dim=1, obs_shape=(4,), obs_key="observation")
    loss = WorldModelLoss(wm, reward_scale=2.0)
    loss.set_keys(pixels="observation")
    batch = alignment_batch(2, 6)
    batch["is_init"][1, 3] = True
    out = loss(batch)
    is_first = wm.is_first(batch)
    pred = wm.reward_head(wm.features(batch))
    target = previous_step(batch["next", "reward"].squeeze(-1), is_first)
    mask = ~is_first
    expected = 2.0 * normal_nll(pred, target)[mask].mean()
    torch.testing.assert_close(out["loss_reward"], expected)
    # The last row's reward (r_T) is never a target; rows 0 and 3 of slice 1 carry none either.
    changed = batch.clone()
    changed["next", "reward"][:, -1] += 10.0
    changed["next", "reward"][1, 2] += 10.0  # would be the target of reset row 3
    torch.manual_seed(0)
    a = loss(batch.clone())["loss_reward"]
    torch.manual_seed(0)
    b = loss(changed)["loss_reward"]
    torch.testing.assert_close(a, b)


def test_reward_head_learns_previous_action(tiny_world_model):
    """TED: next.reward[t] = a_t. The reward head at s_t must predict a_{t-1}, not a_t."""
    torch.manual_seed(0)
    wm = tiny_world_model(action_dim=1, obs_shape=(4,), obs_key="observation")
    loss = WorldModelLoss(wm)
    loss.set_keys(pixels="observation")
    opt = torch.optim.Adam(wm.parameters(), lr=1e-3)
    for _ in range(150):  # fresh random sequences every step (~1.5 s)
        out = loss(alignment_batch(16, 8))
        opt.zero_grad()
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        opt.step()
    with torch.no_grad():
        batch = alignment_batch(64, 8)
        wm(batch)
        pred = wm.reward_head(wm.features(batch))[:, 1:]
    prev_action = batch["action"][:, :-1, 0]
    this_action = batch["action"][:, 1:, 0]
    assert (pred - prev_action).abs().mean() < 0.3
    assert torch.corrcoef(torch.stack([pred.flatten(), prev_action.flatten()]))[0, 1] > 0.9
    assert (pred - this_action).abs().mean() > 0.7
    corr_this = torch.corrcoef(torch.stack([pred.flatten(), this_action.flatten()]))[0, 1]
    assert corr_this.abs() < 0.2


# =============================================================== 7. overfitting
def smooth_frames(batch: int, steps: int) -> torch.Tensor:
    """Solid-colour frames with a bright square whose position moves with time."""
    colours = torch.randint(0, 256, (batch, steps, 3, 1, 1), dtype=torch.uint8)
    frames = colours.expand(batch, steps, 3, 64, 64).clone()
    for t in range(steps):
        frames[:, t, :, 8 * (t % 6): 8 * (t % 6) + 16, 20:36] = 255
    return frames


def test_world_model_overfits_tiny_batch(tiny_world_model, make_batch):
    """The loss above its analytic floor (NLL constants and free nats) halves on a fixed batch."""
    torch.manual_seed(0)
    wm = tiny_world_model(action_dim=2)
    loss = WorldModelLoss(wm)
    batch = make_batch(2, 8)
    batch["pixels"] = smooth_frames(2, 8)
    # normal_nll includes 0.5 ln(2 pi) per pixel and per reward, and the KL is clamped
    # at free_nats = 1: the total can never fall below this.
    floor = 0.5 * math.log(2 * math.pi) * (1 + 3 * 64 * 64) + 1.0
    opt = torch.optim.Adam(wm.parameters(), lr=1e-3)
    history = []
    for _ in range(150):
        out = loss(batch.clone())
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item() - floor)
    assert history[0] > 0
    final = sum(history[-10:]) / 10  # latent sampling makes single steps noisy
    assert final < 0.5 * history[0], (history[0], final)
