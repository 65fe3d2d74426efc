"""Record collected episodes as DreamerV2 npz files, as DreamerV2's own replay does.

Collectors hand out fixed-size batches that cut through episodes; the recorder keeps the
rows of the episode in progress (one episode in memory) and writes each finished episode
to ``<directory>/<index>-<length>.npz`` in the incoming layout (with its final frame, read
from ``("next", "pixels")`` of the last row), so the directory imports losslessly with
:func:`coworld_trl.data.import_npz`. Files appear atomically; a recorder restarted on the
same directory continues the numbering, which makes collection resumable.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from coworld_trl.data.layout import ted_to_incoming

ROW_KEYS = ["action", "is_init", ("next", "reward"), ("next", "done"), ("next", "terminated"), ("next", "truncated")]


class EpisodeRecorder:
    """``recorder(batch)`` appends a collector batch ``[N]`` (TED rows with ``next`` observations).

    Args:
        directory: where the npz episodes go (created if missing).

    Keyword Args:
        observation_keys: per-frame observations to keep (``pixels`` first).
    """

    def __init__(self, directory: str | Path, *, observation_keys: tuple[str, ...] = ("pixels",)):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.observation_keys = observation_keys
        self.episodes = len(list(self.directory.glob("*.npz")))
        self._pending: list[TensorDict] = []

    def __call__(self, batch: TensorDictBase) -> None:
        batch = batch.reshape(-1)
        keys = [*self.observation_keys, *ROW_KEYS, *(("next", k) for k in self.observation_keys)]
        rows = batch.select(*keys).clone()
        done = rows["next", "done"].reshape(-1)
        is_init = rows["is_init"].reshape(-1)
        start = 0
        for stop in [*(torch.nonzero(done).reshape(-1) + 1).tolist(), len(rows)]:
            segment = rows[start:stop]
            start = stop
            if len(segment) == 0:
                continue
            if not self._pending and not bool(is_init[stop - len(segment)]):
                continue  # the tail of an episode that started before recording: not a whole episode
            self._pending.append(segment)
            if bool(segment["next", "done"][-1]):
                self._write(torch.cat(self._pending))
                self._pending = []

    def _write(self, episode: TensorDict) -> None:
        final = TensorDict({k: episode["next", k][-1] for k in self.observation_keys}, batch_size=[])
        rows = episode.exclude(*(("next", k) for k in self.observation_keys))
        arrays = ted_to_incoming(rows, final)
        path = self.directory / f"{self.episodes:06d}-{len(arrays['image'])}.npz"
        tmp = path.with_name(f".{path.name}.tmp")  # not *.npz: an interrupted write is never imported
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
        self.episodes += 1
