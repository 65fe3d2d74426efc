"""The on-disk offline dataset: memory-mapped TED rows plus a metadata file.

A dataset is a directory::

    <path>/metadata.json   env, image size, action dim, episode and frame counts, return
                           statistics, how it was made, format version, notes
    <path>/rows/           TensorDict memmap [frames], TED layout (see data/layout.py):
                           pixels uint8 [3, H, W], action float32 [A], is_init bool [1],
                           episode int64 (trajectory id), next/{reward float32 [1],
                           done, terminated, truncated bool [1]}, extra observations
    <path>/final/          TensorDict memmap [episodes]: each episode's last observation
    <path>/episodes/       TensorDict memmap [episodes]: start row, length, return

Opening a dataset memory-maps it read-only (see :mod:`coworld_trl.data.files`): nothing is
read until it is sampled, so a dataset larger than RAM trains without being loaded, and
nothing a reader does (open, sample, info, validate, train) can write to the files. Opening
checks each file's size against its dtype and shape and the episode index against the rows
(``os.stat`` and the small index only), so a truncated or damaged file is refused by name.
Writers fill a hidden sibling directory, store a sha256 checksum of every file in
``metadata.json`` and rename the directory into place when they finish, so a crash or a bad
input file never leaves a half-written dataset under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import SliceSampler, TensorDictReplayBuffer, TensorStorage

from coworld_trl.data.files import (DatasetError, check_sizes, compare_checksums, file_checksums, open_read_only,
                                    read_layout, write_json_atomic)

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
# The stored TensorDicts and the leaves every dataset has (extra observations may follow).
REQUIRED = {
    "rows": [("pixels",), ("action",), ("is_init",), ("episode",), ("next", "reward"), ("next", "done"),
             ("next", "terminated"), ("next", "truncated")],
    "final": [("pixels",)],
    "episodes": [("start",), ("length",), ("episode_return",)],
}


@dataclass
class DatasetMetadata:
    """What a dataset holds and how it was made (``metadata.json``)."""

    env: str | None
    image_size: int
    action_dim: int
    episodes: int
    frames: int  # TED rows = agent steps
    return_mean: float
    return_std: float
    return_min: float
    return_max: float
    source: str  # how it was made, e.g. "import npz /data/walker" or "collect medium-replay"
    observation_keys: list[str] = field(default_factory=lambda: ["pixels"])
    notes: list[str] = field(default_factory=list)
    created: str = ""
    format_version: int = FORMAT_VERSION
    # {relative path: "sha256:<hex>"} of every other file; None for datasets written before
    # checksums existed (add them with `python -m coworld_trl.data checksum PATH`).
    checksums: dict[str, str] | None = None

    @classmethod
    def read(cls, path: Path) -> "DatasetMetadata":
        file = Path(path) / METADATA_FILE
        if not file.exists():
            raise DatasetError(f"{path}: no {METADATA_FILE}, so this is not a coworld_trl dataset; "
                               f"import raw episodes with `python -m coworld_trl.data convert SRC {path}`.")
        try:
            values = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{file}: corrupt JSON ({err}); re-create the dataset.") from err
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetError(f"{file}: format_version={version}, this library reads {FORMAT_VERSION}; "
                               f"re-convert the dataset with this version.")
        checksums = values.get("checksums")
        if checksums is not None and not (isinstance(checksums, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in checksums.items())):
            raise DatasetError(f"{file}: checksums is not a {{file: 'sha256:<hex>'}} table; restore metadata.json from "
                               f"a good copy, or delete the key and run `python -m coworld_trl.data checksum {path}`.")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self, path: Path) -> None:
        write_json_atomic(Path(path) / METADATA_FILE, asdict(self))


class DatasetWriter:
    """Write episodes (TED rows + final observation) into a new dataset directory.

    Sizes are fixed up front (``capacity_frames`` / ``capacity_episodes`` upper bounds; the
    memmaps are allocated sparse on disk, never in RAM). Usage::

        with DatasetWriter(path, example_rows, example_final, capacity_frames=N,
                           capacity_episodes=E, env="dmc/walker_walk", source="...") as writer:
            for rows, final in episodes:
                writer.add(rows, final)

    On a clean exit the directory appears at ``path``; on an exception nothing does.
    ``overwrite`` replaces an existing dataset; otherwise an existing ``path`` is refused.
    """

    def __init__(self, path: str | Path, example_rows: TensorDict, example_final: TensorDict, *,
                 capacity_frames: int, capacity_episodes: int, env: str | None, source: str,
                 overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path} already exists; choose another output path or pass overwrite=True "
                               f"(--overwrite) to replace it.")
        self.tmp = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            self.tmp.mkdir(parents=True)
        except OSError as err:
            raise DatasetError(f"{self.path}: cannot create the dataset there ({err.strerror}); choose an output "
                               f"path in a writable folder.") from None
        row = example_rows[0].clone()
        row["episode"] = torch.zeros((), dtype=torch.int64)
        self.rows = row.expand(capacity_frames).memmap_like(prefix=self.tmp / "rows")
        self.final = example_final.expand(capacity_episodes).memmap_like(prefix=self.tmp / "final")
        index = TensorDict(start=torch.zeros((), dtype=torch.int64), length=torch.zeros((), dtype=torch.int64),
                           episode_return=torch.zeros(()), batch_size=[])
        self.episodes = index.expand(capacity_episodes).memmap_like(prefix=self.tmp / "episodes")
        self.env, self.source, self.overwrite = env, source, overwrite
        self.frames, self.count, self.notes = 0, 0, []
        self.image_size, self.action_dim = int(row["pixels"].shape[-1]), int(row["action"].shape[-1])
        self.observation_keys = sorted(k for k in example_final.keys())

    def add(self, rows: TensorDict, final: TensorDict) -> None:
        n = rows.shape[0]
        if rows["pixels"].shape[1:] != self.rows["pixels"].shape[1:] or rows["action"].shape[-1] != self.action_dim:
            raise DatasetError(f"{self.path}: episode {self.count} has pixels {tuple(rows['pixels'].shape[1:])} and "
                               f"{rows['action'].shape[-1]}-d actions, the dataset {tuple(self.rows['pixels'].shape[1:])} "
                               f"and {self.action_dim}-d; one dataset holds one image size and action dim.")
        if self.frames + n > self.rows.shape[0] or self.count >= self.final.shape[0]:
            raise DatasetError(f"{self.path}: more data than the {self.rows.shape[0]} frames / "
                               f"{self.final.shape[0]} episodes announced; count the input first.")
        rows = rows.clone(False)
        rows["episode"] = torch.full((n,), self.count, dtype=torch.int64)
        self.rows[self.frames:self.frames + n] = rows
        self.final[self.count] = final
        self.episodes[self.count] = TensorDict(start=torch.tensor(self.frames), length=torch.tensor(n),
                                               episode_return=rows["next", "reward"].sum(), batch_size=[])
        self.frames += n
        self.count += 1

    def close(self) -> DatasetMetadata:
        if self.count == 0:
            raise DatasetError(f"{self.path}: no episodes were written; the input holds no usable episode.")
        returns = self.episodes["episode_return"][: self.count].double()
        metadata = DatasetMetadata(
            env=self.env, image_size=self.image_size, action_dim=self.action_dim, episodes=self.count,
            frames=self.frames, return_mean=returns.mean().item(),
            return_std=returns.std(unbiased=False).item(), return_min=returns.min().item(),
            return_max=returns.max().item(), source=self.source, observation_keys=self.observation_keys,
            notes=self.notes, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        for td in (self.rows, self.final, self.episodes):
            td.memmap_()  # flush
        metadata.checksums = file_checksums(self.tmp, METADATA_FILE)
        metadata.write(self.tmp)
        if self.path.exists():  # overwrite=True was checked at construction
            shutil.rmtree(self.path)
        self.tmp.rename(self.path)
        return metadata

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.metadata = self.close()
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class ReadOnlyStorage(TensorStorage):
    """A TorchRL ``TensorStorage`` over a dataset's read-only rows: sampling reads, and any
    write (``extend``, ``add``, ``load_state_dict``) is refused instead of reaching the data."""

    def set(self, *args, **kwargs):
        raise DatasetError("an offline dataset is read-only; write a new one with DatasetWriter, import_npz or "
                           "`python -m coworld_trl.data convert` instead of extending its replay buffer.")

    def load_state_dict(self, state_dict):
        self.set(None, state_dict)


def repair_hint(path: Path, metadata: DatasetMetadata | None = None) -> str:
    """How to get a good copy of the dataset at ``path`` back (ends a :class:`DatasetError`)."""
    source = metadata.source if metadata is not None else ""
    for prefix in ("import npz ", "import hdf5 "):
        if source.startswith(prefix):
            return (f"re-copy the dataset or re-import it with `python -m coworld_trl.data convert "
                    f"{source.removeprefix(prefix)} {path} --overwrite`.")
    return (f"re-copy the dataset or re-create it (`python -m coworld_trl.data convert SRC {path} --overwrite`, "
            f"or the command that collected it).")


class OfflineDataset:
    """A dataset directory, memory-mapped read-only.

    Opening checks, cheaply (``os.stat`` and the episode index, no pixel is read), that
    every file has the size its dtype and shape give and that the episode index tiles the
    rows; a problem raises a one-line :class:`DatasetError` naming the file and the fix.
    The files are mapped copy-on-write from read-only file descriptors: nothing done with
    the dataset writes to them, and a read-only (``chmod 0o444``) copy opens and samples.

    Attributes:
        metadata: :class:`DatasetMetadata`.
        rows: TED rows ``[frames]`` (memory-mapped TensorDict).
        final: last observation of each episode ``[episodes]``.
        episodes: ``start``, ``length``, ``episode_return`` per episode.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such dataset directory; make one with "
                               f"`python recipes/collect_dataset.py` or `python -m coworld_trl.data convert`.")
        self.metadata = DatasetMetadata.read(self.path)
        m = self.metadata
        fix = repair_hint(self.path, m)
        opened = {}
        for name, count in (("rows", m.frames), ("final", m.episodes), ("episodes", m.episodes)):
            shape, leaves = read_layout(self.path / name, fix)
            missing = [k for k in REQUIRED[name] if k not in leaves]
            if missing:
                raise DatasetError(f"{self.path / name}: no stored {'/'.join(missing[0])}; the dataset is incomplete, {fix}")
            if not shape or shape[0] < count:
                raise DatasetError(f"{self.path / name}: holds {shape[0] if shape else 0} entries, metadata.json says "
                                   f"{count}; the dataset is damaged, {fix}")
            check_sizes(leaves, fix)
            opened[name] = open_read_only(shape, leaves)[:count]
        self.rows, self.final, self.episodes = opened["rows"], opened["final"], opened["episodes"]
        pixels = self.rows["pixels"]
        if tuple(pixels.shape[1:]) != (3, m.image_size, m.image_size) or self.rows["action"].shape[-1] != m.action_dim:
            raise DatasetError(f"{self.path}: stored shapes pixels {tuple(pixels.shape[1:])}, action "
                               f"{tuple(self.rows['action'].shape[1:])} disagree with metadata.json; {fix}")
        self._check_index(fix)

    def _check_index(self, fix: str) -> None:
        """The episodes tile the rows: lengths >= 1, each starts where the previous ended, and
        the lengths sum to the frame count (reads only the ``[episodes]`` index)."""
        starts, lengths = self.episodes["start"], self.episodes["length"]
        index = self.path / "episodes"
        short = torch.nonzero(lengths < 1).reshape(-1)
        if len(short):
            i = int(short[0])
            raise DatasetError(f"{index / 'length.memmap'}: episode {i} has length {int(lengths[i])}; the episode "
                               f"index is damaged, {fix}")
        expected = torch.cumsum(lengths, 0) - lengths
        wrong = torch.nonzero(starts != expected).reshape(-1)
        if len(wrong):
            i = int(wrong[0])
            raise DatasetError(f"{index / 'start.memmap'}: episode {i} starts at row {int(starts[i])}, expected "
                               f"{int(expected[i])} (where the previous episode ends); the episode index is damaged, {fix}")
        total = int(lengths.sum())
        if total != self.metadata.frames:
            raise DatasetError(f"{index / 'length.memmap'}: episode lengths sum to {total} rows, metadata.json says "
                               f"{self.metadata.frames} frames; the dataset is damaged, {fix}")

    def check_rows(self) -> None:
        """Every row's ``episode`` id matches the episode index (reads the ``[frames]`` int64
        ids, 8 bytes a row; run by ``validate``, not on opening)."""
        expected = torch.repeat_interleave(torch.arange(self.metadata.episodes), self.episodes["length"])
        wrong = torch.nonzero(self.rows["episode"] != expected).reshape(-1)
        if len(wrong):
            row = int(wrong[0])
            raise DatasetError(f"{self.path / 'rows' / 'episode.memmap'}: row {row} is in episode "
                               f"{int(self.rows['episode'][row])}, the episode index says {int(expected[row])}; "
                               f"the dataset is damaged, {repair_hint(self.path, self.metadata)}")

    def verify_checksums(self, *, progress: bool = False) -> int:
        """Recompute every file's sha256 (a full read) and compare with ``metadata.json``;
        returns the number of files verified. Raises a one-line :class:`DatasetError` listing
        every mismatching file, or saying that the dataset has no checksums."""
        expected = self.metadata.checksums
        if not expected:
            raise DatasetError(f"{self.path}: no checksums in {METADATA_FILE} (written before datasets stored them), "
                               f"so nothing to verify; add them with `python -m coworld_trl.data checksum {self.path}` "
                               f"(from a copy you trust).")
        problems = compare_checksums(self.path, expected, progress=progress)
        if problems:
            raise DatasetError(f"{self.path}: {len(problems)} file(s) differ from their checksum: {'; '.join(problems)}; "
                               f"{repair_hint(self.path, self.metadata)}")
        return len(expected)

    def __len__(self) -> int:
        return self.metadata.frames

    def episode(self, index: int) -> tuple[TensorDict, TensorDict]:
        """TED rows and final observation of episode ``index`` (read from disk)."""
        start, length = (int(self.episodes[index][k]) for k in ("start", "length"))
        return self.rows[start:start + length].clone(), self.final[index].clone()

    def replay_buffer(self, *, batch_size: int, seq_len: int, prefetch: int = 0) -> TensorDictReplayBuffer:
        """A TorchRL replay buffer over the memory-mapped rows, sampling ``batch_size``
        within-episode slices of ``seq_len`` (flat ``[batch_size * seq_len]``; reshape to
        ``[B, T]``). Episodes shorter than ``seq_len`` are never sampled. ``prefetch``
        batches are sampled ahead in background threads, so sampling overlaps the update.
        The storage is a :class:`ReadOnlyStorage`: the buffer cannot be extended.
        """
        longest = int(self.episodes["length"].max())
        if seq_len > longest:
            raise DatasetError(f"seq_len={seq_len} is longer than every episode of {self.path} (longest {longest}); "
                               f"use seq_len <= {longest}.")
        sampler = SliceSampler(slice_len=seq_len, traj_key="episode", cache_values=True, strict_length=True)
        # compilable: counters in plain tensors, not multiprocessing Values (named semaphores that a
        # killed process leaks); the buffer is never shared between processes.
        return TensorDictReplayBuffer(storage=ReadOnlyStorage(self.rows, compilable=True), sampler=sampler,
                                      batch_size=batch_size * seq_len, prefetch=prefetch or None, compilable=True)

    def device_sampler(self, *, batch_size: int, seq_len: int, device: torch.device | str) -> "DeviceSampler":
        """:meth:`replay_buffer`'s sequences (same seed, same sequences) read from a copy of
        every row on ``device``: the dataset is loaded there once (``frames`` rows of device
        memory), and ``sample(batch_size * seq_len)`` then never leaves the device."""
        return DeviceSampler(self.replay_buffer(batch_size=batch_size, seq_len=seq_len), self.rows.to(device))


