"""Time, FLOPs and memory of one DreamerV2/CoWorld world-model update and one behaviour update.

Usage::

    python benchmarks/bench_update.py --preset reference --batch 16 --seq-len 16 --threads 2
    python benchmarks/bench_update.py --preset paper --repeats 5 --json /tmp/paper.json
    python benchmarks/bench_update.py --preset quick --profile          # + torch.profiler table

What is measured (medians over ``--repeats`` after ``--warmup`` untimed updates):

* world-model update: ``WorldModelLoss`` forward, backward, grad-norm clip (100), Adam step;
* behaviour update: ``imagine`` (horizon 15) from all ``B*T`` posterior states that the
  world-model loss wrote into the batch (detached, no second world-model pass),
  ``ValueLoss.targets``, ``ActorLoss`` + backward + clip + step, ``ValueLoss`` +
  backward + clip + step, target-critic updater step;
* FLOPs of each update (``torch.utils.flop_counter.FlopCounterMode``: matmuls and
  convolutions, forward and backward), the achieved GFLOP/s, and the fraction of this
  machine's fp32 matmul throughput (a 2048^3 matmul timed by the script itself);
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, peak process RSS on CPU;
* where the time goes: the world-model update timed by section (forward, with the encoder,
  RSSM observe loop, decoder and reward head inside it; backward; clip + Adam), the
  behaviour update by section (imagination, targets, actor forward / backward / step,
  critic), and the self time of one profiled update of each by op kind (convolution,
  matmul, ELU, copies, ...); ``--profile`` adds torch.profiler's top-op tables.

``--adam`` picks torch's Adam implementation (default ``fused``: same algorithm, one
kernel; the ``for-loop`` implementation is what ``torch.optim.Adam`` uses on CPU by
default). Like training (``train.keep_freed_memory``), the benchmark stops glibc from
handing freed memory back to the OS (:func:`coworld_trl.training.memory.keep_freed_memory`),
which saves page faults on the large activations; ``--no-keep-freed-memory`` measures
without it.

``--collect-env dmc/cheetah_run`` also times the collection loop: a TorchRL ``Collector``
stepping the env with the acting policy (latent filtering + actor, exploration noise) of
the preset, in env frames per second (agent steps x action repeat), next to the same env
stepped by a random policy (the env's own cost).

The module is importable: :func:`build` returns a :class:`Bench` with the modules, losses
and optimizers of a preset; :func:`world_model_update` and :func:`behaviour_update` run
one update each; :func:`make_batch` makes a synthetic TED batch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tensordict import TensorDict

if __package__ in (None, ""):  # run as a script from a checkout that is not installed
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld_trl.modules import Actor, ScalarHead, make_world_model
from coworld_trl.modules.policy import LatentPolicy, latent_state_primer
from coworld_trl.objectives import ActorLoss, ValueLoss, WorldModelLoss, imagine
from coworld_trl.training.config import PRESETS as PRESET_NAMES
from coworld_trl.training.memory import keep_freed_memory
from coworld_trl.training.config import dreamer_config

def preset_sizes(preset: str) -> dict[str, Any]:
    """Model sizes and learning rates of a library preset (``coworld_trl.training.config``)."""
    config = dreamer_config(preset)
    m, a = config.model, config.agent
    return dict(
        world_model=dict(latent=m.latent, stoch=m.stoch, classes=m.classes, deter=m.deter, hidden=m.hidden,
                         norm_gru=m.norm_gru, cnn_depth=m.cnn_depth, mlp_units=m.mlp_units,
                         reward_layers=m.reward_layers, discount_head=m.discount_head),
        actor=dict(layers=m.actor_layers, units=m.mlp_units, dist=m.actor_dist),
        critic=dict(layers=m.critic_layers, units=m.mlp_units),
        lr=dict(model=a.model_lr, actor=a.actor_lr, critic=a.critic_lr),
    )


PRESETS = tuple(PRESET_NAMES)

ADAM_EPS = 1e-5
ADAM_IMPLS = ("fused", "foreach", "for-loop")
GRAD_CLIP = 100.0
HORIZON = 15


@dataclass
class Bench:
    """Everything one update needs."""

    preset: str
    device: torch.device
    world_model: torch.nn.Module
    actor: torch.nn.Module
    critic: torch.nn.Module
    world_model_loss: WorldModelLoss
    actor_loss: ActorLoss
    value_loss: ValueLoss
    target_updater: Any
    model_opt: torch.optim.Optimizer
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    horizon: int = HORIZON
    grad_clip: float = GRAD_CLIP
    autocast: bool = False
    compiled: dict[str, Any] = field(default_factory=dict)

    def autocast_ctx(self):
        if not self.autocast:
            return contextlib.nullcontext()
        dtype = torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def build(preset: str = "reference", action_dim: int = 6, device: str | torch.device = "cpu", *,
          horizon: int = HORIZON, autocast: bool = False, adam: str = "fused") -> Bench:
    """Build the world model, actor, critic, losses and Adam optimizers of ``preset``.

    ``adam`` picks torch's Adam implementation (same algorithm): ``"fused"`` (one kernel
    for all parameters; about 4x faster than the others on CPU), ``"foreach"`` or
    ``"for-loop"``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; use one of {sorted(PRESETS)}.")
    cfg = preset_sizes(preset)
    device = torch.device(device)
    world_model = make_world_model(action_dim=action_dim, **cfg["world_model"]).to(device)
    feature_dim = world_model.feature_dim
    actor = Actor(feature_dim, action_dim, **cfg["actor"]).to(device)
    critic = ScalarHead(feature_dim, **cfg["critic"]).to(device)
    world_model_loss = WorldModelLoss(world_model)
    actor_loss = ActorLoss(actor)
    value_loss = ValueLoss(critic)
    target_updater = value_loss.make_target_updater(interval=100)
    lr = cfg["lr"]
    if adam not in ADAM_IMPLS:
        raise ValueError(f"adam={adam!r} is unknown; use one of {ADAM_IMPLS}.")
    kw: dict[str, Any] = dict(eps=ADAM_EPS)
    if adam == "fused":
        kw["fused"] = True
    else:
        kw["foreach"] = adam == "foreach"
    model_opt = torch.optim.Adam(world_model.parameters(), lr=lr["model"], **kw)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=lr["actor"], **kw)
    # The value loss holds the critic's parameters functionally (TensorDictParams).
    critic_opt = torch.optim.Adam(value_loss.value_network_params.values(True, True), lr=lr["critic"], **kw)
    return Bench(preset, device, world_model, actor, critic, world_model_loss, actor_loss, value_loss,
                 target_updater, model_opt, actor_opt, critic_opt, horizon=horizon, autocast=autocast)


