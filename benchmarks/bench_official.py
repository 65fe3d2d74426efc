"""Time the official CoWorld code's DreamerV2 updates, to compare with ``bench_update.py``.

Usage::

    git clone https://github.com/qiwang067/CoWorld /path/to/CoWorld   # the paper authors' code
    python benchmarks/bench_official.py --official-dir /path/to/CoWorld --batch 16 --seq-len 16 \
        --threads 2 --repeats 7 --warmup 3 --json /tmp/official.json
    python benchmarks/bench_update.py --preset reference --batch 16 --seq-len 16 \
        --threads 2 --repeats 7 --warmup 3 --json /tmp/ours.json

What is timed is the paper authors' own code (the public repository ``qiwang067/CoWorld``,
NeurIPS 2024), which is not part of this package and is never shipped with it: clone it
yourself and pass its directory as ``--official-dir``. The script imports that directory's
``models``, ``networks`` and ``tools`` and runs, on a synthetic batch:

* ``WorldModel._train(data)``: preprocess (uint8 pixels to floats), encoder, RSSM observe
  loop, KL balancing, image and reward heads, backward, grad-norm clip, Adam;
* ``ImagBehavior._train(start, objective)``: ``start`` is the posterior the world-model
  update just returned (all ``B*T`` states), ``objective`` is the reward the official agent
  uses (``heads['reward'](get_feat(state)).mode()``, as ``Dreamer._train`` in
  ``co_training.py``): imagination over ``imag_horizon`` steps, lambda-returns with the slow
  value, actor and value losses and steps.

The two updates are interleaved as training interleaves them, and each is timed on its own,
like ``bench_update.py`` (DreamerV2 mode): medians over ``--repeats`` iterations after
``--warmup`` untimed ones, ``torch.set_num_threads(--threads)``, and glibc kept from handing
freed memory back to the OS (:func:`coworld_trl.training.memory.keep_freed_memory`, as
``bench_update.py`` and training do; ``--no-keep-freed-memory`` measures without it). The
fresh copy of the batch each world-model update gets (the official dataset yields a new
batch every update) is made outside the timed region.

Configuration is what ``co_training.py`` builds for DMC: ``co_configs.yaml``'s ``defaults``
updated with its ``dmc`` section, each value passed through the official
``tools.args_type`` (so lists become tuples), then the attributes ``co_training.py`` adds:
``act`` (the ``torch.nn`` class), ``num_actions`` (``--action-dim``, 6 as cheetah), ``step``
(0) and the ``actor_entropy`` / ``actor_state_entropy`` / ``imag_gradient_mix`` schedules;
this script sets ``device='cpu'`` and ``precision=32`` (no AMP). The DMC section's shapes are
those of our ``preset=reference`` (Gaussian latent 50 + deterministic 200, hidden 200,
layer-norm GRU, CNN depth 32, 400-unit heads: reward 2 layers, value 3, actor 4
``trunc_normal``; imagination horizon 15); the script prints them, and the parameter counts,
so a reader can check.

Only the DreamerV2-equivalent path is timed, with no CoWorld coupling: ``sc_domain=True`` and
``pre_train=True``, i.e. the source agent during ``co_training.py``'s pre-training phase.
``sc_domain=True`` skips ``WorldModel._train``'s target-domain latent KL (which needs
``_tg_wm``) and ``ImagBehavior._train``'s min-max value term (which needs
``_tg_behavior``); ``pre_train=True`` skips the source-domain reward relabelling (which
needs a target dataset). ``domain_kl=True`` (the default) still adds the zero
``dm_kl_loss`` tensor to the model loss, as the official code does. As in
``co_training.py`` every parameter starts with ``requires_grad=False``: the official
updates enable gradients per module with ``tools.RequiresGrad``.

The synthetic batch (seeded) is what the official dataset yields: numpy ``image`` uint8
``[B, T, 64, 64, 3]``, ``action`` float32 ``[B, T, A]`` in [-1, 1], ``reward`` float32
``[B, T]`` and ``discount`` ones ``[B, T]``.

``tools.py`` imports ``wandb`` and ``torch.utils.tensorboard``, which the updates never use;
if they are not installed, stub modules are put in ``sys.modules`` first (nothing is
installed). The official code's ``torch.cuda.amp`` FutureWarnings are silenced.

Also reported: FLOPs of each update (``torch.utils.flop_counter``, one extra call each after
the timing, matmuls and convolutions, forward and backward) and peak process RSS.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import resource
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coworld_trl.training.memory import keep_freed_memory

OFFICIAL_FILES = ("models.py", "networks.py", "tools.py", "co_configs.yaml")
OFFICIAL_REPO = "https://github.com/qiwang067/CoWorld"
CONFIG_SECTIONS = ("defaults", "dmc")  # co_training.py --configs defaults dmc
SHAPE_KEYS = ("dyn_stoch", "dyn_discrete", "dyn_deter", "dyn_hidden", "dyn_cell", "dyn_std_act", "cnn_depth",
              "encoder_kernels", "decoder_kernels", "units", "reward_layers", "value_layers", "actor_layers",
              "actor_dist", "act", "imag_horizon", "num_actions", "size", "grad_heads", "pred_discount",
              "slow_value_target", "slow_actor_target", "slow_target_update", "discount", "discount_lambda",
              "reward_scale", "model_lr", "actor_lr", "value_lr", "opt_eps", "grad_clip", "precision", "device",
              "sc_domain", "pre_train", "domain_kl")


# --------------------------------------------------------------------------- loading the official code
def check_official_dir(path: Path) -> None:
    """Exit 2 with one line if ``path`` lacks the official files."""
    missing = [name for name in OFFICIAL_FILES if not (path / name).is_file()]
    if missing:
        print(f"error: --official-dir {path} has no {', '.join(missing)}; clone the paper authors' code "
              f"(git clone {OFFICIAL_REPO}) and pass its directory as --official-dir.", file=sys.stderr)
        sys.exit(2)


def _stub_missing_modules() -> list[str]:
    """Stub ``wandb`` and ``torch.utils.tensorboard`` (imported by tools.py, unused by the updates)."""
    stubbed = []
    try:
        import wandb  # noqa: F401
    except ImportError:
        stub = types.ModuleType("wandb")

        def _unavailable(*args, **kwargs):
            raise RuntimeError("wandb is a stub in bench_official.py")

        stub.init = stub.log = stub.Image = stub.Video = stub.require = _unavailable
        sys.modules["wandb"] = stub
        stubbed.append("wandb")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")

        class SummaryWriter:  # noqa: D401 - stands in for the real class
            def __init__(self, *args, **kwargs):
                raise RuntimeError("torch.utils.tensorboard is a stub in bench_official.py")

        stub.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub
        stubbed.append("torch.utils.tensorboard")
    return stubbed


def import_official(path: Path) -> tuple[types.ModuleType, types.ModuleType, list[str]]:
    """The official ``models`` and ``tools`` modules from ``path``, and the stubbed module names."""
    stubbed = _stub_missing_modules()
    sys.path.insert(0, str(path))
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.", category=FutureWarning)
    import models
    import tools

    for module in (models, tools):
        if Path(module.__file__).resolve().parent != path.resolve():
            raise ImportError(f"imported {module.__name__} from {module.__file__}, not from {path}; another "
                              f"module of that name shadows the official one.")
    return models, tools, stubbed


def _yaml_loader():
    """PyYAML's SafeLoader reading ``3e-4`` as a float (YAML 1.2, as ruamel.yaml in co_training.py does)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def official_config(path: Path, tools: types.ModuleType, action_dim: int) -> argparse.Namespace:
    """The namespace ``co_training.py`` builds for ``--configs defaults dmc``, set up for the plain path."""
    import yaml

    configs = yaml.load((path / "co_configs.yaml").read_text(), Loader=_yaml_loader())
    values: dict[str, Any] = {}
    for name in CONFIG_SECTIONS:
        values.update(configs[name])
    # co_training.py: argparse default=tools.args_type(value)(value) for every key
    config = argparse.Namespace(**{key: tools.args_type(value)(value) for key, value in sorted(values.items())})
    config.device = "cpu"
    config.precision = 32
    config.act = getattr(torch.nn, config.act)  # co_training.main
    config.step = 0
    config.num_actions = action_dim  # co_training.main: the env's action space
    config.sc_domain = True  # no target-domain KL (_tg_wm), no min-max value term (_tg_behavior)
    config.pre_train = True  # no source-domain reward relabelling (target dataset)
    return config


