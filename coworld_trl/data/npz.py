"""DreamerV2 / V-D4RL npz episodes: validated reading, streaming import, export.

One ``.npz`` per episode with ``image`` ``[L, H, W, 3]`` uint8, ``action`` ``[L, A]``,
``reward`` ``[L]``, ``discount`` ``[L]``, ``is_first``, ``is_last``, ``is_terminal`` ``[L]``
(the "incoming" layout of :mod:`coworld_trl.data.layout`), sometimes with extra per-frame
arrays (proprio). Public files are not always clean: some are ragged (keys of different
lengths), some store float64. Every problem raises :class:`DatasetError` naming the file;
float64 arrays are cast to float32 and recorded in the dataset's notes.
"""
from __future__ import annotations

import zipfile
from contextlib import closing
from pathlib import Path
from typing import Iterator

import numpy as np

from coworld_trl.data.dataset import DatasetError, DatasetWriter, OfflineDataset
from coworld_trl.data.layout import incoming_to_ted, ted_to_incoming

REQUIRED_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")


def npz_files(directory: str | Path) -> list[Path]:
    """The ``*.npz`` files of ``directory`` in name order (DreamerV2 names sort by time)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such directory of npz episodes.")
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise DatasetError(f"{directory}: holds no .npz episode files.")
    return files


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array, from the headers only (no data is read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(member)
                shapes[name.removesuffix(".npy")] = (shape, dtype)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise DatasetError(f"{path}: not a readable npz file ({err}); it is truncated or corrupt, "
                           f"re-download it or remove it from the directory.") from err
    return shapes


def check_layout(path: Path, shapes: dict[str, tuple[tuple[int, ...], np.dtype]], *,
                 image_size: int | None, action_dim: int | None) -> int:
    """Keys, lengths, dtypes and sizes from the headers; returns the episode length ``L``."""
    missing = [k for k in REQUIRED_KEYS if k not in shapes]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; a DreamerV2 episode needs {list(REQUIRED_KEYS)}.")
    lengths = {k: shape[0] if shape else 0 for k, (shape, _) in shapes.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{path}: ragged episode, keys have different lengths {lengths}; "
                           f"fix or remove this file (every key needs one row per frame).")
    length = lengths["image"]
    if length < 2:
        raise DatasetError(f"{path}: empty episode ({length} frame(s)); an episode needs a reset frame and one step.")
    image_shape, image_dtype = shapes["image"]
    if image_dtype != np.uint8:
        raise DatasetError(f"{path}: image dtype {image_dtype}; expected uint8 pixels in [0, 255].")
    if len(image_shape) != 4 or image_shape[-1] != 3:
        hint = " (channels first; transpose to [L, H, W, 3])" if len(image_shape) == 4 and image_shape[1] == 3 else ""
        raise DatasetError(f"{path}: image shape {image_shape}; expected [L, H, W, 3]{hint}.")
    if image_shape[1] != image_shape[2] or (image_size is not None and image_shape[1] != image_size):
        raise DatasetError(f"{path}: image size {image_shape[1]}x{image_shape[2]}; expected "
                           f"{image_size or 'square'}x{image_size or ''} images (render or resize to {image_size}).")
    action_shape = shapes["action"][0]
    if len(action_shape) != 2:
        raise DatasetError(f"{path}: action shape {action_shape}; expected [L, action_dim].")
    if action_dim is not None and action_shape[1] != action_dim:
        raise DatasetError(f"{path}: action dim {action_shape[1]}, but the env takes {action_dim}; "
                           f"this file belongs to another env (or pad its actions to {action_dim}).")
    return length


def read_npz_episode(path: Path, *, image_size: int | None = None, action_dim: int | None = None,
                     notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read and validate one episode file; float64 arrays are cast to float32 (noted in ``notes``)."""
    check_layout(path, npz_shapes(path), image_size=image_size, action_dim=action_dim)
    try:
        with np.load(path) as archive:
            episode = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise DatasetError(f"{path}: unreadable array data ({err}); the file is corrupt, re-download or remove it.") \
            from err
    cast = sorted(k for k, v in episode.items() if v.dtype == np.float64)
    for key in cast:
        episode[key] = episode[key].astype(np.float32)
    if cast and notes is not None:
        notes.append(f"{path.name}: float64 {', '.join(cast)} cast to float32")
    for key in FLAG_KEYS:
        episode[key] = episode[key].astype(bool)
    for key in ("reward", "action"):
        bad = ~np.isfinite(episode[key])
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
            raise DatasetError(f"{path}: {key} is NaN or inf at row(s) {rows}; fix or remove this file.")
    return episode


def import_npz(source: str | Path, destination: str | Path, *, env: str | None = None,
               image_size: int | None = None, action_dim: int | None = None, overwrite: bool = False,
               progress: bool = False, description: str | None = None,
               first_episodes: int | None = None) -> OfflineDataset:
    """Convert a directory of npz episodes into a dataset, one episode in memory at a time.

    ``env`` (a registry name) fixes the expected action dim unless given explicitly;
    every file is checked from its headers before anything is written. ``description``
    (how the data was made) goes into the metadata's ``source``. ``first_episodes``: only
    the first N files in name order (a recorder's collection order).
    """
    files = npz_files(source)[:first_episodes]
    if env is not None:
        from coworld_trl.envs import env_info

        action_dim = action_dim if action_dim is not None else env_info(env).action_dim
    headers = [npz_shapes(f) for f in files]
    check_layout(files[0], headers[0], image_size=image_size, action_dim=action_dim)
    size, dim = headers[0]["image"][0][1], headers[0]["action"][0][1]  # one dataset, one size and action dim
    lengths = [check_layout(f, h, image_size=size, action_dim=dim) for f, h in zip(files, headers)]
    notes: list[str] = []
    with closing(_episodes(files, size, dim, notes, progress)) as episodes:  # a refusal closes the progress bar
        rows, final = next(episodes)
        with DatasetWriter(destination, rows, final, capacity_frames=sum(lengths) - len(files),
                           capacity_episodes=len(files), overwrite=overwrite, env=env,
                           source=description or f"import npz {Path(source).resolve()}") as writer:
            writer.notes = notes
            writer.add(rows, final)
            for rows, final in episodes:
                writer.add(rows, final)
    return OfflineDataset(destination)


def _episodes(files: list[Path], image_size: int, action_dim: int, notes: list[str], progress: bool) -> Iterator:
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="npz episodes", unit="ep")
    for path in files:
        yield incoming_to_ted(read_npz_episode(path, image_size=image_size, action_dim=action_dim, notes=notes))


def export_npz(dataset: OfflineDataset, destination: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write every episode as a DreamerV2 npz file ``<index>-<length>.npz`` (compressed)."""
    destination = Path(destination)
    if destination.exists() and any(destination.glob("*.npz")) and not overwrite:
        raise DatasetError(f"{destination} already holds npz files; choose an empty directory or pass overwrite=True.")
    destination.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(dataset.metadata.episodes):
        episode = ted_to_incoming(*dataset.episode(index))
        path = destination / f"{index:06d}-{len(episode['image'])}.npz"
        np.savez_compressed(path, **episode)
        paths.append(path)
    return paths
