"""Every loss's TensorDict keys: renamed through ``set_keys`` end to end (a batch holding only
the renamed keys gives the same losses), ``in_keys``/``out_keys``, one-line errors for a missing
key, and one-line shape errors for pixels of another size or channel order and for actions of
another dimension."""
from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from tensordict.nn.distributions import NormalParamExtractor
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from coworld_trl.modules import Actor, RewardRelabeler, ScalarHead
from coworld_trl.objectives import (
    ActorLoss,
    EtaSchedule,
    ImaginedKeys,
    MinMaxValuePenalty,
    MixedRewardLoss,
    StateAlignmentLoss,
    ValueLoss,
    WorldModelLoss,
    imagine,
)

B, T, H = 2, 5, 3

# default name -> renamed, for a TED batch
BATCH_RENAMES = {"pixels": "obs_r", "action": "act_r", "is_init": "init_r", ("next", "reward"): ("nx", "rew_r"),
                 ("next", "terminated"): ("nx", "term_r")}
LATENT_RENAMES = {"embedding": "emb_r", "stoch": "stoch_r", "deter": "deter_r", "post_stats": "post_r",
                  "prior_stats": "prior_r"}
WM_LOSS_RENAMES = dict(pixels="obs_r", action="act_r", is_init="init_r", reward=("nx", "rew_r"),
                       terminated=("nx", "term_r"), embedding="emb_r", stoch="stoch_r", deter="deter_r",
                       post_stats="post_r", prior_stats="prior_r")


def renamed(td: TensorDict, mapping: dict) -> TensorDict:
    """A TensorDict holding only ``mapping``'s renamed entries of ``td``."""
    out = TensorDict(batch_size=td.batch_size)
    for old, new in mapping.items():
        out.set(new, td.get(old))
    return out


def keys_of(td: TensorDict) -> set:
    return {k if isinstance(k, str) else tuple(k) for k in td.keys(True, True)}


def assert_one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def same_losses(a: TensorDict, b: TensorDict):
    assert set(a.keys()) == set(b.keys())
    for key in a.keys():
        torch.testing.assert_close(a[key], b[key], msg=key)


# =============================================================== set_keys end to end
def test_world_model_loss_renamed_keys_reach_the_world_model(tiny_world_model, make_batch):
    """All ten keys renamed: the encoder reads the renamed observation, the model writes the
    renamed latents, the decoder target and reward/termination come from the renamed entries."""
    model = tiny_world_model(discount_head=True)
    default_loss, loss = WorldModelLoss(model), WorldModelLoss(copy.deepcopy(model))
    loss.set_keys(**WM_LOSS_RENAMES)
    assert loss.world_model.tensor_keys.obs == "obs_r" and loss.world_model.in_keys == ["obs_r", "act_r", "init_r"]
    assert loss.world_model.out_keys == list(LATENT_RENAMES.values())
    assert set(loss.in_keys) == {"obs_r", "act_r", "init_r", ("nx", "rew_r"), ("nx", "term_r")}
    assert loss.out_keys == ["loss_image", "loss_reward", "loss_kl", "loss_discount", "kl", "post_entropy",
                             "prior_entropy"]
    batch = make_batch(B, T)
    batch["next", "terminated"][1, 2] = True
    batch_r = renamed(batch, BATCH_RENAMES)
    torch.manual_seed(3)
    expected = default_loss(batch)
    torch.manual_seed(3)
    out = loss(batch_r)
    same_losses(out, expected)
    assert keys_of(batch_r) == set(BATCH_RENAMES.values()) | set(LATENT_RENAMES.values())
    for old, new in LATENT_RENAMES.items():
        torch.testing.assert_close(batch_r[new], batch[old])
    # Resetting a key goes back to the default, in the model too.
    loss.set_keys(pixels=None)
    assert loss.tensor_keys.pixels == "pixels" and loss.world_model.tensor_keys.obs == "pixels"
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(observation="x")


