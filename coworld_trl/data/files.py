"""The files of a dataset on disk: read-only memory maps, size checks, sha256 checksums.

A dataset's tensors are stored by tensordict (``TensorDict.memmap``): a directory holds a
``meta.json`` naming each leaf's dtype and shape and one raw ``<key>.memmap`` file per leaf
(a nested TensorDict is a sub-directory). Reading them back with
``TensorDict.load_memmap`` is not safe for a user's data: it maps every file shared and
writable whenever the process may write it (always, as root), and a file shorter than its
shape is silently re-extended with zeros. So this module reads the same layout itself:

- :func:`read_layout` parses the ``meta.json`` files into :class:`StoredTensor` entries;
- :func:`check_sizes` compares each file's size (``os.stat``, no data read) with
  ``numel x itemsize`` and names the file, both sizes and the fix;
- :func:`open_read_only` maps each file with ``torch.from_file(shared=False)``: the file is
  opened ``O_RDONLY`` and mapped copy-on-write (``MAP_PRIVATE``), lazily, so nothing is read
  until a page is touched, a read-only (``chmod 0o444``) dataset opens, and an in-place
  write to a tensor stays in this process's memory and never reaches the file;
- :func:`file_checksums` / :func:`compare_checksums`: streamed sha256 of every file but
  ``metadata.json`` (which stores them), relative paths as keys.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDict

from coworld_trl.errors import CoWorldError

TENSORDICT_META = "meta.json"  # tensordict's per-directory index of leaves
CHECKSUM_ALGORITHM = "sha256"


class DatasetError(CoWorldError, ValueError):
    """A dataset or input file is unusable; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class StoredTensor:
    """One leaf of a memory-mapped TensorDict: its file, dtype and shape."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * self.dtype.itemsize

    def describe(self) -> str:
        return f"{' x '.join(map(str, self.shape)) or 'scalar'} {str(self.dtype).removeprefix('torch.')}"


def _dtype(name: str, meta: Path) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise DatasetError(f"{meta}: unknown dtype {name!r}; the file is damaged, re-copy or re-create the dataset.")
    return dtype


def read_layout(directory: Path, fix: str) -> tuple[tuple[int, ...], dict[tuple[str, ...], StoredTensor]]:
    """``(batch shape, {nested key: StoredTensor})`` of a tensordict memmap directory, from
    its ``meta.json`` files only. ``fix`` ends every error message."""
    meta = Path(directory) / TENSORDICT_META
    try:
        values = json.loads(meta.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{meta}: missing; the dataset is incomplete, {fix}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{meta}: corrupt JSON ({err}); {fix}") from err
    if not isinstance(values, dict) or not isinstance(values.get("shape"), list):
        raise DatasetError(f"{meta}: not a tensordict index (no batch shape); {fix}")
    leaves: dict[tuple[str, ...], StoredTensor] = {}
    for key, entry in values.items():
        if not isinstance(entry, dict):
            continue  # batch shape, device, class name
        if "type" in entry:  # a nested TensorDict: a sub-directory
            _, nested = read_layout(Path(directory) / key, fix)
            leaves.update({(key, *sub): leaf for sub, leaf in nested.items()})
            continue
        if entry.get("is_nested") or "dtype" not in entry or "shape" not in entry:
            raise DatasetError(f"{meta}: entry {key!r} is not a plain tensor; {fix}")
        leaves[(key,)] = StoredTensor(Path(directory) / f"{key}.memmap", _dtype(entry["dtype"], meta),
                                      tuple(int(d) for d in entry["shape"]))
    return tuple(values["shape"]), leaves


def check_sizes(leaves: dict[tuple[str, ...], StoredTensor], fix: str) -> None:
    """Every file exists and holds exactly ``numel x itemsize`` bytes (``os.stat`` only)."""
    for leaf in leaves.values():
        try:
            actual = os.stat(leaf.file).st_size
        except FileNotFoundError as err:
            raise DatasetError(f"{leaf.file}: missing (expected {leaf.nbytes} bytes, {leaf.describe()}); {fix}") from err
        if actual != leaf.nbytes:
            raise DatasetError(f"{leaf.file}: {actual} bytes, expected {leaf.nbytes} bytes ({leaf.describe()}); "
                               f"the file was truncated or damaged after it was written, {fix}")


def open_read_only(batch_shape: tuple[int, ...], leaves: dict[tuple[str, ...], StoredTensor]) -> TensorDict:
    """A TensorDict of copy-on-write memory maps of the (size-checked) files; see the module docstring."""
    tensors = {}
    for key, leaf in leaves.items():
        numel = leaf.nbytes // leaf.dtype.itemsize
        if numel == 0:
            tensor = torch.empty(leaf.shape, dtype=leaf.dtype)
        else:
            tensor = torch.from_file(str(leaf.file), shared=False, size=numel, dtype=leaf.dtype).view(leaf.shape)
        tensors[key] = tensor
    td = TensorDict({}, batch_size=batch_shape)
    for key, tensor in tensors.items():
        td.set(key, tensor)
    return td


# ------------------------------------------------------------------ checksums
def data_files(root: Path, skip: str) -> list[str]:
    """Every regular file under ``root`` but ``skip`` (the metadata), as sorted relative posix paths."""
    root = Path(root)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if f != skip)


def sha256(file: Path) -> str:
    """Streamed (constant memory) sha256 hex digest of ``file``."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, CHECKSUM_ALGORITHM).hexdigest()


def file_checksums(root: Path, skip: str, *, progress: bool = False) -> dict[str, str]:
    """``{relative path: "sha256:<hex>"}`` of every file under ``root`` but ``skip``."""
    files = data_files(root, skip)
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="sha256", unit="file", disable=None)  # silent unless a terminal
    return {name: f"{CHECKSUM_ALGORITHM}:{sha256(Path(root) / name)}" for name in files}


def compare_checksums(root: Path, expected: dict[str, str], *, progress: bool = False) -> list[str]:
    """The files whose content differs from ``expected`` (or that are missing), one phrase each."""
    problems = []
    names = sorted(expected)
    if progress:
        from tqdm import tqdm

        names = tqdm(names, desc="sha256", unit="file", disable=None)
    for name in names:
        algorithm, _, digest = expected[name].partition(":")
        file = Path(root) / name
        if algorithm != CHECKSUM_ALGORITHM:
            problems.append(f"{file}: unknown checksum algorithm {algorithm!r}")
        elif not file.is_file():
            problems.append(f"{file}: missing")
        else:
            actual = sha256(file)
            if actual != digest:
                problems.append(f"{file}: sha256 {actual[:12]}..., expected {digest[:12]}...")
    return problems


def write_json_atomic(file: Path, values: dict) -> None:
    """Write ``values`` to ``file`` through a temporary sibling and a rename: a reader sees
    the old file or the new one, never half of one."""
    file = Path(file)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(values, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
