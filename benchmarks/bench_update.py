"""Time, FLOPs and memory of the agents' own updates (DreamerV2, or one CoWorld iteration).

DreamerV2's world-model and behaviour updates, or with ``--coworld`` one CoWorld iteration.

Usage::

    python benchmarks/bench_update.py --preset reference --batch 16 --seq-len 16 --threads 2
    python benchmarks/bench_update.py --preset paper --repeats 5 --json /tmp/paper.json
    python benchmarks/bench_update.py --preset reference --coworld      # target + source update
    python benchmarks/bench_update.py --preset quick --profile          # + torch.profiler table

What is timed is the code training runs: the agent of ``--preset`` built by
:func:`coworld_trl.agents.make_dreamer_agent` (or :func:`~coworld_trl.agents.make_coworld_agent`
with the default :class:`~coworld_trl.agents.CouplingConfig`), on a synthetic ``[B, T]`` TED
batch; medians over ``--repeats`` after ``--warmup`` untimed iterations, the updates
interleaved as training interleaves them:

* DreamerV2: ``DreamerV2Agent.update_world_model`` (Eq. 2: forward, backward, grad-norm
  clip, fused Adam) and ``DreamerV2Agent.update_behaviour`` (imagination from the ``B*T``
  posterior states the world-model update left in the batch, lambda-returns, actor and
  critic steps, slow-critic updater);
* ``--coworld``: ``CoWorldAgent.target_update`` (world model with state alignment, Eq. 3;
  actor; critic with the min-max constraint, Eq. 6) and ``CoWorldAgent.source_update`` on
  a source batch with the target batch relabelled (Eq. 4-5), then the source's behaviour.

Also reported: FLOPs of each update (``torch.utils.flop_counter.FlopCounterMode``: matmuls
and convolutions, forward and backward), the achieved GFLOP/s and the fraction of this
machine's fp32 matmul throughput (a 2048^3 matmul timed by the script); peak memory
(``torch.cuda.max_memory_allocated`` on CUDA, peak process RSS on CPU); where the time goes,
measured with hooks on the agent's own objects (no copy of the update): each optimiser's
phases (forward up to its ``zero_grad``, backward up to the last gradient accumulated, grad
clipping, Adam step) and, inside the forwards, the encoder, RSSM observe loop, decoder,
reward head, imagination and value targets; and the self time of one profiled update by op
kind (``--profile`` adds torch.profiler's top-op tables).

Like training (``train.keep_freed_memory``), the benchmark stops glibc from handing freed
memory back to the OS (:func:`coworld_trl.training.memory.keep_freed_memory`);
``--no-keep-freed-memory`` measures without it.

``--collect-env dmc/cheetah_run`` also times the collection loop: a TorchRL ``Collector``
stepping the env with the agent's acting policy (latent filtering + actor), in env frames per
second (agent steps x action repeat), next to the same env stepped by a random policy.

``--variants eager,compiled,cuda_graphs,bf16`` times the same updates under each of the GPU
path's switches instead (``+`` combines them: ``cuda_graphs+bf16``; ``tanh`` swaps in the
tanh-normal actor), each on a freshly built agent: median update times, compile time (the first
two iterations), peak memory and the speedup over ``eager``; no FLOP count, hooks or profiler
(hooks would recompile the compiled functions). Every variant is written to ``--json`` as soon
as it is measured, and a variant that fails records its one-line error, so a run cut short by a
time limit keeps what it measured::

    python benchmarks/bench_update.py --device cuda --preset paper --batch 50 --seq-len 50 \
        --coworld --variants eager,compiled,cuda_graphs,bf16,cuda_graphs+bf16 --json paper.json
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
from typing import Any, Callable

import torch
from tensordict import TensorDict

from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld_trl.agents import CouplingConfig, CoWorldAgent, DreamerV2Agent, make_coworld_agent, make_dreamer_agent
from coworld_trl.training.config import PRESETS, dreamer_config
from coworld_trl.training.memory import keep_freed_memory

OBS_SHAPE = (3, 64, 64)
COMPILE_PARTS = ("encoder", "decoder", "gru", "img_step", "actor", "critic")


def make_batch(batch: int, seq_len: int, action_dim: int = 6, device: str | torch.device = "cpu",
               *, generator: torch.Generator | None = None) -> TensorDict:
    """Synthetic ``[B, T]`` TED batch: uint8 pixels, actions in [-1, 1], rewards, no terminations."""
    g = generator
    shape = (batch, seq_len)
    is_init = torch.zeros(*shape, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict(
        pixels=torch.randint(0, 256, (*shape, *OBS_SHAPE), dtype=torch.uint8, generator=g),
        action=torch.rand(*shape, action_dim, generator=g) * 2 - 1,
        is_init=is_init,
        next=TensorDict(reward=torch.randn(*shape, 1, generator=g),
                        terminated=torch.zeros(*shape, 1, dtype=torch.bool), batch_size=shape),
        batch_size=shape,
    ).to(device)


def build(args: argparse.Namespace, device: torch.device, *, autocast: bool | None = None,
          actor_dist: str | None = None) -> DreamerV2Agent | CoWorldAgent:
    """The agent of ``args.preset`` (a DreamerV2 agent, or CoWorld with one source)."""
    config = dreamer_config(args.preset, model={"actor_dist": actor_dist} if actor_dist else {})
    autocast = args.autocast if autocast is None else autocast
    if args.coworld:
        return make_coworld_agent(config.model, config.agent, CouplingConfig(), action_dim=args.action_dim,
                                  num_sources=1, obs_shape=OBS_SHAPE, device=device, autocast=autocast,
                                  eta_steps_default=100_000)  # eta's value does not change the update's cost
    return make_dreamer_agent(config.model, config.agent, action_dim=args.action_dim, obs_shape=OBS_SHAPE,
                              device=device, autocast=autocast)


def dreamer_agents(agent: DreamerV2Agent | CoWorldAgent) -> dict[str, DreamerV2Agent]:
    """The DreamerV2 agents inside ``agent``, by role."""
    if isinstance(agent, CoWorldAgent):
        return {"target": agent.target, "source": agent.sources[0]}
    return {"": agent}


def updates(agent: DreamerV2Agent | CoWorldAgent, batches: dict[str, TensorDict]) -> dict[str, Callable[[], Any]]:
    """The timed updates, in training order: name -> zero-argument call of the agent's method."""
    if isinstance(agent, CoWorldAgent):
        return {
            "target": lambda: agent.target_update(batches["target"]),
            "source": lambda: agent.source_update(batches["source"], batches["target"]),
        }
    return {
        "world_model": lambda: agent.update_world_model(batches["batch"]),
        "behaviour": lambda: agent.update_behaviour(batches["batch"]),  # from the latents the update left
    }


