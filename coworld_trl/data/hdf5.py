"""V-D4RL hdf5 shards (optional extra: ``pip install 'coworld_trl[hdf5]'``).

A shard holds consecutive time steps of several episodes: ``observation`` ``[N, 3, H, W]``
uint8, ``action`` ``[N, A]``, ``reward`` ``[N]``, ``discount`` ``[N]`` and ``step_type``
``[N]`` (0 first, 1 mid, 2 last). Rows are in the same "incoming" layout as DreamerV2's
npz (the action and reward that led to the observation), so each episode goes through
:func:`coworld_trl.data.layout.incoming_to_ted`. Only one episode is read at a time.
"""
from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Iterator

import numpy as np

from coworld_trl.data.dataset import DatasetError, DatasetWriter, OfflineDataset
from coworld_trl.data.layout import incoming_to_ted

KEYS = ("observation", "action", "reward", "discount", "step_type")
FIRST, LAST = 0, 2


def require_h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading hdf5 shards needs h5py: pip install 'coworld_trl[hdf5]'.") from err
    return h5py


def hdf5_files(source: str | Path) -> list[Path]:
    source = Path(source)
    files = [source] if source.is_file() else sorted([*source.glob("*.hdf5"), *source.glob("*.h5")])
    if not files:
        raise DatasetError(f"{source}: no .hdf5 / .h5 shard found.")
    return files


def shard_episodes(path: Path, *, action_dim: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of the complete episodes in a shard (checked from metadata)."""
    h5py = require_h5py()
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing dataset(s) {missing}; a V-D4RL shard has {list(KEYS)}.")
            lengths = {k: f[k].shape[0] for k in KEYS}
            if len(set(lengths.values())) != 1:
                raise DatasetError(f"{path}: ragged shard, datasets have different lengths {lengths}.")
            obs = f["observation"]
            if obs.dtype != np.uint8 or obs.ndim != 4 or obs.shape[1] != 3 or obs.shape[2] != obs.shape[3]:
                raise DatasetError(f"{path}: observation {obs.dtype} {obs.shape}; expected uint8 [N, 3, H, H].")
            if action_dim is not None and f["action"].shape[-1] != action_dim:
                raise DatasetError(f"{path}: action dim {f['action'].shape[-1]}, but the env takes {action_dim}.")
            step_type = f["step_type"][:].reshape(-1)
    except OSError as err:
        raise DatasetError(f"{path}: not a readable hdf5 file ({err}); it is truncated or corrupt.") from err
    starts = np.nonzero(step_type == FIRST)[0].tolist()
    ranges = []
    for start, nxt in zip(starts, [*starts[1:], len(step_type)]):
        lasts = np.nonzero(step_type[start:nxt] == LAST)[0]
        if len(lasts) and lasts[0] >= 1:  # a shard may end mid-episode: that tail is skipped
            ranges.append((start, start + int(lasts[0]) + 1))
    return ranges


def read_shard_episode(path: Path, start: int, stop: int) -> dict[str, np.ndarray]:
    h5py = require_h5py()
    with h5py.File(path, "r") as f:
        data = {k: f[k][start:stop] for k in KEYS}
    step_type = data["step_type"].reshape(-1)
    discount = data["discount"].reshape(-1).astype(np.float32)
    episode = {
        "image": data["observation"],
        "action": data["action"].astype(np.float32),
        "reward": data["reward"].reshape(-1).astype(np.float32),
        "is_first": step_type == FIRST,
        "is_last": step_type == LAST,
        "is_terminal": (step_type == LAST) & (discount == 0),
    }
    for key in ("action", "reward"):
        bad = ~np.isfinite(episode[key])
        if bad.any():
            raise DatasetError(f"{path}: {key} is NaN or inf at row(s) {(start + np.nonzero(bad)[0][:5]).tolist()}.")
    return episode


def import_hdf5(source: str | Path, destination: str | Path, *, env: str | None = None,
                action_dim: int | None = None, overwrite: bool = False, progress: bool = False) -> OfflineDataset:
    """Convert V-D4RL shards (a file or a directory of them) into a dataset."""
    if env is not None and action_dim is None:
        from coworld_trl.envs import env_info

        action_dim = env_info(env).action_dim
    plan = [(path, r) for path in hdf5_files(source) for r in shard_episodes(path, action_dim=action_dim)]
    if not plan:
        raise DatasetError(f"{source}: no complete episode (step_type 0 ... 2) in the shards.")
    with closing(_episodes(plan, progress)) as episodes:  # a refusal closes the progress bar
        rows, final = next(episodes)
        with DatasetWriter(destination, rows, final, capacity_frames=sum(b - a - 1 for _, (a, b) in plan),
                           capacity_episodes=len(plan), env=env, source=f"import hdf5 {Path(source).resolve()}",
                           overwrite=overwrite) as writer:
            writer.add(rows, final)
            for rows, final in episodes:
                writer.add(rows, final)
    return OfflineDataset(destination)


def _episodes(plan, progress: bool) -> Iterator:
    if progress:
        from tqdm import tqdm

        plan = tqdm(plan, desc="hdf5 episodes", unit="ep")
    for path, (start, stop) in plan:
        yield incoming_to_ted(read_shard_episode(path, start, stop))