def build_agent(models: types.ModuleType, tools: types.ModuleType, config: argparse.Namespace):
    """World model and behaviour, as ``Dreamer.__init__`` and ``co_training.main`` make them."""
    step = 0
    config.actor_entropy = lambda x=config.actor_entropy: tools.schedule(x, step)
    config.actor_state_entropy = lambda x=config.actor_state_entropy: tools.schedule(x, step)
    config.imag_gradient_mix = lambda x=config.imag_gradient_mix: tools.schedule(x, step)
    wm = models.WorldModel(step, config)
    behavior = models.ImagBehavior(config, wm, config.behavior_stop_grad)
    for module in (wm, behavior):
        module.to(config.device)
        module.requires_grad_(requires_grad=False)  # co_training.main: sc_agent.requires_grad_(False)
    return wm, behavior


def make_batch(batch: int, seq_len: int, action_dim: int, seed: int) -> dict[str, np.ndarray]:
    """What the official dataset yields: numpy ``[B, T, ...]`` arrays."""
    rng = np.random.default_rng(seed)
    shape = (batch, seq_len)
    return dict(
        image=rng.integers(0, 256, (*shape, 64, 64, 3), dtype=np.uint8),
        action=rng.uniform(-1.0, 1.0, (*shape, action_dim)).astype(np.float32),
        reward=rng.standard_normal(shape).astype(np.float32),
        discount=np.ones(shape, dtype=np.float32),
    )


