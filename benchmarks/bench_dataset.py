"""Offline dataset scale: convert a synthetic npz dataset and sample [B, T] batches from it,
with the memory each phase needs.

Usage::

    python benchmarks/bench_dataset.py --frames 200000 --workdir /tmp/bench_dataset
    python benchmarks/bench_dataset.py --frames 20000 --batches 50        # a quick look

Phases, each in its own process so that its memory is its own:

1. ``generate``: write ``--frames / 500`` DreamerV2 npz episodes (501 rows of 64x64x3
   random pixels, 6-d actions), uncompressed; not timed as part of the library.
2. ``convert``: ``import_npz`` into the memory-mapped dataset format.
3. ``sample``: open the dataset and draw ``--batches`` batches of ``[B, T]`` within-episode
   slices (default 50 x 50) through the TorchRL replay buffer with ``--prefetch``.

Memory is reported two ways: peak RSS (``VmHWM``), which also counts file pages the
process touched through its memory maps (the kernel can drop those at any time), and peak
anonymous memory (``RssAnon``, sampled during the phase), which is what the process holds
in RAM itself. A dataset larger than RAM trains when the anonymous memory stays small.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

EPISODE_FRAMES = 500


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Sample ``RssAnon`` every 20 ms in a thread; ``peak`` in MiB."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("RssAnon")) / 1024


def generate(workdir: Path, frames: int) -> dict:
    src = workdir / "npz"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    episodes = max(1, frames // EPISODE_FRAMES)
    length = EPISODE_FRAMES + 1
    for i in range(episodes):
        action = rng.uniform(-1, 1, (length, 6)).astype(np.float32)
        action[0] = 0
        np.savez(src / f"{i:06d}-{length}.npz", image=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
                 action=action, reward=np.r_[0.0, rng.random(length - 1)].astype(np.float32),
                 discount=np.ones(length, np.float32), is_first=np.eye(1, length, dtype=bool)[0],
                 is_last=np.eye(1, length, length - 1, dtype=bool)[0], is_terminal=np.zeros(length, bool))
    size = sum(f.stat().st_size for f in src.iterdir())
    return dict(episodes=episodes, npz_bytes=size)


def convert(workdir: Path) -> dict:
    from coworld_trl.data import import_npz

    shutil.rmtree(workdir / "dataset", ignore_errors=True)
    with AnonPeak() as anon:
        start = time.perf_counter()
        dataset = import_npz(workdir / "npz", workdir / "dataset")
        elapsed = time.perf_counter() - start
    size = sum(f.stat().st_size for f in (workdir / "dataset").rglob("*") if f.is_file())
    return dict(frames=dataset.metadata.frames, seconds=elapsed, frames_per_s=dataset.metadata.frames / elapsed,
                dataset_bytes=size, peak_anon_mib=anon.peak)


def sample(workdir: Path, batch: int, seq_len: int, batches: int, prefetch: int) -> dict:
    import torch

    from coworld_trl.data import OfflineDataset

    torch.set_num_threads(1)
    with AnonPeak() as anon:
        dataset = OfflineDataset(workdir / "dataset")
        buffer = dataset.replay_buffer(batch_size=batch, seq_len=seq_len, prefetch=prefetch)
        buffer.sample()  # sampler caches its episode index on the first call
        start = time.perf_counter()
        for _ in range(batches):
            out = buffer.sample().reshape(batch, seq_len)
            crossed = (out["episode"] != out["episode"][:, :1]).any().item()
            assert not crossed, "a slice crossed an episode boundary"
        elapsed = time.perf_counter() - start
    return dict(batches=batches, batch=[batch, seq_len], seconds=elapsed, batches_per_s=batches / elapsed,
                frames_per_s=batches * batch * seq_len / elapsed, prefetch=prefetch, peak_anon_mib=anon.peak)


def run_phase(args: argparse.Namespace, phase: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--workdir", str(args.workdir), "--frames", str(args.frames),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--batches", str(args.batches),
           "--prefetch", str(args.prefetch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/coworld_bench_dataset"))
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--phase", choices=["generate", "convert", "sample"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    if args.phase is not None:  # child process: one phase, JSON on the last line
        phases = {"generate": lambda: generate(args.workdir, args.frames), "convert": lambda: convert(args.workdir),
                  "sample": lambda: sample(args.workdir, args.batch, args.seq_len, args.batches, args.prefetch)}
        result = phases[args.phase]()
        result["peak_rss_mib"] = _status_kib("VmHWM") / 1024
        print(json.dumps(result))
        return result
    result = {phase: run_phase(args, phase) for phase in ("generate", "convert", "sample")}
    gib = 2**30
    print(f"dataset: {result['convert']['frames']} frames, {result['generate']['npz_bytes'] / gib:.2f} GiB of npz -> "
          f"{result['convert']['dataset_bytes'] / gib:.2f} GiB on disk")
    c, s = result["convert"], result["sample"]
    print(f"convert: {c['seconds']:.1f} s ({c['frames_per_s']:.0f} frames/s), peak anonymous memory "
          f"{c['peak_anon_mib']:.0f} MiB, peak RSS {c['peak_rss_mib']:.0f} MiB")
    print(f"sample [{args.batch}, {args.seq_len}] prefetch={args.prefetch}: {s['batches_per_s']:.1f} batches/s "
          f"({s['frames_per_s']:.0f} frames/s), peak anonymous memory {s['peak_anon_mib']:.0f} MiB, "
          f"peak RSS {s['peak_rss_mib']:.0f} MiB")
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
