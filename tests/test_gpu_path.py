"""The GPU path: compiled updates (and CUDA graphs) equal eager ones, the device-side finite
check, the device-resident replays give the default path's sequences, checkpoints move between
CUDA and the CPU, and the switches' config checks.

CPU tests run here; ``@pytest.mark.gpu`` ones need CUDA (``benchmarks/gpu_check.sh`` runs them).
Compiling even a tiny agent takes a minute on a shared 2-core CPU, so the compile tests are
``slow``: the ``aot_eager`` backend checks the tracing (one graph per update, no host sync
inside, equal numbers), inductor the generated code.
"""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from tensordict import TensorDict

from coworld_trl.agents import AgentConfig, CouplingConfig, ModelConfig, make_coworld_agent, make_dreamer_agent
from coworld_trl.errors import ConfigError
from coworld_trl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from coworld_trl.training.config import dreamer_config, validate
from coworld_trl.training.replay import OnlineReplay
from test_data import import_npz, write_npz_dir
from test_replay import steps

TINY = ModelConfig(stoch=4, classes=4, deter=16, hidden=16, cnn_depth=4, mlp_units=16, reward_layers=1,
                   actor_layers=1, critic_layers=1)
ACTORS = {dist: dataclasses.replace(TINY, actor_dist=dist) for dist in ("trunc_normal", "tanh_normal")}
SHORT = AgentConfig(horizon=2)
B, T = 2, 3
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def fallback_random():
    """Inductor draws random numbers with its own generator unless told to call eager's ops."""
    import torch._inductor.config as inductor

    previous, inductor.fallback_random = inductor.fallback_random, True
    yield
    inductor.fallback_random = previous


def dreamer(model=TINY, device="cpu", **kwargs):
    torch.manual_seed(0)
    return make_dreamer_agent(model, SHORT, action_dim=2, device=device, **kwargs)


def run_updates(agent, batches, device="cpu") -> list[TensorDict]:
    torch.manual_seed(1)
    return [agent.update(batch.clone().to(device)) for batch in batches]


def assert_same_run(agent, expected, metrics, expected_metrics, *, rtol=1e-4, atol=1e-5):
    state, reference = agent.state_dict(), expected.state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(state[key].cpu(), value.cpu(), rtol=rtol, atol=atol, msg=key)
    for got, want in zip(metrics, expected_metrics):
        assert set(got.keys()) == set(want.keys())
        for key in want.keys():
            torch.testing.assert_close(got[key].cpu(), want[key].cpu(), rtol=rtol, atol=atol, msg=key)


def graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