# --------------------------------------------------------------------------- measurement
def count_flops(fn: Callable[[], Any]) -> int | None:
    """Matmul and convolution FLOPs (forward and backward) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return int(counter.get_total_flops())
    except Exception as err:  # the FLOP count is a side result: never lose the timings to it
        print(f"FLOP count failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # kB on Linux, bytes on macOS


def run(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.official_dir).expanduser()
    check_official_dir(path)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.threads:
        torch.set_num_threads(args.threads)
    models, tools, stubbed = import_official(path)
    config = official_config(path, tools, args.action_dim)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    wm, behavior = build_agent(models, tools, config)
    batch = make_batch(args.batch, args.seq_len, args.action_dim, args.seed)

    def objective(feat, state, action):  # co_training.Dreamer._train's reward
        return wm.heads["reward"](wm.dynamics.get_feat(state)).mode()

    latest: dict[str, Any] = {}

    def world_model_update() -> None:
        latest["post"] = wm._train(latest.pop("data"))[0]

    def behaviour_update() -> None:
        behavior._train(latest["post"], objective)

    def prepare_world_model() -> None:  # a fresh batch, as the official dataset yields (untimed)
        latest["data"] = {key: value.copy() for key, value in batch.items()}

    fns: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "world_model": (prepare_world_model, world_model_update),
        "behaviour": (lambda: None, behaviour_update),
    }

    def iteration() -> None:
        for prepare, fn in fns.values():
            prepare()
            fn()

    for _ in range(args.warmup):
        iteration()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):  # interleaved like training; each update timed on its own
        for name, (prepare, fn) in fns.items():
            prepare()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peak_mem = peak_rss_bytes()
    flops = {}
    for name, (prepare, fn) in fns.items():
        prepare()
        flops[name] = count_flops(fn)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shown = {key: getattr(config, key) for key in SHAPE_KEYS}
    shown["act"] = config.act.__name__
    shown = {key: list(value) if isinstance(value, tuple) else value for key, value in shown.items()}
    result: dict[str, Any] = dict(
        mode="official_dreamer", updates=list(fns), preset="reference (official co_configs.yaml defaults + dmc)",
        official_dir=str(path.resolve()), config_sections=list(CONFIG_SECTIONS), official_config=shown,
        stubbed_modules=stubbed, batch=args.batch, seq_len=args.seq_len, action_dim=args.action_dim,
        device=config.device, threads=torch.get_num_threads(), repeats=args.repeats, warmup=args.warmup,
        keep_freed_memory=kept, torch=torch.__version__, machine=platform.processor() or platform.machine(),
        params=dict(world_model=n_params(wm), actor=n_params(behavior.actor), critic=n_params(behavior.value)),
        total_s=sum(seconds.values()), total_min_s=sum(min(t) for t in times.values()),
        peak_memory_bytes=peak_mem, peak_memory_kind="process peak RSS",
    )
    for name in fns:
        result.update({f"{name}_update_s": seconds[name], f"{name}_update_min_s": min(times[name]),
                       f"{name}_update_times": times[name], f"{name}_flops": flops[name],
                       f"{name}_gflops_per_s": flops[name] / seconds[name] / 1e9 if flops[name] else None})
    return result


def report(r: dict[str, Any]) -> str:
    c = r["official_config"]
    lines = [
        f"official CoWorld code ({r['official_dir']}), DreamerV2 path (sc_domain={c['sc_domain']}, "
        f"pre_train={c['pre_train']}): batch={r['batch']} seq_len={r['seq_len']} action_dim={r['action_dim']} "
        f"device={r['device']} threads={r['threads']} keep_freed_memory={r['keep_freed_memory']} torch={r['torch']}",
        f"config ({' + '.join(r['config_sections'])}): latent Gaussian stoch={c['dyn_stoch']} "
        f"(discrete={c['dyn_discrete']}) deter={c['dyn_deter']} hidden={c['dyn_hidden']} cell={c['dyn_cell']} "
        f"cnn_depth={c['cnn_depth']} units={c['units']} reward_layers={c['reward_layers']} "
        f"value_layers={c['value_layers']} actor_layers={c['actor_layers']} actor_dist={c['actor_dist']} "
        f"act={c['act']} imag_horizon={c['imag_horizon']} precision={c['precision']} "
        f"pred_discount={c['pred_discount']} domain_kl={c['domain_kl']}",
        f"params: world model {r['params']['world_model'] / 1e6:.2f}M, actor {r['params']['actor'] / 1e6:.2f}M, "
        f"critic {r['params']['critic'] / 1e6:.2f}M",
    ]
    if r["stubbed_modules"]:
        lines.append(f"stubbed (not installed, unused by the updates): {', '.join(r['stubbed_modules'])}")
    lines += ["", f"{'update':<14}{'median s':>10}{'min s':>9}{'GFLOP':>9}{'GFLOP/s':>9}"]
    for name in r["updates"]:
        flops = r[f"{name}_flops"]
        lines.append(f"{name.replace('_', ' '):<14}{r[f'{name}_update_s']:>10.4f}{r[f'{name}_update_min_s']:>9.4f}"
                     + (f"{flops / 1e9:>9.2f}{r[f'{name}_gflops_per_s']:>9.1f}" if flops else f"{'-':>9}{'-':>9}"))
    lines.append(f"{'total':<14}{r['total_s']:>10.4f}{r['total_min_s']:>9.4f}")
    lines.append(f"peak memory ({r['peak_memory_kind']}): {r['peak_memory_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official-dir", required=True,
                   help=f"a clone of the official CoWorld code ({OFFICIAL_REPO}): models.py, networks.py, tools.py, "
                        f"co_configs.yaml")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--action-dim", type=int, default=6)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc keeps freed memory (no mmap, no trim), as bench_update.py and training do")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        Path(tmp).replace(args.json)


if __name__ == "__main__":
    main()
