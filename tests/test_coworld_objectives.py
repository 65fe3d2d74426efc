"""CoWorld's modules and losses: state alignment (Eq. 3), relabelling (Eq. 4), the mixed
reward loss and eta (Eq. 5), the min-max value constraint (Eq. 6) and source selection
(Eq. 12), each checked against hand computations and gradient masks."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from coworld_trl.modules import AlignmentHead, RewardRelabeler, ScalarHead
from coworld_trl.objectives import (
    EtaSchedule,
    MinMaxValuePenalty,
    MixedRewardLoss,
    StateAlignmentLoss,
    ValueLoss,
    WorldModelLoss,
    select_source,
)

B, T = 2, 5


def grads(module: nn.Module) -> dict[str, bool]:
    return {name: p.grad is not None and p.grad.abs().sum() > 0 for name, p in module.named_parameters()}


# ------------------------------------------------------------------ Eq. 3
def aligned_batch(target, source, batch):
    """The target world model filters ``batch`` (writing ``embedding``), the source encodes it."""
    target(batch)
    StateAlignmentLoss().write_source_embedding(batch, source)
    return batch


def test_alignment_gradients_reach_only_the_target_encoder(tiny_world_model, make_batch):
    target, source = tiny_world_model(), tiny_world_model()
    loss_module = StateAlignmentLoss()
    batch = aligned_batch(target, source, make_batch(B, T))
    assert not batch["source_embedding"].requires_grad  # the teacher runs without gradient
    loss = loss_module(batch)["loss_alignment"]
    loss.backward()
    assert loss.item() > 0
    assert all(grads(target.encoder).values())
    for module in (source, target.rssm, target.decoder, target.reward_head):
        assert not any(grads(module).values()), type(module).__name__


def test_alignment_loss_holds_no_model_tensors(tiny_world_model, make_batch):
    """Neither world model is registered in the loss: no parameters, buffers or state_dict entries."""
    target, source = tiny_world_model(), tiny_world_model()
    loss_module = StateAlignmentLoss(beta=1.0)
    loss_module(aligned_batch(target, source, make_batch(B, T)))
    assert list(loss_module.parameters()) == [] and list(loss_module.buffers()) == []
    assert loss_module.state_dict() == {}


def test_alignment_value_and_reductions_match_a_hand_computation(tiny_world_model, make_batch):
    """KL(softmax(e_src) || softmax(e_tgt)) with torch.distributions; 'sum_time' sums over T
    and averages over B (the official weighting), 'mean' averages both; beta scales."""
    target, source = tiny_world_model(), tiny_world_model()
    batch = aligned_batch(target, source, make_batch(B, T))
    with torch.no_grad():
        source_logits, target_logits = source.encoder(batch["pixels"]), target.encoder(batch["pixels"])
    torch.testing.assert_close(batch["source_embedding"], source_logits, rtol=0, atol=0)
    torch.testing.assert_close(batch["embedding"], target_logits, rtol=0, atol=0)

    def reference_kl(p_logits, q_logits):  # [B, T], in float64
        p = torch.distributions.Categorical(logits=p_logits.double())
        q = torch.distributions.Categorical(logits=q_logits.double())
        return torch.distributions.kl_divergence(p, q)

    # Two fresh encoders give nearly equal softmaxes: the float32 KL is a sum of cancelling
    # terms over 1024 categories, off the float64 value by up to about 1e-4 of itself (the
    # digit differs between AVX2 and AVX-512 kernels). The reversed KL is further away.
    kl = reference_kl(source_logits, target_logits)
    summed = StateAlignmentLoss(beta=2.0)(batch)
    mean = StateAlignmentLoss(beta=2.0, reduction="mean")(batch)
    for got, want in ((summed["loss_alignment"], 2.0 * kl.sum(1).mean()), (mean["loss_alignment"], 2.0 * kl.mean()),
                      (summed["alignment_kl"], kl.mean())):
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=0)
    reversed_kl = reference_kl(target_logits, source_logits)
    assert not torch.isclose(summed["alignment_kl"].double(), reversed_kl.mean(), rtol=5e-4, atol=0)
    # A sharper source softmax (a KL of about 2 per sample) leaves no cancellation to round:
    # float32 agrees with float64 to 1e-6 there, and the reversed KL is far away.
    batch["source_embedding"] = 20 * source_logits
    kl, reversed_kl = reference_kl(20 * source_logits, target_logits), reference_kl(target_logits, 20 * source_logits)
    sharp = StateAlignmentLoss(beta=2.0)(batch)
    torch.testing.assert_close(sharp["loss_alignment"].double(), 2.0 * kl.sum(1).mean(), rtol=1e-6, atol=0)
    assert not torch.isclose(sharp["alignment_kl"].double(), reversed_kl.mean(), rtol=1e-2, atol=0)
    with pytest.raises(ValueError, match="reduction='median'"):
        StateAlignmentLoss(reduction="median")


def test_alignment_reads_the_embedding_in_the_batch(tiny_world_model, make_batch):
    """The loss uses the ``embedding`` the world model wrote (no encoder pass of its own)."""
    target, source = tiny_world_model(), tiny_world_model()
    batch = aligned_batch(target, source, make_batch(B, T))
    direct = StateAlignmentLoss()(batch)["loss_alignment"]
    batch["embedding"] = batch["embedding"] * 0  # uniform softmax: a different KL
    assert not torch.allclose(StateAlignmentLoss()(batch)["loss_alignment"], direct)


def test_alignment_refuses_models_of_different_sizes(tiny_world_model, make_batch):
    batch = aligned_batch(tiny_world_model(cnn_depth=4), tiny_world_model(cnn_depth=8), make_batch(B, T))
    with pytest.raises(ValueError, match="source and target world models differ in size"):
        StateAlignmentLoss()(batch)


def test_alignment_head_writes_log_softmax():
    td = TensorDict(embedding=torch.tensor([[0.0, 1.0, 2.0]]), batch_size=[1])
    AlignmentHead()(td)
    torch.testing.assert_close(td["embedding_log_probs"].exp().sum(-1), torch.ones(1))
    torch.testing.assert_close(td["embedding_log_probs"], torch.log_softmax(td["embedding"], -1))


# ------------------------------------------------------------------ Eq. 4
def test_relabel_formula_on_known_numbers(tiny_world_model, make_batch):
    """r~ = (1 - k) sg(r') + k r_T, aligned with the states: the reward INTO o_t (previous
    row's next.reward); masked at episode starts."""
    source = tiny_world_model()
    source.reward_head = ConstantHead(2.0)
    batch = make_batch(1, 4)
    batch["next", "reward"] = torch.tensor([10.0, 20.0, 30.0, 40.0]).reshape(1, 4, 1)
    RewardRelabeler(source, k=0.25)(batch)
    expected = torch.tensor([[0.0, 0.75 * 2 + 0.25 * 10, 0.75 * 2 + 0.25 * 20, 0.75 * 2 + 0.25 * 30]])
    torch.testing.assert_close(batch["relabelled_reward"][:, 1:], expected[:, 1:])
    assert batch["relabel_mask"].tolist() == [[False, True, True, True]]
    assert not batch["relabelled_reward"].requires_grad and batch["source_reward"].requires_grad


def test_relabel_leaves_the_target_latents_alone_and_checks_action_dims(tiny_world_model, make_batch):
    target, source = tiny_world_model(), tiny_world_model()
    batch = make_batch(B, T)
    target(batch)
    stoch = batch["stoch"].clone()
    RewardRelabeler(source)(batch)
    assert torch.equal(batch["stoch"], stoch), "the source posterior overwrote the target's latents"
    with pytest.raises(ValueError, match="target actions are 3-d but the source world model takes 2-d"):
        RewardRelabeler(source)(make_batch(B, T, action_dim=3))


class ConstantHead(nn.Module):
    """A reward head predicting ``value`` everywhere (with a parameter, so it has a graph)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, features):
        return self.value.expand(features.shape[:-1])


# ------------------------------------------------------------------ Eq. 5
def test_eta_schedule_decays_linearly_then_holds():
    eta = EtaSchedule(start=1.0, end=0.1, steps=100)
    assert [round(eta(s), 6) for s in (0, 50, 100, 1000)] == [1.0, 0.55, 0.1, 0.1]
    assert EtaSchedule.constant(0.98)(10**6) == 0.98
    with pytest.raises(ValueError, match="start and end must be in"):
        EtaSchedule(end=1.5)


def test_eta_schedule_endpoints_are_exact_for_ints_and_tensors():
    """over_updates(N): the first of N relabelled updates uses start, the N-th exactly end."""
    eta = EtaSchedule.over_updates(7, start=1.0, end=0.1)
    assert eta(0) == 1.0 and eta(6) == 0.1 and eta(100) == 0.1
    assert eta(torch.tensor(0)).item() == 1.0 and eta(torch.tensor(6)) == torch.tensor(0.1)
    values = [eta(s) for s in range(7)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    torch.testing.assert_close(eta(torch.arange(7)), torch.tensor(values, dtype=torch.float32))
    with pytest.raises(ValueError, match="positive number"):
        EtaSchedule.over_updates(0)


def test_mixed_reward_weights_source_and_relabelled_terms_by_eta(tiny_world_model, make_batch):
    """loss_reward = eta * (the source's own reward NLL); loss_reward_relabelled =
    (1 - eta) * NLL(r' ; r~) over non-initial target rows; image and KL terms untouched."""
    source = tiny_world_model()
    wm_loss = WorldModelLoss(source)
    mixed = MixedRewardLoss(source, k=0.5, eta=EtaSchedule(start=1.0, end=0.0, steps=4))
    mixed.advance()  # one relabelled update done: eta = 0.75
    src, tgt = make_batch(B, T), make_batch(B, T)
    torch.manual_seed(1)
    plain = wm_loss(src.clone())
    torch.manual_seed(1)  # the same latent samples for the source batch
    out = mixed(TensorDict({"source": src, "target": tgt}))
    assert out["eta"].item() == 0.75 and mixed.eta_step.item() == 1
    torch.testing.assert_close(out["loss_reward"], 0.75 * plain["loss_reward"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_image"], plain["loss_image"])
    mask = tgt["relabel_mask"].float()
    nll = 0.5 * (tgt["source_reward"] - tgt["relabelled_reward"]) ** 2 + 0.5 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(out["loss_reward_relabelled"], 0.25 * (nll * mask).sum() / mask.sum())
    # The source batch received the source's latents (the behaviour update starts from them).
    assert src["stoch"].shape == (B, T, source.rssm.stoch_dim)
    # source_only is plain Eq. 2 on a source batch alone.
    torch.manual_seed(1)
    alone = mixed.source_only(src.clone())
    for key in ("loss_image", "loss_reward", "loss_kl"):
        torch.testing.assert_close(alone[key], plain[key])


def test_mixed_reward_eta_step_is_a_checkpointed_buffer(tiny_world_model):
    source = tiny_world_model()
    mixed = MixedRewardLoss(source, eta=EtaSchedule(start=1.0, end=0.1, steps=10))
    for _ in range(3):
        mixed.advance()
    state = mixed.state_dict()
    assert state["eta_step"].item() == 3 and dict(mixed.named_buffers())["eta_step"] is mixed.eta_step
    fresh = MixedRewardLoss(source, eta=EtaSchedule(start=1.0, end=0.1, steps=10))
    fresh.load_state_dict(state)
    assert fresh.eta_step.item() == 3 and fresh.current_eta().item() == pytest.approx(1.0 - 0.9 * 0.3)


def test_mixed_reward_relabelled_term_trains_the_source_model(tiny_world_model, make_batch):
    source = tiny_world_model()
    mixed = MixedRewardLoss(source, eta=EtaSchedule.constant(0.0))
    out = mixed(TensorDict({"source": make_batch(B, T), "target": make_batch(B, T)}))
    out["loss_reward_relabelled"].backward()
    assert all(grads(source.reward_head).values()) and any(grads(source.encoder).values())
    with pytest.raises(ValueError, match="k=1.5 is outside"):
        MixedRewardLoss(source, k=1.5)


# ------------------------------------------------------------------ Eq. 6
def _imagined(features: torch.Tensor) -> TensorDict:
    n, h = features.shape[:2]
    return TensorDict(features=features, weight=torch.ones(n, h), value_target=torch.zeros(n, h), batch_size=[n, h])


class FixedCritic(nn.Module):
    """A critic returning given values ``[N, H]`` whatever the features."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def forward(self, features):
        return self.values


def test_min_max_gradient_is_zero_where_the_source_is_higher_and_alpha_where_lower():
    """Target values [1, 5], source values [3, 2]: d/dv of alpha * max(v, sg(v')) is 0 at the
    first state (source higher) and alpha (times the step weight, over the mean) at the second."""
    imagined = _imagined(torch.zeros(1, 2, 4))
    imagined["weight"] = torch.tensor([[1.0, 0.5]])
    value = torch.tensor([[1.0, 5.0]], requires_grad=True)
    imagined["value"] = value
    penalty = MinMaxValuePenalty(alpha=2.0)
    penalty.write_source_value(imagined, FixedCritic(torch.tensor([[3.0, 2.0]])))
    out = penalty(imagined)
    out["loss_value_penalty"].backward()
    assert value.grad.tolist() == [[0.0, 2.0 * 0.5 / 2]]
    assert out["value_exceeds_source"].item() == 0.5 and out["source_value"].item() == 2.5
    torch.testing.assert_close(out["loss_value_penalty"], torch.tensor((1.0 * 6.0 + 0.5 * 10.0) / 2))
    value.grad = None
    imagined["weight"] = torch.ones(1, 2)
    MinMaxValuePenalty(alpha=2.0, mode="linear")(imagined)["loss_value_penalty"].backward()
    assert value.grad.tolist() == [[1.0, 1.0]], "w/o Max pushes every state down"


def test_min_max_penalty_inside_the_value_loss_leaves_the_source_critic_alone():
    target_critic, source_critic = ScalarHead(4, layers=1, units=8), ScalarHead(4, layers=1, units=8)
    penalty = MinMaxValuePenalty(alpha=1.0)
    value_loss = ValueLoss(target_critic, penalty=penalty)
    source_tensors = {p.data_ptr() for p in source_critic.parameters()}
    assert penalty.state_dict() == {} and list(penalty.parameters()) == []
    assert not source_tensors & {t.data_ptr() for t in value_loss.state_dict().values()}
    assert not any("source" in name for name, _ in value_loss.named_parameters())
    imagined = penalty.write_source_value(_imagined(torch.randn(3, 4, 4)), source_critic)
    out = value_loss(imagined)
    assert {"loss_value", "loss_value_penalty", "value_exceeds_source", "source_value"} <= set(out.keys())
    # The penalty reads the prediction ValueLoss wrote: alpha * mean(w * max(v, v')).
    value, source_value = target_critic(imagined["features"]), source_critic(imagined["features"])
    torch.testing.assert_close(out["loss_value_penalty"], torch.maximum(value, source_value).mean())
    (out["loss_value"] + out["loss_value_penalty"]).backward()
    assert all(p.grad is None for p in source_critic.parameters())
    assert all(p.grad is not None for p in target_critic.parameters())
    with pytest.raises(ValueError, match="mode='min'"):
        MinMaxValuePenalty(mode="min")


# ------------------------------------------------------------------ Eq. 12
def test_source_selection_picks_the_source_identical_to_the_target(tiny_world_model, make_batch):
    target = tiny_world_model()
    identical = tiny_world_model()
    identical.load_state_dict(target.state_dict())
    unrelated = tiny_world_model()
    index, kls = select_source(target, [unrelated, identical], make_batch(B, T)["pixels"])
    assert index == 1 and kls[1].item() == pytest.approx(0.0, abs=1e-6) and kls[0] > 0