def make_batch(batch: int, seq_len: int, action_dim: int = 6, device: str | torch.device = "cpu",
               *, generator: torch.Generator | None = None) -> TensorDict:
    """Synthetic ``[B, T]`` TED batch: uint8 pixels, actions in [-1, 1], rewards, no terminations."""
    g = generator
    shape = (batch, seq_len)
    is_init = torch.zeros(*shape, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict(
        pixels=torch.randint(0, 256, (*shape, 3, 64, 64), dtype=torch.uint8, generator=g),
        action=torch.rand(*shape, action_dim, generator=g) * 2 - 1,
        is_init=is_init,
        next=TensorDict(reward=torch.randn(*shape, 1, generator=g),
                        terminated=torch.zeros(*shape, 1, dtype=torch.bool), batch_size=shape),
        batch_size=shape,
    ).to(device)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor], clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    opt.step()


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def world_model_update(bench: Bench, batch: TensorDict) -> TensorDict:
    """Forward + backward + clip + Adam step of the world model; writes latents into ``batch``."""
    with bench.autocast_ctx():
        losses = bench.world_model_loss(batch)
        loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    _step(bench.model_opt, loss, _params(bench.model_opt), bench.grad_clip)
    return losses.detach()


def imagine_from(bench: Bench, batch: TensorDict) -> TensorDict:
    """Imagined ``[B*T, H]`` trajectories from the (detached) posterior latents in ``batch``."""
    with bench.autocast_ctx():
        return imagine(bench.world_model, bench.actor, batch.get("stoch").detach(), batch.get("deter").detach(),
                       horizon=bench.horizon)


def behaviour_update(bench: Bench, batch: TensorDict) -> TensorDict:
    """Imagination, lambda-returns, actor and critic steps and the slow-critic updater step."""
    imagined = imagine_from(bench, batch)
    with bench.autocast_ctx():
        imagined = bench.value_loss.targets(imagined)
        actor_losses = bench.actor_loss(imagined)
    _step(bench.actor_opt, actor_losses["loss_actor"], _params(bench.actor_opt), bench.grad_clip)
    with bench.autocast_ctx():
        value_losses = bench.value_loss(imagined)
    _step(bench.critic_opt, value_losses["loss_value"], _params(bench.critic_opt), bench.grad_clip)
    bench.target_updater.step()
    return TensorDict(**actor_losses.detach(), **value_losses.detach().exclude("value_target"))