def copy_to(data: torch.Tensor | TensorDict, device: torch.device):
    """``data`` (on the host) on ``device``: on CUDA through pinned memory, without waiting
    for the copy (the host does not wait for the device's queue either)."""
    if device.type != "cuda":
        return data.to(device)
    return data.pin_memory().to(device, non_blocking=True)


class DeviceSampler:
    """Sequences drawn by a TorchRL buffer's sampler, read from a copy of its rows on a device.

    The sampler draws indices on the host from its own state and the global RNG, exactly as
    ``buffer.sample`` does, so a seed gives the same sequences as the default path; only the
    gather moves to ``rows.device``. The indices and the sampler's flags (``is_init`` at slice
    starts, ``next.done``/``next.truncated`` at slice ends) go to the device from pinned memory
    without waiting, so a batch needs no host round trip.

    Args:
        buffer: the TorchRL replay buffer whose sampler and storage define the draw.
        rows: the storage's rows on the device (``rows[i]`` is the storage's row ``i``).

    Examples:
        >>> buffer = dataset.replay_buffer(batch_size=50, seq_len=50)
        >>> sampler = DeviceSampler(buffer, dataset.rows.to("cuda"))
        >>> sampler.sample(50 * 50).reshape(50, 50)   # on cuda, as buffer.sample() would be
    """

    def __init__(self, buffer: TensorDictReplayBuffer, rows: TensorDict):
        self.buffer, self.rows = buffer, rows

    def sample(self, count: int) -> TensorDict:
        """``count`` rows (flat), with the entries ``TensorDictReplayBuffer.sample`` adds."""
        index, info = self.buffer.sampler.sample(self.buffer.storage, count)
        index = torch.stack(index, -1) if isinstance(index, tuple) else index.unsqueeze(-1)
        device = self.rows.device
        batch = self.rows[copy_to(index[:, 0], device)]
        for key, value in info.items():
            batch.set(key, copy_to(value, device))
        return batch.set("index", copy_to(index, device))


def add_checksums(path: str | Path, *, overwrite: bool = False, progress: bool = False) -> int:
    """Store the sha256 of every file in the ``metadata.json`` of a dataset written before
    checksums existed (the one write this library makes to an existing dataset: the
    metadata is replaced atomically, every other key kept). The dataset must pass the
    opening checks first. A dataset that has checksums is refused unless ``overwrite``
    (after a deliberate change): recomputing would bless whatever damage happened since.
    Returns the number of files."""
    dataset = OfflineDataset(path)
    if dataset.metadata.checksums and not overwrite:
        raise DatasetError(f"{dataset.path} already has checksums; verify them with `python -m coworld_trl.data "
                           f"validate --checksum {dataset.path}`, or pass --overwrite to recompute them.")
    file = dataset.path / METADATA_FILE
    values = json.loads(file.read_text())
    values["checksums"] = file_checksums(dataset.path, METADATA_FILE, progress=progress)
    try:
        write_json_atomic(file, values)
    except PermissionError as err:
        raise DatasetError(f"{file}: cannot write ({err.strerror}); adding checksums rewrites metadata.json, "
                           f"make the directory writable (or checksum a writable copy).") from err
    return len(values["checksums"])