# ------------------------------------------------------------------ compiled updates (CPU)
@pytest.mark.slow
@pytest.mark.parametrize("actor_dist", list(ACTORS))
def test_compiled_updates_trace_as_one_graph_each_and_match_eager(make_batch, actor_dist):
    """aot_eager: world-model and behaviour updates each one graph (no graph break, so no host
    sync inside; the truncated Normal is the library's sync-free one), three updates equal to
    eager; a NaN batch is skipped on the device."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    batches = [make_batch(B, T) for _ in range(3)]
    model = ACTORS[actor_dist]
    eager, compiled = dreamer(model), dreamer(model, nan_policy="skip")
    compiled.compile_updates(backend="aot_eager")
    expected = run_updates(eager, batches)
    got = run_updates(compiled, batches)
    assert graph_breaks() == 0 and torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert_same_run(compiled, eager, got, expected)

    before = {k: v.clone() for k, v in compiled.world_model_loss.state_dict().items()}
    bad = make_batch(B, T)
    bad["next", "reward"][0, 1] = float("nan")
    metrics = compiled.update(bad)
    assert metrics["skipped_world_model"].item() == 1.0 and metrics["skipped_actor"].item() == 0.0
    assert all(torch.equal(before[k], v) for k, v in compiled.world_model_loss.state_dict().items())
    compiled.nan_policy = "raise"
    from coworld_trl.agents import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="loss_reward=nan"):
        compiled.update(bad)
    assert all(torch.equal(before[k], v) for k, v in compiled.world_model_loss.state_dict().items())


@pytest.mark.slow
def test_compiled_coworld_iteration_matches_eager(make_batch):
    """aot_eager: a CoWorld iteration (target update with Eq. 3 and Eq. 6, relabelled source
    update) twice, equal to eager, with no recompilation on the second."""
    torch._dynamo.reset()

    def agent(**kwargs):
        torch.manual_seed(0)
        return make_coworld_agent(TINY, SHORT, CouplingConfig(), action_dim=2, eta_steps_default=10, **kwargs)

    eager, compiled = agent(), agent()
    for dreamer_agent in (compiled.target, *compiled.sources):
        dreamer_agent.compile_updates(backend="aot_eager")
    batches = [(make_batch(B, T), make_batch(B, T)) for _ in range(2)]

    def iterations(coworld):
        torch.manual_seed(1)
        return [coworld.target_update(target.clone()).update(coworld.source_update(source.clone(), target.clone()))
                for target, source in batches]

    expected = iterations(eager)
    torch._dynamo.utils.counters.clear()
    got = iterations(compiled)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graph_breaks() == 0 and graphs == 4, graphs  # world model + behaviour, target and source
    assert_same_run(compiled, eager, got, expected)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile (inductor) needs a C++ compiler")
def test_inductor_compiled_updates_match_eager(make_batch, fallback_random):
    """The default backend (inductor's C++ code on the CPU), the default (truncated-normal) actor."""
    torch._dynamo.reset()
    batches = [make_batch(B, T) for _ in range(2)]
    eager, compiled = dreamer(), dreamer(compile=True)
    assert_same_run(compiled, eager, run_updates(compiled, batches), run_updates(eager, batches))


def test_cuda_graphs_are_refused_off_cuda():
    with pytest.raises(ValueError, match="cuda_graphs=True needs the agent on a CUDA device") as err:
        dreamer(cuda_graphs=True)
    assert "\n" not in str(err.value)
    config = dreamer_config("quick", train={"device": "cpu", "cuda_graphs": True, "compile": True})
    with pytest.raises(ConfigError, match="train.cuda_graphs=true needs a CUDA device"):
        validate(config)
    with pytest.raises(ConfigError, match="set train.compile=true too"):
        validate(dreamer_config("quick", train={"device": "cpu", "cuda_graphs": True}))


# ------------------------------------------------------------------ replays on the device
def test_dataset_device_sampler_draws_the_default_sequences(tmp_path):
    """Same seed, same sequences, dtypes and sampler flags as the memory-mapped path."""
    dataset = import_npz(write_npz_dir(tmp_path / "src", lengths=(9, 15, 30, 12)), tmp_path / "ds")
    default = dataset.replay_buffer(batch_size=4, seq_len=6)
    on_device = dataset.device_sampler(batch_size=4, seq_len=6, device="cpu")
    for seed in range(5):
        torch.manual_seed(seed)
        expected = default.sample()
        torch.manual_seed(seed)
        got = on_device.sample(4 * 6)
        assert set(got.keys(True, True)) == set(expected.keys(True, True))
        for key in expected.keys(True, True):
            assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("whole_episodes", [True, False])
def test_online_replay_on_device_draws_the_default_sequences(tmp_path, whole_episodes):
    """Rows mirrored on the device as they are stored (also across a checkpoint and resume) give
    the same sequences for a seed as the files."""
    kwargs = dict(capacity=200, seq_len=5, whole_episodes=whole_episodes)
    default = OnlineReplay(tmp_path / "a", **kwargs)
    on_device = OnlineReplay(tmp_path / "b", device="cpu", **kwargs)
    for batch in (steps([12, 20, 7], ends=(0, 1)), steps([9, 14], first_step=7, ends=(0, 1))):
        default.extend(batch)
        on_device.extend(batch)

    def same(replay_a, replay_b):
        for seed in range(5):
            torch.manual_seed(seed)
            expected = replay_a.sample(3)
            torch.manual_seed(seed)
            got = replay_b.sample(3)
            assert got.device == torch.device("cpu") and got.shape == (3, 5)
            for key in expected.keys(True, True):
                assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key

    same(default, on_device)
    resumed = OnlineReplay(tmp_path / "b", device="cpu", **kwargs)
    resumed.load_state_dict(on_device.state_dict())
    same(default, resumed)


def test_replays_keep_their_rows_and_batches_on_the_given_device(tmp_path):
    """The "meta" device stands in for a GPU on the CPU: rows, indices and batches all live
    there (shapes and dtypes of the default path), nothing falls back to the host."""
    dataset = import_npz(write_npz_dir(tmp_path / "src", lengths=(9, 15)), tmp_path / "ds")
    expected = dataset.replay_buffer(batch_size=2, seq_len=6).sample()
    got = dataset.device_sampler(batch_size=2, seq_len=6, device="meta").sample(12)
    replay = OnlineReplay(tmp_path / "r", capacity=100, seq_len=5, device="meta")
    replay.extend(steps([12, 20], ends=(0, 1)))
    assert replay.device_rows().device == torch.device("meta")
    reference = OnlineReplay(tmp_path / "s", capacity=100, seq_len=5)
    reference.extend(steps([12, 20], ends=(0, 1)))
    for got, expected in ((got, expected), (replay.sample(3), reference.sample(3))):
        assert got.device == torch.device("meta") and got.shape == expected.shape
        for key in expected.keys(True, True):
            assert got[key].device == torch.device("meta") and got[key].dtype == expected[key].dtype, key
            assert got[key].shape == expected[key].shape, key


# ------------------------------------------------------------------ CUDA
def _cuda_agent(make_batch, **kwargs):
    agent = dreamer(device="cuda", **kwargs)
    return agent, [make_batch(B, T) for _ in range(2)]


@pytest.mark.gpu
@cuda
def test_bf16_autocast_update_is_close_to_fp32_on_cuda(make_batch):
    """From the same weights, batch and seed, bf16 autocast's losses are close to fp32's; its
    weights, gradients and Adam state stay fp32, and its metrics are finite."""
    batch = make_batch(B, T)
    fp32, bf16 = dreamer(device="cuda"), dreamer(device="cuda", autocast=True)
    torch.manual_seed(1)
    expected = fp32.update(batch.clone().to("cuda"))
    torch.manual_seed(1)
    got = bf16.update(batch.clone().to("cuda"))
    for key in ("loss_image", "loss_reward", "loss_kl", "loss_actor", "loss_value"):
        torch.testing.assert_close(got[key].float(), expected[key], rtol=5e-2, atol=5e-2, msg=key)
    assert all(torch.isfinite(value).all() for value in got.values())
    for param in bf16.parameters():
        assert param.dtype == torch.float32 and (param.grad is None or param.grad.dtype == torch.float32)
    assert all(s["exp_avg"].dtype == torch.float32 for opt in bf16.optimizers.values() for s in opt.state.values())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["compiled", "cuda_graphs"])