# --------------------------------------------------------------------------- measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``fn`` for ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, which cannot walk TensorDictParams."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs (forward and backward) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Achieved fp32 FLOP/s of an ``n x n @ n x n`` matmul (median of ``repeats``)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = time_fn(lambda: a @ b, device, repeats, warmup=2)
    return 2 * n**3 / statistics.median(times)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # kB on Linux, bytes on macOS


class _Timer:
    """Accumulates wall-clock time of named sections (synchronising on CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.totals = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        _sync(self.device)
        start = time.perf_counter()
        yield
        _sync(self.device)
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def _timed_modules(timer: "_Timer", modules: dict[str, torch.nn.Module]):
    """Time each module's forward calls (inclusive) under ``timer``."""
    handles, starts = [], {}
    for name, module in modules.items():
        def pre(mod, args, name=name):
            _sync(timer.device)
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            _sync(timer.device)
            timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - starts.pop(name)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _timed_method(timer: "_Timer", obj: Any, method: str, name: str):
    """Time calls of ``obj.method`` (an instance attribute shadows the class method meanwhile)."""
    original = getattr(obj, method)

    def wrapped(*args, **kwargs):
        with timer(name):
            return original(*args, **kwargs)

    setattr(obj, method, wrapped)
    try:
        yield
    finally:
        delattr(obj, method)