def test_world_model_loss_starts_from_the_models_keys(tiny_world_model, make_batch):
    """A model built with obs_key='observation' gives a loss that reads 'observation': one place."""
    model = tiny_world_model(action_dim=1, obs_shape=(4,), obs_key="observation")
    loss = WorldModelLoss(model)
    assert loss.tensor_keys.pixels == "observation"
    out = loss(make_batch(B, T, action_dim=1, obs_shape=(4,), obs_key="observation"))
    assert torch.isfinite(out["loss_image"])


def test_mixed_reward_loss_renamed_keys(tiny_world_model, make_batch):
    model = tiny_world_model()
    renames = dict(WM_LOSS_RENAMES, source="src_r", target=("tgt", "r"), relabelled_reward="relabelled_r",
                   source_reward="pred_r", relabel_mask="mask_r")
    default_loss = MixedRewardLoss(model, k=0.5, eta=EtaSchedule(start=1.0, end=0.0, steps=2))
    loss = MixedRewardLoss(copy.deepcopy(model), k=0.5, eta=EtaSchedule(start=1.0, end=0.0, steps=2))
    loss.set_keys(**renames)
    for mixed in (default_loss, loss):
        mixed.advance()  # eta = 0.5
    source, target = make_batch(B, T), make_batch(B, T)
    source_r, target_r = renamed(source, BATCH_RENAMES), renamed(target, BATCH_RENAMES)
    inputs = TensorDict()
    inputs.set("src_r", source_r)
    inputs.set(("tgt", "r"), target_r)
    assert set(loss.in_keys) == {("src_r", k) if isinstance(k, str) else ("src_r", *k) for k in
                                 ["obs_r", "act_r", "init_r", ("nx", "rew_r")]} | {
        ("tgt", "r", k) if isinstance(k, str) else ("tgt", "r", *k) for k in ["obs_r", "act_r", "init_r", ("nx", "rew_r")]}
    torch.manual_seed(5)
    expected = default_loss(TensorDict({"source": source, "target": target}))
    torch.manual_seed(5)
    out = loss(inputs)
    same_losses(out, expected)
    assert {"relabelled_r", "pred_r", "mask_r"} <= keys_of(target_r)
    assert "stoch_r" in keys_of(source_r) and "relabelled_reward" not in keys_of(target_r)


def test_alignment_loss_renamed_keys(tiny_world_model, make_batch):
    target, source = tiny_world_model(), tiny_world_model()
    batch = make_batch(B, T)
    target(batch)
    default_loss = StateAlignmentLoss()
    default_loss.write_source_embedding(batch, source)
    loss = StateAlignmentLoss()
    loss.set_keys(pixels="obs_r", embedding="emb_r", source_embedding="teacher_r")
    assert loss.in_keys == ["emb_r", "teacher_r"] and loss.out_keys == ["loss_alignment", "alignment_kl"]
    batch_r = renamed(batch, {"pixels": "obs_r", "embedding": "emb_r"})
    loss.write_source_embedding(batch_r, source)
    assert keys_of(batch_r) == {"obs_r", "emb_r", "teacher_r"}
    same_losses(loss(batch_r), default_loss(batch))


def imagined_for(tiny_agent, make_batch, *, actor=None):
    wm, default_actor, critic = tiny_agent()
    actor = actor or default_actor
    batch = make_batch(B, T)
    WorldModelLoss(wm)(batch)
    value_loss = ValueLoss(critic)
    return wm, actor, critic, value_loss.targets(imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H))


IMAGINED_RENAMES = {"features": "feat_r", "action": "act_r", "policy_params": "params_r",
                    ("next", "features"): ("nx", "feat_r"), ("next", "reward"): ("nx", "rew_r"),
                    ("next", "discount"): ("nx", "disc_r"), "value_target": "ret_r", "state_value": "slow_r",
                    "weight": "w_r"}