def apply_compile(agent: DreamerV2Agent | CoWorldAgent, what: str) -> list[str]:
    """``torch.compile`` the ``forward`` of parts of every DreamerV2 agent's networks (compiled lazily).

    The forwards are compiled rather than the modules' calls so that the timing hooks stay
    outside the compiled code (hooks added to a compiled call would recompile it).
    """
    parts = [part for part in what.split(",") if part]
    for part in parts:
        if part not in COMPILE_PARTS:
            raise ValueError(f"--compile part {part!r} is unknown; use a comma list of {', '.join(COMPILE_PARTS)}.")
    for dreamer in dreamer_agents(agent).values():
        wm = dreamer.world_model
        modules = {"encoder": wm.encoder, "decoder": wm.decoder, "gru": wm.rssm.gru, "actor": dreamer.actor.net,
                   "critic": dreamer.critic.net}
        for part in parts:
            if part == "img_step":
                wm.rssm.img_step = torch.compile(wm.rssm.img_step)
            else:
                modules[part].forward = torch.compile(modules[part].forward)
    return parts


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


class SectionTimer:
    """Times the phases of the agents' updates with hooks on their own objects.

    Each optimiser marks a timeline: its ``zero_grad`` (the forward before it ends), the
    last gradient accumulated into its parameters (backward ends), its step pre- and
    post-hooks (clip between, then Adam). Consecutive marks make the sections of one
    update, which add up to its time. The agent computes the actor's and the critic's losses
    together and backpropagates them at once, so the behaviour update's forward is under
    ``actor: forward`` and ``value: forward`` is about 0. Forward hooks on modules (and wrapped
    methods) time parts inside the forwards, inclusively; they are reported indented, not added.
    On CUDA every mark synchronises, so the sections are slower than the plain updates.
    """

    def __init__(self, agent: DreamerV2Agent | CoWorldAgent, device: torch.device):
        self.device = device
        self.marks: list[tuple[float, str, str]] = []  # (time, optimiser label, event)
        self.parts: dict[str, float] = {}
        self._grad_done: dict[str, float] = {}
        self._starts: dict[str, float] = {}
        self._optimizers, self._modules, self._methods = {}, {}, {}
        for role, dreamer in dreamer_agents(agent).items():
            prefix = f"{role} " if role else ""
            for name, optimizer in dreamer.optimizers.items():
                self._optimizers[prefix + name.replace("_", " ")] = optimizer
            wm = dreamer.world_model
            self._modules.update({f"{prefix}encoder": wm.encoder, f"{prefix}decoder": wm.decoder,
                                  f"{prefix}reward head": wm.reward_head})
            self._methods.update({f"{prefix}rssm observe loop": (wm.rssm, "observe"),
                                  f"{prefix}imagination + value targets": (dreamer, "imagine"),
                                  f"{prefix}value targets": (dreamer.value_loss, "targets")})
        if isinstance(agent, CoWorldAgent):
            if agent.alignment_loss is not None:
                self._modules["state alignment (Eq. 3)"] = agent.alignment_loss
            self._modules["source world-model loss with relabelling (Eq. 2, 4-5)"] = agent.sources[0].world_model_loss
            if agent.penalty is not None:
                self._modules["min-max value penalty (Eq. 6)"] = agent.penalty

    def _now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def _mark(self, label: str, event: str) -> None:
        self.marks.append((self._now(), label, event))

    def _add_part(self, name: str, start: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + self._now() - start

    @contextlib.contextmanager
    def hooks(self):
        """Install every hook (and wrapped method) for the duration of the block."""
        handles, wrapped = [], []
        for label, optimizer in self._optimizers.items():
            zero_grad = optimizer.zero_grad

            def marked_zero_grad(*args, label=label, zero_grad=zero_grad, **kwargs):
                self._mark(label, "zero_grad")
                return zero_grad(*args, **kwargs)

            optimizer.zero_grad = marked_zero_grad  # an instance attribute shadows the method
            wrapped.append((optimizer, "zero_grad"))

            def grad_done(param, label=label):
                self._grad_done[label] = self._now()

            def pre(opt, args, kwargs, label=label):
                self.marks.append((self._grad_done.pop(label, self._now()), label, "backward done"))
                self._mark(label, "step")

            def post(opt, args, kwargs, label=label):
                self._mark(label, "step done")

            handles += [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]
            handles += [p.register_post_accumulate_grad_hook(grad_done)
                        for group in optimizer.param_groups for p in group["params"]]
        for name, module in self._modules.items():
            def fwd_pre(mod, args, name=name):
                self._starts[name] = self._now()

            def fwd_post(mod, args, out, name=name):
                self._add_part(name, self._starts.pop(name))

            handles += [module.register_forward_pre_hook(fwd_pre), module.register_forward_hook(fwd_post)]
        for name, (obj, method) in self._methods.items():
            original = getattr(obj, method)

            def timed(*args, name=name, original=original, **kwargs):
                start = self._now()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._add_part(name, start)

            setattr(obj, method, timed)
            wrapped.append((obj, method))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for obj, method in wrapped:
                delattr(obj, method)

    def sections(self, fn: Callable[[], Any]) -> tuple[dict[str, float], dict[str, float]]:
        """Run ``fn`` once under the hooks: ``(sections, parts)`` in seconds."""
        self.marks, self.parts = [], {}
        with self.hooks():
            start = self._now()
            fn()
            end = self._now()
        names = {"zero_grad": "forward", "backward done": "backward", "step": "grad clip", "step done": "adam step"}
        sections: dict[str, float] = {}
        previous = start
        for when, label, event in sorted(self.marks):  # backward-done marks are noted late, at the step
            name = f"{label}: {names[event]}"
            sections[name] = sections.get(name, 0.0) + when - previous
            previous = when
        sections["after the last step (slow-critic copy, metrics)"] = end - previous
        return sections, dict(self.parts)


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


def collection_frames_per_s(agent: DreamerV2Agent, env_name: str, steps: int) -> dict[str, float]:
    """Env frames/s of a TorchRL ``Collector`` loop, with the agent's acting policy and with a random one."""
    from torchrl.collectors import Collector

    from coworld_trl.envs import env_info, make_env
    from coworld_trl.modules.policy import latent_state_primer

    result = {}
    for label, random_policy in (("policy", False), ("random", True)):
        env = make_env(env_name, seed=0)
        env.append_transform(latent_state_primer(agent.world_model))
        collector = Collector(env, agent.policy(), frames_per_batch=steps // 4, total_frames=steps + steps // 4,
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
    if args.collect_env:
        from coworld_trl.envs import env_info

        env_dim = env_info(args.collect_env).action_dim
        if env_dim != args.action_dim:
            raise ValueError(f"--collect-env {args.collect_env} has {env_dim}-d actions but --action-dim is "
                             f"{args.action_dim}; pass --action-dim {env_dim}.")
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    agent = build(args, device)
    compiled = apply_compile(agent, args.compile) if args.compile else []
    generator = torch.Generator().manual_seed(args.seed)
    batches = {role: make_batch(args.batch, args.seq_len, args.action_dim, device, generator=generator)
               for role in (("target", "source") if args.coworld else ("batch",))}
    fns = updates(agent, batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def iteration():
        for fn in fns.values():
            fn()

    compile_s = None
    if compiled:
        start = time.perf_counter()
        iteration(), iteration()
        _sync(device)
        compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        iteration()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):  # interleaved like training; each update timed on its own
        for name, fn in fns.items():
            times[name] += time_fn(fn, device, 1, 0)
    peak_mem = peak_memory_bytes(device)

    flops = {name: count_flops(fn) for name, fn in fns.items()}
    peak = matmul_peak(device)
    seconds = {name: statistics.median(t) for name, t in times.items()}

    timer = SectionTimer(agent, device)
    reps = max(1, min(3, args.repeats))
    breakdown: dict[str, dict[str, float]] = {name: {} for name in fns}
    parts: dict[str, dict[str, float]] = {name: {} for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sections, inner = timer.sections(fn)
            for into, new in ((breakdown[name], sections), (parts[name], inner)):
                for key, value in new.items():
                    into[key] = into.get(key, 0.0) + value / reps

    dreamer = next(iter(dreamer_agents(agent).values()))
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    result: dict[str, Any] = dict(
        mode="coworld" if args.coworld else "dreamer", updates=list(fns),
        preset=args.preset, batch=args.batch, seq_len=args.seq_len, device=str(device),
        threads=torch.get_num_threads(), compile=",".join(compiled) or None, autocast=args.autocast,
        keep_freed_memory=kept, torch=torch.__version__, machine=platform.processor() or platform.machine(),
        params=dict(world_model=n_params(dreamer.world_model), actor=n_params(dreamer.actor),
                    critic=n_params(dreamer.critic)),
        total_s=sum(seconds.values()), matmul_peak_gflops_per_s=peak / 1e9,
        peak_memory_bytes=peak_mem,
        peak_memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        compile_s=compile_s, breakdown_s=breakdown, parts_s=parts,
    )
    for name in fns:
        result.update({
            f"{name}_update_s": seconds[name], f"{name}_update_times": times[name], f"{name}_flops": flops[name],
            f"{name}_gflops_per_s": flops[name] / seconds[name] / 1e9,
            f"{name}_fraction_of_matmul_peak": flops[name] / seconds[name] / peak,
        })
    if args.collect_env:
        result["collect_env"] = args.collect_env
        result["collect_frames_per_s"] = collection_frames_per_s(dreamer, args.collect_env, args.collect_steps)
    for name, fn in fns.items():
        table, result[f"ops_{name}"] = profile_update(fn, device)
        if args.profile:
            result[f"profile_{name}"] = table
    return result


VARIANT_SWITCHES = ("eager", "compiled", "cuda_graphs", "bf16", "tanh")


def parse_variant(name: str) -> dict[str, Any]:
    """``"cuda_graphs+bf16"`` -> the agent switches it sets (``cuda_graphs`` implies compiled)."""
    parts = set(name.split("+"))
    unknown = parts - set(VARIANT_SWITCHES)
    if unknown or ("eager" in parts and len(parts) > 1):
        raise ValueError(f"--variants entry {name!r}: combine {', '.join(VARIANT_SWITCHES[1:])} with '+', or "
                         f"give eager alone.")
    return dict(compiled="compiled" in parts or "cuda_graphs" in parts, cuda_graphs="cuda_graphs" in parts,
                autocast="bf16" in parts, actor_dist="tanh_normal" if "tanh" in parts else None)


def measure_variant(args: argparse.Namespace, device: torch.device, name: str) -> dict[str, Any]:
    """Median update times, compile time and peak memory of one ``--variants`` entry."""
    switches = parse_variant(name)
    if switches["cuda_graphs"] and device.type != "cuda":
        return {"skipped": f"CUDA graphs need CUDA (device {device})"}
    torch.manual_seed(args.seed)
    agent = build(args, device, autocast=switches["autocast"], actor_dist=switches["actor_dist"])
    if switches["compiled"]:
        for dreamer in dreamer_agents(agent).values():
            dreamer.compile_updates(cuda_graphs=switches["cuda_graphs"], backend=args.compile_backend)
    generator = torch.Generator().manual_seed(args.seed)
    batches = {role: make_batch(args.batch, args.seq_len, args.action_dim, device, generator=generator)
               for role in (("target", "source") if args.coworld else ("batch",))}
    fns = updates(agent, batches)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(2):  # compiles (and records the CUDA graphs) when compiled
        for fn in fns.values():
            fn()
    _sync(device)
    first_two_s = time.perf_counter() - start
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(args.repeats):
        for n, fn in fns.items():
            times[n] += time_fn(fn, device, 1, 0)
    seconds = {n: statistics.median(t) for n, t in times.items()}
    result = {f"{n}_update_s": seconds[n] for n in fns}
    result.update(total_s=sum(seconds.values()), first_two_iterations_s=first_two_s,
                  peak_memory_bytes=peak_memory_bytes(device), times=times)
    if args.coworld:
        result["coworld_iteration_s"] = result["total_s"]
    return result


def run_variants(args: argparse.Namespace) -> dict[str, Any]:
    """``--variants`` at each ``--grid`` point (``preset:BxT``; default: ``--preset``, ``--batch``,
    ``--seq-len``), each on a fresh agent; the JSON is rewritten after every variant."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [name for name in args.variants.split(",") if name]
    for name in names:
        parse_variant(name)
    grid = ([point.split(":") for point in args.grid.split(",") if point]
            or [[args.preset, f"{args.batch}x{args.seq_len}"]])
    for preset, shape in grid:
        if preset not in PRESETS or len(shape.split("x")) != 2:
            raise ValueError(f"--grid point {preset}:{shape}; use preset:BxT with a preset of {', '.join(PRESETS)}.")
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    result: dict[str, Any] = dict(
        mode="coworld" if args.coworld else "dreamer", device=str(device), device_name=name_of_device,
        torch=torch.__version__, threads=torch.get_num_threads(), repeats=args.repeats, warmup=args.warmup,
        peak_memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS", runs={})
    for preset, shape in grid:
        args.preset, (args.batch, args.seq_len) = preset, map(int, shape.split("x"))
        run = result["runs"][f"{preset}_{shape}"] = dict(preset=preset, batch=args.batch, seq_len=args.seq_len,
                                                         variants={})
        for name in names:
            try:
                run["variants"][name] = measure_variant(args, device, name)
            except Exception as err:  # one variant failing must not lose the others
                first_line = str(err).splitlines()[0] if str(err) else ""
                run["variants"][name] = {"error": f"{type(err).__name__}: {first_line}"}
            eager, measured = run["variants"].get("eager", {}).get("total_s"), run["variants"][name]
            if eager and "total_s" in measured:
                measured["speedup_over_eager"] = eager / measured["total_s"]
            if args.json:
                write_json(args.json, result)
            torch._dynamo.reset()  # the next variant compiles from scratch
    return result


def write_json(path: str, result: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    Path(tmp).replace(path)


def report_variants(r: dict[str, Any]) -> str:
    lines = [f"{r['mode']}: device={r['device']} ({r['device_name']}) torch={r['torch']} threads={r['threads']}"]
    for key, run in r["runs"].items():
        lines += ["", f"{key} (batch {run['batch']} x {run['seq_len']})",
                  f"{'variant':<22}{'total s':>10}{'speedup':>9}{'first 2 it. s':>15}{'peak MiB':>10}"]
        for name, v in run["variants"].items():
            if "total_s" not in v:
                lines.append(f"{name:<22}{v.get('skipped') or v.get('error')}")
                continue
            lines.append(f"{name:<22}{v['total_s']:>10.4f}{v.get('speedup_over_eager', float('nan')):>9.2f}"
                         f"{v['first_two_iterations_s']:>15.1f}{v['peak_memory_bytes'] / 2**20:>10.0f}")
    return "\n".join(lines)


def report(r: dict[str, Any]) -> str:
    lines = [
        f"{r['mode']}: preset={r['preset']} batch={r['batch']} seq_len={r['seq_len']} device={r['device']} "
        f"threads={r['threads']} compile={r['compile']} autocast={r['autocast']} "
        f"keep_freed_memory={r['keep_freed_memory']} torch={r['torch']}",
        f"params (each agent): world model {r['params']['world_model'] / 1e6:.2f}M, "
        f"actor {r['params']['actor'] / 1e6:.2f}M, critic {r['params']['critic'] / 1e6:.2f}M",
        "",
        f"{'update':<14}{'median s':>10}{'min s':>9}{'GFLOP':>9}{'GFLOP/s':>9}{'of peak':>9}",
    ]
    for name in r["updates"]:
        lines.append(f"{name.replace('_', ' '):<14}{r[f'{name}_update_s']:>10.4f}{min(r[f'{name}_update_times']):>9.4f}"
                     f"{r[f'{name}_flops'] / 1e9:>9.2f}{r[f'{name}_gflops_per_s']:>9.1f}"
                     f"{r[f'{name}_fraction_of_matmul_peak']:>9.1%}")
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
        lines.append(f"compile + first two iterations: {r['compile_s']:.1f} s")
    for name in r["updates"]:
        sections, parts = r["breakdown_s"][name], r["parts_s"][name]
        total = sum(sections.values())
        lines += ["", f"{name.replace('_', ' ') + ' update, by section (hooks, one update)':<60}{'s':>8}{'share':>8}"]
        for key, value in sections.items():
            lines.append(f"{key:<60}{value:>8.4f}{value / total:>8.1%}")
        for key, value in parts.items():
            lines.append(f"{'    inside the forwards: ' + key:<60}{value:>8.4f}{value / total:>8.1%}")
    for name in r["updates"]:
        kinds = r.get(f"ops_{name}")
        if kinds:
            total = sum(kinds.values())
            lines.append(f"{name.replace('_', ' ')} self time by op kind (torch.profiler): " + ", ".join(
                f"{k} {v / total:.0%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for name in r["updates"]:
        if f"profile_{name}" in r:
            lines += ["", f"{name.replace('_', ' ')} update (top ops by self time):", r[f"profile_{name}"]]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    p.add_argument("--coworld", action="store_true",
                   help="time one CoWorld iteration (target update + source update with relabelling)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--compile", nargs="?", const="encoder,decoder", default="",
                   help=f"torch.compile parts: comma list of {','.join(COMPILE_PARTS)} (bare flag: encoder,decoder, "
                        f"as train.compile)")
    p.add_argument("--autocast", action="store_true", help="the agent's bf16 autocast around the forward passes")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory (no mmap, no trim), as training does by default")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler top ops")
    p.add_argument("--collect-env", default="", help="also time the collection loop on this env (e.g. dmc/cheetah_run)")
    p.add_argument("--collect-steps", type=int, default=400, help="agent steps timed in the collection loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None, help="write the results to this path")
    p.add_argument("--variants", default="",
                   help="time the updates under each GPU-path switch instead: comma list of eager, compiled, "
                        "cuda_graphs, bf16, tanh (combined with '+', e.g. cuda_graphs+bf16)")
    p.add_argument("--grid", default="", help="with --variants: comma list of preset:BxT points (e.g. "
                                               "quick:16x16,paper:50x50) instead of --preset/--batch/--seq-len")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled variants")
    return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.variants:
        result = run_variants(args)
        print(report_variants(result))
        return result
    result = run(args)
    print(report(result))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
