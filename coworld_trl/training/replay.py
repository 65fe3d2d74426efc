"""Online replay kept in the run directory.

An :class:`OnlineReplay` is a TorchRL ``TensorDictReplayBuffer`` over a
``LazyMemmapStorage`` whose memory-mapped files live in the run directory (``<run>/replay``,
``<run>/replay_source<i>``). The files are sparse, so disk and memory hold the rows written,
not the capacity. A checkpoint records only the storage length and the writer's cursor:
TorchRL's ``dumps`` onto the storage's own folder copies nothing, so checkpoints take
milliseconds at any buffer size.

Episodes are stored when they end, as DreamerV2's replay does: the episode being collected
is never sampled (TorchRL's ``SliceSampler`` draws episodes uniformly, so a partly collected
episode would have its few rows drawn far more often than the rows of whole ones). Its rows
wait in memory; a checkpoint does not keep them, and a resumed run starts a new episode.
``whole_episodes=False`` stores rows as they are collected.

Sequences are cut by a run-wide ``episode`` id (``SliceSampler(traj_key="episode")``).
After a kill, rows written since the last checkpoint are still in the files. On resume the
writer goes back to the checkpoint's cursor and new episodes are numbered above every id in
the files, so no slice ever joins an interrupted episode to another one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyMemmapStorage, SliceSampler, TensorDictReplayBuffer

from coworld_trl.data.dataset import DeviceSampler, copy_to
from coworld_trl.modules.policy import STATE_KEYS

EPISODE_KEY = "episode"
# Recurrent acting state and collector bookkeeping are not training data; ``next.pixels``
# is the next row's ``pixels``.
NOT_STORED = ["collector", ("next", "pixels"), *STATE_KEYS, *(("next", key) for key in STATE_KEYS)]


class OnlineReplay:
    """A run's online replay: collector batches in, ``[B, T]`` within-episode sequences out.

    Args:
        path: folder of the memory-mapped files (inside the run directory).

    Keyword Args:
        capacity: transitions kept; the oldest are overwritten first.
        seq_len: length ``T`` of sampled sequences.
        whole_episodes: store each episode when it ends (``next.done``), as DreamerV2 does;
            ``False`` stores rows as they come, so the episode being collected is sampled too.
        device: also keep the rows on this device (``capacity`` rows of its memory): stored
            rows are copied there from pinned memory without waiting, and :meth:`sample`
            gathers them there at the indices the sampler draws on the host (the same
            sequences as without, :class:`~coworld_trl.data.dataset.DeviceSampler`).

    Attributes:
        buffer: the TorchRL replay buffer (storage, writer, SliceSampler).
    """

    def __init__(self, path: str | Path, *, capacity: int, seq_len: int, whole_episodes: bool = True,
                 device: torch.device | str | None = None):
        self.path, self.seq_len, self.whole_episodes = Path(path), seq_len, whole_episodes
        self.device = torch.device(device) if device is not None else None
        self._device_rows: TensorDictBase | None = None  # the rows on `device`, made on first use
        # compilable: counters in plain tensors, not multiprocessing Values (named semaphores that a
        # killed run leaks); the buffer is never shared between processes.
        self.buffer = TensorDictReplayBuffer(
            storage=LazyMemmapStorage(capacity, scratch_dir=self.path, compilable=True),
            sampler=SliceSampler(slice_len=seq_len, traj_key=EPISODE_KEY, strict_length=True), compilable=True,
        )
        self._last_episode: int | None = None  # read from the files on the first write
        self._unfinished: list[TensorDictBase] = []  # rows of the episode being collected

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, batch: TensorDictBase) -> None:
        """Store a ``[T]`` collector batch from one env; ``is_init`` starts a new episode id
        (with ``whole_episodes``, rows are written once their episode has ended)."""
        if batch.ndim != 1:
            raise ValueError(f"OnlineReplay.extend takes a [T] batch from one env, got batch_size={tuple(batch.shape)}; "
                             "collect from a single (non-batched) env")
        if self._last_episode is None:
            self._last_episode = self._largest_stored_episode()
        ids = self._last_episode + batch["is_init"].reshape(-1).long().cumsum(0)
        self._last_episode = int(ids[-1])
        rows = batch.exclude(*NOT_STORED).set(EPISODE_KEY, ids)
        if not self.whole_episodes:
            self._store(rows)
            return
        ended = rows["next", "done"].reshape(-1).nonzero()
        if not len(ended):
            self._unfinished.append(rows)
            return
        stop = int(ended[-1]) + 1  # rows after the last episode end belong to the next episode
        self._store(torch.cat([*self._unfinished, rows[:stop]]))
        self._unfinished = [rows[stop:]] if stop < len(rows) else []

    def _store(self, rows: TensorDictBase) -> None:
        index = self.buffer.extend(rows)
        if self.device is not None:  # the collector's rows reach the device without the host waiting
            self.device_rows()[copy_to(index, self.device)] = copy_to(rows, self.device)

    def device_rows(self) -> TensorDictBase:
        """The storage's rows on :attr:`device` (allocated on first use, stored rows copied once)."""
        if self._device_rows is None:
            rows = self.buffer.storage._storage
            self._device_rows = rows.apply(lambda x: torch.empty(x.shape, dtype=x.dtype, device=self.device),
                                           device=self.device)
            stored = len(self.buffer.storage)
            if stored:
                self._device_rows[:stored] = rows[:stored].to(self.device)
        return self._device_rows

    def sample(self, batch_size: int) -> TensorDictBase:
        """``[batch_size, seq_len]`` slices, each inside one episode (on :attr:`device` if set)."""
        count = batch_size * self.seq_len
        if self.device is None:
            return self.buffer.sample(count).reshape(batch_size, self.seq_len)
        return DeviceSampler(self.buffer, self.device_rows()).sample(count).reshape(batch_size, self.seq_len)

    def state_dict(self) -> dict:
        """Length and write cursor; the rows are already in :attr:`path`."""
        storage = self.buffer.storage
        # Nothing written since it was created or reopened (a finetuning phase leaves the source
        # replay alone): its files are as they were, and TorchRL's dumps would warn that it
        # "may not be saved properly" for want of a last write. Our length wins on reopening.
        if storage.initialized and storage._last_cursor is not None:
            storage.dumps(self.path)  # the storage's own folder: refreshes metadata, copies no rows
        return {"len": len(storage), "writer": self.buffer.writer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Reopen the files in :attr:`path` at the checkpoint's length and cursor."""
        if state["len"]:
            storage = self.buffer.storage
            storage.loads(self.path)
            # Rows written after the checkpoint stay in the files; outside the restored length
            # they are never sampled, inside it (a full ring) they are whole episodes of their own.
            storage._len = state["len"]
            self.buffer.writer.load_state_dict(state["writer"])
        self._last_episode, self._unfinished, self._device_rows = None, [], None

    def copy_from(self, other: "OnlineReplay", *, chunk: int = 10_000) -> None:
        """Store every row ``other`` holds, with its episode ids (a source run's replay carried
        into a new run); this replay must be empty and hold at least as many rows."""
        stored, capacity = len(other), self.buffer.storage.max_size
        if stored > capacity:
            raise ValueError(f"{other.path} holds {stored} rows, more than the capacity {capacity} of the replay in "
                             f"{self.path}; raise data.buffer_capacity to at least {stored}")
        if len(self):
            raise RuntimeError(f"the replay in {self.path} already holds {len(self)} rows; copy into an empty one")
        for start in range(0, stored, chunk):
            self._store(other.buffer.storage[start:min(start + chunk, stored)])
        self._last_episode = None

    def discard_files(self) -> None:
        """Remove files left by a run killed before its first checkpoint (fresh start only)."""
        if self.buffer.storage.initialized:
            raise RuntimeError(f"replay in {self.path} is in use; discard its files before the first write")
        shutil.rmtree(self.path, ignore_errors=True)

    def _largest_stored_episode(self) -> int:
        storage = self.buffer.storage
        if not storage.initialized:
            return -1
        # The whole capacity, not only the restored length: rows written after the last
        # checkpoint may hold larger ids.
        return int(storage._storage.get(EPISODE_KEY).max())