def test_actor_loss_renamed_keys(tiny_agent, make_batch):
    _, actor, _, imagined = imagined_for(tiny_agent, make_batch)
    default_loss = ActorLoss(actor, rho=0.5)
    loss = ActorLoss(actor, rho=0.5)
    loss.set_keys(features="feat_r", action="act_r", policy_params="params_r", value_target="ret_r",
                  state_value="slow_r", weight="w_r")
    assert set(loss.in_keys) == {"feat_r", "act_r", "ret_r", "slow_r", "w_r"}
    imagined_r = renamed(imagined, IMAGINED_RENAMES)
    torch.manual_seed(2)
    expected = default_loss(imagined)
    torch.manual_seed(2)
    same_losses(loss(imagined_r), expected)
    # Without policy_params the actor runs on the renamed features: the same loss.
    torch.manual_seed(2)
    same_losses(loss(imagined_r.exclude("params_r")), expected)


def test_value_loss_renamed_keys_reach_the_penalty(tiny_agent, make_batch):
    _, _, critic, imagined = imagined_for(tiny_agent, make_batch)
    source_critic = ScalarHead(critic.net[0].in_features, layers=1, units=16)
    default_penalty, penalty = MinMaxValuePenalty(alpha=2.0), MinMaxValuePenalty(alpha=2.0)
    default_loss = ValueLoss(critic, penalty=default_penalty)
    loss = ValueLoss(copy.deepcopy(critic), penalty=penalty)
    loss.set_keys(features="feat_r", next_features=("nx", "feat_r"), reward=("nx", "rew_r"),
                  discount=("nx", "disc_r"), value_target="ret_r", state_value="slow_r", weight="w_r", value="v_r")
    penalty.set_keys(source_value="teacher_r")
    # The names ValueLoss shares with its penalty reached it.
    keys = penalty.tensor_keys
    assert (keys.features, keys.value, keys.weight, keys.source_value) == ("feat_r", "v_r", "w_r", "teacher_r")
    assert set(loss.in_keys) == {"feat_r", "ret_r", "w_r", "teacher_r"}
    assert loss.out_keys == ["loss_value", "value", "value_target", "loss_value_penalty", "value_exceeds_source",
                             "source_value"]
    imagined_r = renamed(imagined.exclude("value_target", "state_value", "weight"),
                         {k: v for k, v in IMAGINED_RENAMES.items() if k in ("features", ("next", "features"),
                                                                           ("next", "reward"), ("next", "discount"))})
    loss.targets(imagined_r)
    penalty.write_source_value(imagined_r, source_critic)  # reads the renamed features
    default_penalty.write_source_value(imagined, source_critic)
    same_losses(loss(imagined_r), default_loss(imagined))
    assert keys_of(imagined_r) == {"feat_r", ("nx", "feat_r"), ("nx", "rew_r"), ("nx", "disc_r"), "ret_r", "slow_r",
                                   "w_r", "v_r", "teacher_r"}


def test_min_max_penalty_renamed_keys():
    imagined = TensorDict(f_r=torch.randn(3, 4, 6), v_r=torch.randn(3, 4), w_r=torch.rand(3, 4), batch_size=[3, 4])
    critic = ScalarHead(6, layers=1, units=8)
    penalty = MinMaxValuePenalty()
    penalty.set_keys(features="f_r", value="v_r", source_value="s_r", weight="w_r")
    assert penalty.in_keys == ["v_r", "s_r", "w_r"]
    out = penalty(penalty.write_source_value(imagined, critic))
    with torch.no_grad():
        expected = (imagined["w_r"] * torch.maximum(imagined["v_r"], critic(imagined["f_r"]))).mean()
    torch.testing.assert_close(out["loss_value_penalty"], expected)


def test_imagine_writes_under_the_given_keys(tiny_agent, make_batch):
    wm, actor, _ = tiny_agent()
    batch = make_batch(B, T)
    wm(batch)
    keys = ImaginedKeys(features="feat_r", action="act_r", policy_params="params_r", next_features=("nx", "feat_r"),
                        reward=("nx", "rew_r"), discount=("nx", "disc_r"))
    torch.manual_seed(4)
    out = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H, keys=keys)
    torch.manual_seed(4)
    default = imagine(wm, actor, batch["stoch"], batch["deter"], horizon=H)
    assert keys_of(out) == {"feat_r", "act_r", "params_r", ("nx", "feat_r"), ("nx", "rew_r"), ("nx", "disc_r")}
    for old, new in IMAGINED_RENAMES.items():
        if new in keys_of(out):
            torch.testing.assert_close(out[new], default[old])


