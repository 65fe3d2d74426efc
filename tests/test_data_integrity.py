"""A user's dataset is never modified, and damage is caught (coworld_trl.data).

Reading (open, sample, info, validate, export, the training sampler) leaves every file
byte-identical with its mtime, a read-only dataset opens and samples, a truncated file or
a damaged episode index is refused by name with both sizes, and sha256 checksums stored at
write time catch a flipped byte. Datasets are the tiny synthetic ones of test_data.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import SIZE, incoming_episode, write_npz_dir

from coworld_trl.data import DatasetError, OfflineDataset, add_checksums, export_npz, import_npz
from coworld_trl.data.__main__ import main as data_cli
from coworld_trl.data.dataset import METADATA_FILE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset_path(tmp_path) -> Path:
    import_npz(write_npz_dir(tmp_path / "src"), tmp_path / "ds")  # 3 episodes, 61 rows
    return tmp_path / "ds"


def snapshot(root: Path) -> dict[str, tuple]:
    """sha256, size and mtime of every file, mtime of every directory (root included)."""
    state = {".": ("dir", os.stat(root).st_mtime_ns)}
    for p in sorted(root.rglob("*")):
        st = os.stat(p)
        key = p.relative_to(root).as_posix()
        state[key] = ("dir", st.st_mtime_ns) if p.is_dir() else \
            (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return state


def make_read_only(root: Path) -> None:
    """chmod 0o444 every file, 0o555 every directory (a directory needs x to be entered)."""
    for p in [*root.rglob("*"), root]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        os.chmod(p, stat.S_IMODE(os.stat(p).st_mode) | stat.S_IWUSR)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = data_cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


# ------------------------------------------------------------------ reading never writes
def test_open_sample_info_validate_export_and_train_sampler_leave_every_byte_and_mtime(dataset_path, tmp_path, capsys):
    before = snapshot(dataset_path)
    dataset = OfflineDataset(dataset_path)
    buffer = dataset.replay_buffer(batch_size=4, seq_len=5, prefetch=2)
    for _ in range(5):
        batch = buffer.sample().reshape(4, 5)
        batch["pixels"].float().mean()
    dataset.episode(1)
    export_npz(dataset, tmp_path / "exported")
    # the training path: the sampler the run loop uses (actions padded to the agent's width)
    from coworld_trl.training.config import DataConfig
    from coworld_trl.training.factory import dataset_sampler

    sample = dataset_sampler(dataset, DataConfig(batch_size=2, seq_len=4), env_name="dmc/walker_walk",
                             action_dim=8, device=torch.device("cpu"))
    assert sample()["action"].shape == (2, 4, 8)
    # an in-place write to an opened tensor stays in this process (copy-on-write mapping)
    dataset.rows["pixels"][0] = 0
    dataset.episodes["length"][0] = 0
    assert cli(capsys, "info", dataset_path)[0] == 0
    assert cli(capsys, "validate", dataset_path)[0] == 0
    assert cli(capsys, "validate", "--checksum", dataset_path)[0] == 0
    assert snapshot(dataset_path) == before
    assert OfflineDataset(dataset_path).episodes["length"][0] > 0


def test_the_replay_buffer_cannot_be_extended(dataset_path):
    dataset = OfflineDataset(dataset_path)
    buffer = dataset.replay_buffer(batch_size=2, seq_len=4)
    with pytest.raises(DatasetError, match="an offline dataset is read-only"):
        buffer.extend(dataset.rows[:4].clone())


def test_a_read_only_dataset_opens_samples_and_validates(dataset_path, capsys):
    """With its files made read-only, a dataset opens, samples and validates, and no file changes
    (checksums and mtimes). Run as root, the modes stop nothing, so this cannot see a file opened
    for writing and left alone: the unprivileged-user test below checks that."""
    before = snapshot(dataset_path)
    make_read_only(dataset_path)
    try:
        dataset = OfflineDataset(dataset_path)
        batch = dataset.replay_buffer(batch_size=2, seq_len=4, prefetch=1).sample().reshape(2, 4)
        assert batch["pixels"].shape == (2, 4, 3, SIZE, SIZE)
        assert cli(capsys, "validate", "--checksum", dataset_path)[0] == 0
        assert snapshot(dataset_path) == before
    finally:
        make_writable(dataset_path)


# Slow: in a long suite the unprivileged child's multiprocessing resource tracker has died with a
# BrokenPipeError (it passes alone); the same-user checks above (checksums, mtimes) stay in the suite.
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="as root, chmod stops nobody: re-run the read-only check as an unprivileged user")
def test_a_read_only_dataset_opens_and_samples_for_an_unprivileged_user(dataset_path):
    """Root ignores file modes, so the check that matters runs as ``nobody``: writing the files
    is refused to that user, and the dataset still opens, samples and validates."""
    home = Path(tempfile.mkdtemp())
    try:
        os.chmod(home, 0o755)
        copy = home / "ds"
        shutil.copytree(dataset_path, copy)
        before = snapshot(copy)
        make_read_only(copy)
        script = (
            "import sys\n"
            "from coworld_trl.data import OfflineDataset\n"
            "from coworld_trl.data.__main__ import main\n"
            f"path = {str(copy)!r}\n"
            "try:\n"
            "    open(path + '/rows/pixels.memmap', 'r+b')\n"
            "    sys.exit('the files are writable for this user: the test proves nothing')\n"
            "except PermissionError:\n"
            "    pass\n"
            "dataset = OfflineDataset(path)\n"
            "batch = dataset.replay_buffer(batch_size=2, seq_len=4).sample()\n"
            "assert batch['pixels'].shape == (8, 3, 16, 16), batch['pixels'].shape\n"
            "sys.exit(main(['validate', '--checksum', path]))\n"
        )
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                                 script], cwd=REPO, capture_output=True, text=True, timeout=300)
        if "No module named" in result.stderr:
            pytest.skip(f"the unprivileged user cannot import the package: {result.stderr.splitlines()[-1]}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert snapshot(copy) == before
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ size and index checks
@pytest.mark.parametrize("name, size", [("rows/pixels.memmap", 1000), ("episodes/length.memmap", 0)])
def test_a_truncated_file_is_refused_by_open_info_and_validate_without_touching_it(dataset_path, capsys, name, size):
    file = dataset_path / name
    expected = file.stat().st_size
    os.truncate(file, size)
    before = snapshot(dataset_path)
    message = f"{file}: {size} bytes, expected {expected} bytes"
    with pytest.raises(DatasetError) as info:
        OfflineDataset(dataset_path)
    assert str(info.value).startswith(message) and "re-import it with `python -m coworld_trl.data convert" in str(info.value)
    for command in ("validate", "info"):
        code, out, err = cli(capsys, command, dataset_path)
        assert code == 2 and not out
        assert err.startswith(f"error: {message}") and "\n" not in err
    code, _, err = cli(capsys, "checksum", dataset_path)
    assert code == 2 and message in err
    assert snapshot(dataset_path) == before  # still truncated: nothing re-extended it


def test_a_missing_file_is_named(dataset_path):
    (dataset_path / "rows" / "action.memmap").unlink()
    with pytest.raises(DatasetError, match=r"rows/action.memmap: missing \(expected 1464 bytes, 61 x 6 float32\)"):
        OfflineDataset(dataset_path)


def _rewrite_int64(file: Path, values) -> None:
    file.write_bytes(np.asarray(values, np.int64).tobytes())


@pytest.mark.parametrize("damage, message", [
    # what the old loader left behind: the file re-extended with zeros
    (lambda p: _rewrite_int64(p / "episodes" / "length.memmap", [0, 0, 0]),
     r"episodes/length.memmap: episode 0 has length 0; the episode index is damaged"),
    (lambda p: _rewrite_int64(p / "episodes" / "start.memmap", [0, 20, 33]),
     r"episodes/start.memmap: episode 2 starts at row 33, expected 32"),
    (lambda p: _rewrite_int64(p / "episodes" / "length.memmap", [20, 12, 28]),
     r"episodes/length.memmap: episode lengths sum to 60 rows, metadata.json says 61 frames"),
])
def test_a_damaged_episode_index_is_refused(dataset_path, damage, message):
    damage(dataset_path)
    with pytest.raises(DatasetError, match=message):
        OfflineDataset(dataset_path)


def test_validate_checks_every_rows_episode_id(dataset_path, capsys):
    ids = np.fromfile(dataset_path / "rows" / "episode.memmap", np.int64)
    ids[25] = 2
    ids.tofile(dataset_path / "rows" / "episode.memmap")
    OfflineDataset(dataset_path)  # opening reads only the index
    code, _, err = cli(capsys, "validate", dataset_path)
    assert code == 2 and "rows/episode.memmap: row 25 is in episode 2, the episode index says 1" in err


# ------------------------------------------------------------------ checksums
def test_writers_store_checksums_and_validate_checksum_verifies_them(dataset_path, capsys):
    checksums = OfflineDataset(dataset_path).metadata.checksums
    assert checksums["rows/pixels.memmap"].startswith("sha256:") and METADATA_FILE not in checksums
    assert "rows/meta.json" in checksums and "episodes/length.memmap" in checksums
    code, out, _ = cli(capsys, "validate", "--checksum", dataset_path)
    assert code == 0 and json.loads(out)["checksums"] == f"verified ({len(checksums)} files, sha256)"
    code, out, _ = cli(capsys, "validate", dataset_path)
    assert code == 0 and json.loads(out)["checksums"].startswith("stored, not verified")


def test_a_flipped_byte_is_caught_by_validate_checksum_naming_the_file(dataset_path, capsys):
    file = dataset_path / "rows" / "pixels.memmap"
    data = bytearray(file.read_bytes())
    data[1234] ^= 0x01
    file.write_bytes(bytes(data))
    OfflineDataset(dataset_path)  # the size is right: opening does not read the pixels
    code, out, err = cli(capsys, "validate", "--checksum", dataset_path)
    assert code == 2 and not out and "\n" not in err
    assert f"1 file(s) differ from their checksum: {file}: sha256 " in err
    with pytest.raises(DatasetError, match="already has checksums"):
        add_checksums(dataset_path)  # recomputing would bless the damage


def test_an_old_dataset_without_checksums_opens_and_the_checksum_command_adds_them(dataset_path, capsys):
    meta_file = dataset_path / METADATA_FILE
    old = json.loads(meta_file.read_text())
    del old["checksums"]
    meta_file.write_text(json.dumps(old, indent=2))
    assert OfflineDataset(dataset_path).metadata.checksums is None
    code, out, _ = cli(capsys, "validate", dataset_path)
    assert code == 0 and json.loads(out)["checksums"].startswith("none stored")
    code, out, err = cli(capsys, "validate", "--checksum", dataset_path)
    assert code == 2 and not out and "\n" not in err
    assert "no checksums" in err and f"python -m coworld_trl.data checksum {dataset_path}" in err
    data_before = {k: v for k, v in snapshot(dataset_path).items() if k not in (".", METADATA_FILE)}
    code, out, _ = cli(capsys, "checksum", dataset_path)
    assert code == 0 and json.loads(out)["checksums"] == "stored (16 files, sha256)"
    new = json.loads(meta_file.read_text())
    assert {k: v for k, v in new.items() if k != "checksums"} == old  # every other key kept
    assert sorted(p.name for p in dataset_path.iterdir()) == ["episodes", "final", METADATA_FILE, "rows"]  # no temp file
    assert {k: v for k, v in snapshot(dataset_path).items() if k not in (".", METADATA_FILE)} == data_before
    assert cli(capsys, "validate", "--checksum", dataset_path)[0] == 0
    code, _, err = cli(capsys, "checksum", dataset_path)
    assert code == 2 and "already has checksums" in err and "--overwrite" in err
    assert cli(capsys, "checksum", "--overwrite", dataset_path)[0] == 0


def test_a_malformed_checksum_table_is_refused(dataset_path):
    meta_file = dataset_path / METADATA_FILE
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "checksums": ["abc"]}))
    with pytest.raises(DatasetError, match="checksums is not a"):
        OfflineDataset(dataset_path)


def test_checksum_flag_on_raw_input_is_refused(tmp_path, capsys):
    src = write_npz_dir(tmp_path / "src", lengths=(5,))
    code, _, err = cli(capsys, "validate", "--checksum", src)
    assert code == 2 and "npz input has none" in err


def test_hdf5_import_stores_checksums(tmp_path):
    from test_data import _write_shard

    from coworld_trl.data.hdf5 import import_hdf5

    _write_shard(tmp_path / "shard.hdf5", [incoming_episode(7)])
    dataset = import_hdf5(tmp_path / "shard.hdf5", tmp_path / "ds")
    assert dataset.metadata.checksums and dataset.verify_checksums() == len(dataset.metadata.checksums)
