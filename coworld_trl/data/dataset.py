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

Opening a dataset memory-maps it: nothing is read until it is sampled, so a dataset larger
than RAM trains without being loaded. Writers fill a hidden sibling directory and rename
it into place when they finish, so a crash or a bad input file never leaves a
half-written dataset under the final name.
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

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


class DatasetError(ValueError):
    """A dataset or input file is unusable; the message names the file, the problem and the fix."""


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
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self, path: Path) -> None:
        (Path(path) / METADATA_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


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
        self.tmp.mkdir(parents=True)
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
        metadata.write(self.tmp)
        for td in (self.rows, self.final, self.episodes):
            td.memmap_()  # flush
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


class OfflineDataset:
    """A dataset directory, memory-mapped.

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
        try:
            self.rows = TensorDict.load_memmap(self.path / "rows")[: m.frames]
            self.final = TensorDict.load_memmap(self.path / "final")[: m.episodes]
            self.episodes = TensorDict.load_memmap(self.path / "episodes")[: m.episodes]
        except (FileNotFoundError, RuntimeError, KeyError, json.JSONDecodeError) as err:
            raise DatasetError(f"{self.path}: the stored tensors are missing or corrupt ({err}); re-create the dataset.") \
                from err
        pixels = self.rows["pixels"]
        if tuple(pixels.shape[1:]) != (3, m.image_size, m.image_size) or self.rows["action"].shape[-1] != m.action_dim:
            raise DatasetError(f"{self.path}: stored shapes pixels {tuple(pixels.shape[1:])}, action "
                               f"{tuple(self.rows['action'].shape[1:])} disagree with metadata.json; re-create the dataset.")

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
        """
        longest = int(self.episodes["length"].max())
        if seq_len > longest:
            raise DatasetError(f"seq_len={seq_len} is longer than every episode of {self.path} (longest {longest}); "
                               f"use seq_len <= {longest}.")
        sampler = SliceSampler(slice_len=seq_len, traj_key="episode", cache_values=True, strict_length=True)
        return TensorDictReplayBuffer(storage=TensorStorage(self.rows), sampler=sampler,
                                      batch_size=batch_size * seq_len, prefetch=prefetch or None)