def test_relabeler_reads_the_source_models_keys(tiny_world_model, make_batch):
    source = tiny_world_model()
    WorldModelLoss(source).set_keys(pixels="obs_r", action="act_r", is_init="init_r")
    batch = renamed(make_batch(B, T), BATCH_RENAMES)
    relabeler = RewardRelabeler(source, reward_key=("nx", "rew_r"), out_keys=("a", "b", "c"))
    assert relabeler.in_keys == ["obs_r", "act_r", "init_r", ("nx", "rew_r")]
    relabeler(batch)
    assert {"a", "b", "c"} <= keys_of(batch)


# =============================================================== missing keys
def test_missing_keys_give_one_line_errors_naming_key_and_loss(tiny_agent, tiny_world_model, make_batch):
    wm, actor, critic = tiny_agent()
    batch = make_batch(B, T)
    with pytest.raises(KeyError) as err:
        WorldModelLoss(wm)(batch.exclude("pixels"))
    assert_one_line(err, "WorldModelLoss", "'pixels'", "set_keys(pixels=...)")
    with pytest.raises(KeyError) as err:
        WorldModelLoss(wm)(batch.exclude(("next", "reward")))
    assert_one_line(err, "WorldModelLoss", "('next', 'reward')", "set_keys(reward=...)")
    with pytest.raises(KeyError) as err:
        WorldModelLoss(tiny_world_model(discount_head=True))(batch.exclude(("next", "terminated")))
    assert_one_line(err, "WorldModelLoss", "('next', 'terminated')")
    with pytest.raises(KeyError) as err:
        MixedRewardLoss(wm)(TensorDict({"source": make_batch(B, T)}))
    assert_one_line(err, "MixedRewardLoss", "'target'", "source_only")
    with pytest.raises(KeyError) as err:
        MixedRewardLoss(wm)(TensorDict({"source": make_batch(B, T), "target": make_batch(B, T).exclude("action")}))
    assert_one_line(err, "MixedRewardLoss", "target batch", "'action'")
    with pytest.raises(KeyError) as err:
        StateAlignmentLoss()(wm(make_batch(B, T)))
    assert_one_line(err, "StateAlignmentLoss", "'source_embedding'", "write_source_embedding")
    with pytest.raises(KeyError) as err:
        StateAlignmentLoss()(make_batch(B, T).set("source_embedding", torch.zeros(B, T, 8)))
    assert_one_line(err, "StateAlignmentLoss", "'embedding'")
    _, _, _, imagined = imagined_for(tiny_agent, make_batch)
    with pytest.raises(KeyError) as err:
        ActorLoss(actor)(imagined.exclude("value_target"))
    assert_one_line(err, "ActorLoss", "'value_target'", "imagined TensorDict")
    with pytest.raises(KeyError) as err:
        ValueLoss(critic)(imagined.exclude("weight"))
    assert_one_line(err, "ValueLoss", "'weight'")
    with pytest.raises(KeyError) as err:
        ValueLoss(critic).targets(imagined.exclude(("next", "discount")))
    assert_one_line(err, "ValueLoss", "('next', 'discount')", "set_keys(discount=...)")
    with pytest.raises(KeyError) as err:
        ValueLoss(critic, penalty=MinMaxValuePenalty())(imagined)
    assert_one_line(err, "MinMaxValuePenalty", "'source_value'", "write_source_value")