def test_compiled_updates_match_eager_on_cuda(make_batch, fallback_random, cuda_graphs):
    torch._dynamo.reset()
    eager, batches = _cuda_agent(make_batch)
    compiled, _ = _cuda_agent(make_batch, compile=True, cuda_graphs=cuda_graphs)
    expected = run_updates(eager, batches + batches, device="cuda")
    got = run_updates(compiled, batches + batches, device="cuda")
    assert_same_run(compiled, eager, got, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_nan_is_skipped_on_the_device_on_cuda(make_batch):
    agent, batches = _cuda_agent(make_batch, nan_policy="skip")
    bad = batches[0].clone()
    bad["next", "reward"][0, 1] = float("nan")
    before = {k: v.clone() for k, v in agent.world_model_loss.state_dict().items()}
    metrics = agent.update(bad.to("cuda"))
    assert metrics["skipped_world_model"].item() == 1.0
    assert all(torch.equal(before[k], v) for k, v in agent.world_model_loss.state_dict().items())


def _round_trip(make_batch, source: str, target: str, tmp_path):
    """Train on ``source``, checkpoint (agent + RNG), resume on ``target``: same weights, the
    optimisers' state on ``target``, and the CUDA RNG restored when both sides have it."""
    agent = dreamer(device=source)
    agent.update(make_batch(B, T).to(source))
    save_checkpoint(tmp_path / "ckpt.pt", {"agent": agent.checkpoint_state(), "rng": rng_state()})
    cuda_draw = torch.rand(3, device="cuda")
    cpu_draw = torch.rand(3)
    state = load_checkpoint(tmp_path / "ckpt.pt", map_location=target, resume=True)
    resumed = dreamer(device=target)
    resumed.load_checkpoint_state(state["agent"])
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), cpu_draw) and torch.equal(torch.rand(3, device="cuda"), cuda_draw)
    for key, value in agent.state_dict().items():
        assert torch.equal(resumed.state_dict()[key].cpu(), value.cpu()), key
    for opt in resumed.optimizers.values():
        assert all(s["exp_avg"].device.type == torch.device(target).type for s in opt.state.values())
    metrics = resumed.update(make_batch(B, T).to(target))
    assert torch.isfinite(metrics["loss_image"]).item()


@pytest.mark.gpu
@cuda
def test_checkpoint_written_on_cuda_resumes_on_cpu(make_batch, tmp_path):
    _round_trip(make_batch, "cuda", "cpu", tmp_path)


@pytest.mark.gpu
@cuda
def test_checkpoint_written_on_cpu_resumes_on_cuda(make_batch, tmp_path):
    _round_trip(make_batch, "cpu", "cuda", tmp_path)


@pytest.mark.gpu
@cuda
def test_replays_on_cuda_draw_the_default_sequences(tmp_path):
    dataset = import_npz(write_npz_dir(tmp_path / "src", lengths=(9, 15, 30, 12)), tmp_path / "ds")
    default = dataset.replay_buffer(batch_size=4, seq_len=6)
    on_device = dataset.device_sampler(batch_size=4, seq_len=6, device="cuda")
    torch.manual_seed(0)
    expected = default.sample()
    torch.manual_seed(0)
    got = on_device.sample(24)
    assert got.device.type == "cuda"
    for key in expected.keys(True, True):
        assert torch.equal(got[key].cpu(), expected[key]), key
    replay = OnlineReplay(tmp_path / "r", capacity=100, seq_len=5, device="cuda")
    reference = OnlineReplay(tmp_path / "s", capacity=100, seq_len=5)
    for r in (replay, reference):
        r.extend(steps([12, 20], ends=(0, 1)))
    torch.manual_seed(0)
    expected = reference.sample(3)
    torch.manual_seed(0)
    got = replay.sample(3)
    assert got.device.type == "cuda" and torch.equal(got["pixels"].cpu(), expected["pixels"])