def world_model_breakdown(bench: Bench, batch: TensorDict, timer: _Timer) -> None:
    """One world-model update (the real loss) with its phases timed."""
    model = bench.world_model
    parts = {"wm: fwd encoder": model.encoder, "wm: fwd decoder": model.decoder,
             "wm: fwd reward head": model.reward_head}
    with timer("wm: forward (total)"), _timed_modules(timer, parts), \
            _timed_method(timer, model.rssm, "observe", "wm: fwd rssm observe loop"), bench.autocast_ctx():
        losses = bench.world_model_loss(batch)
        loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    opt = bench.model_opt
    with timer("wm: backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    with timer("wm: clip + adam"):
        torch.nn.utils.clip_grad_norm_(_params(opt), bench.grad_clip, foreach=True)
        opt.step()


def behaviour_breakdown(bench: Bench, batch: TensorDict, timer: _Timer) -> None:
    with timer("bh: imagine forward"):
        imagined = imagine_from(bench, batch)
    with timer("bh: value targets"), bench.autocast_ctx():
        imagined = bench.value_loss.targets(imagined)
    with timer("bh: actor loss forward"), bench.autocast_ctx():
        actor_losses = bench.actor_loss(imagined)
    with timer("bh: actor backward (through imagination)"):
        bench.actor_opt.zero_grad(set_to_none=True)
        actor_losses["loss_actor"].backward()
    with timer("bh: actor clip + adam"):
        torch.nn.utils.clip_grad_norm_(_params(bench.actor_opt), bench.grad_clip, foreach=True)
        bench.actor_opt.step()
    with timer("bh: critic fwd + bwd + clip + adam"):
        with bench.autocast_ctx():
            value_losses = bench.value_loss(imagined)
        _step(bench.critic_opt, value_losses["loss_value"], _params(bench.critic_opt), bench.grad_clip)
        bench.target_updater.step()


def apply_compile(bench: Bench, what: str) -> None:
    """``torch.compile`` the ``forward`` of parts of the models in place (compilation happens lazily)."""
    wm = bench.world_model
    targets = {"encoder": wm.encoder, "decoder": wm.decoder, "gru": wm.rssm.gru, "actor": bench.actor.net,
               "critic": bench.critic.net}
    for part in filter(None, what.split(",")):
        if part == "img_step":
            wm.rssm.img_step = torch.compile(wm.rssm.img_step)
        elif part in targets:
            targets[part].forward = torch.compile(targets[part].forward)
        else:
            raise ValueError(f"--compile part {part!r} is unknown; use {sorted([*targets, 'img_step'])}.")
        bench.compiled[part] = True


_OP_KINDS = (
    ("convolution", ("conv", "deconv")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("elu", ("elu",)),
    ("copies/layout", ("aten::copy_", "aten::clone", "aten::contiguous", "pixel_shuffle", "pixel_unshuffle",
                       "aten::cat", "aten::stack")),
    ("optimizer", ("adam", "foreach", "lerp", "addcdiv", "addcmul")),
)


def _op_kind(name: str) -> str:
    low = name.lower()
    for kind, needles in _OP_KINDS:
        if any(n in low for n in needles):
            return kind
    return "other elementwise/small"


def profile_update(fn: Callable[[], Any], device: torch.device, top: int = 15) -> tuple[str, dict[str, float]]:
    """Profile one call: a table of the top ops by self time, and self time (s) per op kind."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    averages = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kinds: dict[str, float] = {}
    for event in averages:
        kinds[_op_kind(event.key)] = kinds.get(_op_kind(event.key), 0.0) + getattr(event, attr, 0.0) / 1e6
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return averages.table(sort_by=sort, row_limit=top), kinds


def collection_frames_per_s(bench: Bench, env_name: str, steps: int) -> dict[str, float]:
    """Env frames/s of a TorchRL ``Collector`` loop, with the acting policy and with a random one."""
    from torchrl.collectors import Collector

    from coworld_trl.envs import env_info, make_env

    result = {}
    for label, random_policy in (("policy", False), ("random", True)):
        env = make_env(env_name, seed=0)
        env.append_transform(latent_state_primer(bench.world_model))
        policy = LatentPolicy(bench.world_model, bench.actor, expl_noise=0.3)
        collector = Collector(env, policy, frames_per_batch=steps // 4, total_frames=steps + steps // 4,
                              init_random_frames=steps + steps // 4 if random_policy else 0)
        batches = iter(collector)
        next(batches)  # warm-up batch: env start, first renders, lazy allocations
        start = time.perf_counter()
        collected = sum(batch.numel() for batch in batches)
        elapsed = time.perf_counter() - start
        collector.shutdown()
        result[label] = collected * env_info(env_name).action_repeat / elapsed
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    bench = build(args.preset, args.action_dim, device, autocast=args.autocast, adam=args.adam)
    compile_s = None
    if args.compile:
        apply_compile(bench, args.compile)
    batch = make_batch(args.batch, args.seq_len, args.action_dim, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    wm = lambda: world_model_update(bench, batch)  # noqa: E731
    bh = lambda: behaviour_update(bench, batch)  # noqa: E731
    if args.compile:
        start = time.perf_counter()
        wm(), bh(), wm(), bh()
        _sync(device)
        compile_s = time.perf_counter() - start
    # Interleave the two updates like training does; time each separately.
    for _ in range(args.warmup):
        wm(), bh()
    _sync(device)
    wm_times, bh_times = [], []
    for _ in range(args.repeats):
        wm_times += time_fn(wm, device, 1, 0)
        bh_times += time_fn(bh, device, 1, 0)
    peak_mem = peak_memory_bytes(device)

    wm_flops = count_flops(wm)
    bh_flops = count_flops(bh)
    peak = matmul_peak(device)
    wm_s, bh_s = statistics.median(wm_times), statistics.median(bh_times)

    timer = _Timer(device)
    breakdown_reps = max(1, min(3, args.repeats))
    for _ in range(breakdown_reps):
        world_model_breakdown(bench, batch, timer)
        behaviour_breakdown(bench, batch, timer)
    breakdown = {k: v / breakdown_reps for k, v in timer.totals.items()}

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    result = dict(
        preset=args.preset, batch=args.batch, seq_len=args.seq_len, device=str(device),
        threads=torch.get_num_threads(), compile=args.compile or None, autocast=args.autocast, adam=args.adam,
        keep_freed_memory=kept,
        torch=torch.__version__, machine=platform.processor() or platform.machine(),
        params=dict(world_model=n_params(bench.world_model), actor=n_params(bench.actor),
                    critic=n_params(bench.critic)),
        world_model_update_s=wm_s, behaviour_update_s=bh_s, total_s=wm_s + bh_s,
        world_model_update_times=wm_times, behaviour_update_times=bh_times,
        world_model_flops=wm_flops, behaviour_flops=bh_flops,
        world_model_gflops_per_s=wm_flops / wm_s / 1e9, behaviour_gflops_per_s=bh_flops / bh_s / 1e9,
        matmul_peak_gflops_per_s=peak / 1e9,
        world_model_fraction_of_matmul_peak=wm_flops / wm_s / peak,
        behaviour_fraction_of_matmul_peak=bh_flops / bh_s / peak,
        peak_memory_bytes=peak_mem,
        peak_memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        compile_s=compile_s, breakdown_s=breakdown,
    )
    if args.collect_env:
        result["collect_env"] = args.collect_env
        result["collect_frames_per_s"] = collection_frames_per_s(bench, args.collect_env, args.collect_steps)
    table_wm, result["ops_world_model"] = profile_update(wm, device)
    table_bh, result["ops_behaviour"] = profile_update(bh, device)
    if args.profile:
        result["profile_world_model"], result["profile_behaviour"] = table_wm, table_bh
    return result


def report(r: dict[str, Any]) -> str:
    lines = [
        f"preset={r['preset']} batch={r['batch']} seq_len={r['seq_len']} device={r['device']} "
        f"threads={r['threads']} adam={r['adam']} compile={r['compile']} autocast={r['autocast']} "
        f"keep_freed_memory={r['keep_freed_memory']} torch={r['torch']}",
        f"params: world model {r['params']['world_model'] / 1e6:.2f}M, actor {r['params']['actor'] / 1e6:.2f}M, "
        f"critic {r['params']['critic'] / 1e6:.2f}M",
        "",
        f"{'update':<14}{'median s':>10}{'min s':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'of peak':>9}",
    ]
    for name, key, flops in (("world model", "world_model", r["world_model_flops"]),
                             ("behaviour", "behaviour", r["behaviour_flops"])):
        s = r[f"{key}_update_s"]
        lines.append(f"{name:<14}{s:>10.4f}{min(r[f'{key}_update_times']):>9.4f}{flops / 1e9:>9.2f}"
                     f"{r[f'{key}_gflops_per_s']:>9.1f}{r[f'{key}_fraction_of_matmul_peak']:>9.1%}")
    lines.append(f"{'total':<14}{r['total_s']:>10.4f}")
    lines += [
        f"fp32 matmul peak (2048^3, same threads): {r['matmul_peak_gflops_per_s']:.1f} GFLOP/s",
        f"peak memory ({r['peak_memory_kind']}): {r['peak_memory_bytes'] / 2**20:.0f} MiB",
    ]
    if "collect_frames_per_s" in r:
        fps = r["collect_frames_per_s"]
        lines.append(f"collection loop on {r['collect_env']} (env frames/s): with the acting policy "
                     f"{fps['policy']:.1f}, random policy {fps['random']:.1f}")
    if r["compile_s"] is not None:
        lines.append(f"compile + first two updates: {r['compile_s']:.1f} s")
    lines += ["", f"{'breakdown (one update, timed sections)':<46}{'s':>8}{'share':>8}"]
    top = {k: v for k, v in r["breakdown_s"].items() if ": fwd " not in k}
    wm_total = sum(v for k, v in top.items() if k.startswith("wm:"))
    bh_total = sum(v for k, v in top.items() if k.startswith("bh:"))
    subs = [k for k in r["breakdown_s"] if ": fwd " in k]
    order = []
    for k in top:
        order += [k] + (subs if k == "wm: forward (total)" else [])
    for k in order:
        v = r["breakdown_s"][k]
        total = wm_total if k.startswith("wm:") else bh_total
        label = "    " + k[4:].replace("fwd ", "") if ": fwd " in k else k
        lines.append(f"{label:<46}{v:>8.4f}{v / total:>8.1%}")
    for key, title in (("ops_world_model", "world model"), ("ops_behaviour", "behaviour")):
        if key in r:
            cats = r[key]
            total = sum(cats.values())
            lines.append(f"{title} self time by op kind (torch.profiler): " + ", ".join(
                f"{k} {v / total:.0%}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1])))
    for key in ("profile_world_model", "profile_behaviour"):
        if key in r:
            lines += ["", key.replace("_", " ") + " (top ops by self time):", r[key]]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--compile", nargs="?", const="encoder,decoder", default="",
                   help="torch.compile parts: comma list of encoder,decoder,gru,img_step,actor,critic "
                        "(bare flag: encoder,decoder)")
    p.add_argument("--autocast", action="store_true", help="bfloat16 autocast around the forward passes")
    p.add_argument("--adam", choices=ADAM_IMPLS, default="fused",
                   help="torch Adam implementation (same algorithm); fused is fastest on CPU")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory (no mmap, no trim), as training does by default")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler top ops")
    p.add_argument("--collect-env", default="", help="also time the collection loop on this env (e.g. dmc/cheetah_run)")
    p.add_argument("--collect-steps", type=int, default=400, help="agent steps timed in the collection loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None, help="write the results to this path")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