# =============================================================== shapes
def test_wrong_pixel_size_channel_order_and_action_dim_are_named(tiny_world_model, make_batch):
    wm = tiny_world_model()
    loss = WorldModelLoss(wm)
    with pytest.raises(ValueError) as err:
        loss(make_batch(B, T, obs_shape=(3, 84, 84)))
    assert_one_line(err, "'pixels' has shape (2, 5, 3, 84, 84)", "3, 64, 64", "Resize")
    with pytest.raises(ValueError) as err:
        loss(make_batch(B, T, obs_shape=(64, 64, 3)))
    assert_one_line(err, "'pixels' has shape (2, 5, 64, 64, 3)", "3, 64, 64", "channels-last (HWC)")
    with pytest.raises(ValueError) as err:
        loss(make_batch(B, T, action_dim=3))
    assert_one_line(err, "'action' has shape (2, 5, 3)", "3-d actions", "takes 2-d")
    mixed = MixedRewardLoss(wm)
    with pytest.raises(ValueError) as err:
        mixed(TensorDict({"source": make_batch(B, T), "target": make_batch(B, T, obs_shape=(64, 64, 3))}))
    assert_one_line(err, "(2, 5, 64, 64, 3)", "channels-last")
    with pytest.raises(ValueError) as err:
        mixed(TensorDict({"source": make_batch(B, T), "target": make_batch(B, T, action_dim=3)}))
    assert_one_line(err, "MixedRewardLoss", "target actions are 3-d but the source world model takes 2-d")
    with pytest.raises(ValueError) as err:
        RewardRelabeler(wm)(make_batch(B, T, obs_shape=(3, 32, 32)))
    assert_one_line(err, "(2, 5, 3, 32, 32)", "3, 64, 64")


# =============================================================== actors
def tanh_actor(feature_dim: int, action_dim: int, in_key: str = "features") -> ProbabilisticActor:
    """A plain TorchRL ProbabilisticActor with a TanhNormal, built here (not the library's Actor)."""
    net = nn.Sequential(MLP(in_features=feature_dim, out_features=2 * action_dim, num_cells=[16]),
                        NormalParamExtractor())
    return ProbabilisticActor(TensorDictModule(net, in_keys=[in_key], out_keys=["loc", "scale"]),
                              in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=False)


@pytest.mark.parametrize("rho", [1.0, 0.0])
def test_imagine_and_actor_loss_take_a_torchrl_probabilistic_actor(tiny_agent, make_batch, rho):
    wm = tiny_agent()[0]
    actor = tanh_actor(wm.feature_dim, 2, in_key="latent")  # its own in-key name
    _, _, _, imagined = imagined_for(tiny_agent, make_batch, actor=actor)
    assert "policy_params" not in imagined.keys() and imagined["action"].shape == (B * T, H, 2)
    assert (imagined["action"].abs() <= 1).all()
    out = ActorLoss(actor, rho=rho)(imagined)
    out["loss_actor"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert torch.isfinite(out["entropy"])


def test_library_actor_needs_no_second_pass_in_the_actor_loss(tiny_agent, make_batch):
    """imagine stores the library Actor's distribution parameters; ActorLoss reuses them."""
    wm, actor, _ = tiny_agent()
    calls = []
    actor.net.register_forward_hook(lambda *args: calls.append(1))
    _, _, _, imagined = imagined_for(tiny_agent, make_batch, actor=actor)
    assert len(calls) == H and imagined["policy_params"].requires_grad
    ActorLoss(actor)(imagined)["loss_actor"].backward()
    assert len(calls) == H
    assert isinstance(actor, Actor) and actor.in_keys == ["features"]
    torch.testing.assert_close(actor.get_dist(TensorDict(features=imagined["features"][:, 0],
                                                         batch_size=[B * T])).loc,
                               actor(imagined["features"][:, 0]).loc)


def test_actors_outside_the_contract_are_refused(tiny_agent):
    wm = tiny_agent()[0]
    with pytest.raises(TypeError, match="probabilistic actor with in_keys and get_dist"):
        ActorLoss(nn.Linear(wm.feature_dim, 4))
    two_keys = tanh_actor(wm.feature_dim, 2)
    two_keys.in_keys = ["features", "other"]
    with pytest.raises(ValueError, match="it must read one entry"):
        ActorLoss(two_keys)
