"""Tests for coworld_trl.data: npz / hdf5 import, the on-disk format, validation errors,
sequence sampling, export round trips and the CLI. Every dataset is synthetic and small
(16x16 images unless an env is involved)."""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from coworld_trl.data import DatasetError, OfflineDataset, export_npz, import_npz
from coworld_trl.data.__main__ import main as data_cli
from coworld_trl.data.dataset import METADATA_FILE

SIZE = 16


def incoming_episode(length: int, *, action_dim: int = 6, size: int = SIZE, seed: int = 0, terminal: bool = False,
                     extra: bool = False) -> dict[str, np.ndarray]:
    """A DreamerV2-layout episode: row 0 is the reset (zero action and reward)."""
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, (length, action_dim)).astype(np.float32)
    action[0] = 0
    reward = rng.random(length).astype(np.float32)
    reward[0] = 0
    is_terminal = np.zeros(length, bool)
    is_terminal[-1] = terminal
    episode = dict(
        image=rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8), action=action, reward=reward,
        discount=(~is_terminal).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0],
        is_last=np.eye(1, length, length - 1, dtype=bool)[0], is_terminal=is_terminal,
    )
    if extra:
        episode["proprio"] = rng.normal(size=(length, 5)).astype(np.float32)
    return episode


def write_npz_dir(directory: Path, lengths=(21, 13, 30), **kwargs) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, length in enumerate(lengths):
        np.savez_compressed(directory / f"ep{i:03d}.npz", **incoming_episode(length, seed=i, **kwargs))
    return directory


# ------------------------------------------------------------------ layout and round trips
def test_reward_and_action_at_a_known_row_land_on_the_right_transition(tmp_path):
    """npz row k holds (o_k, a_{k-1}, r_k): after import, TED row k-1 holds a_{k-1} and next.reward r_k,
    and row k holds o_k."""
    episode = incoming_episode(10, seed=3)
    episode["reward"][4] = 7.0
    episode["action"][4] = 0.5
    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "a.npz", **episode)
    dataset = import_npz(src, tmp_path / "ds")
    rows = dataset.rows
    assert rows.shape[0] == 9
    assert rows["next", "reward"][3].item() == 7.0 and torch.all(rows["action"][3] == 0.5)
    assert torch.equal(rows["pixels"][4], torch.from_numpy(episode["image"][4]).permute(2, 0, 1))
    assert rows["is_init"][:, 0].tolist() == [True] + [False] * 8
    assert rows["next", "done"][:, 0].tolist() == [False] * 8 + [True]
    assert torch.equal(dataset.final["pixels"][0], torch.from_numpy(episode["image"][-1]).permute(2, 0, 1))


def test_terminal_and_truncated_flags(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "a.npz", **incoming_episode(6, terminal=True))
    np.savez(src / "b.npz", **incoming_episode(6, terminal=False))
    rows = import_npz(src, tmp_path / "ds").rows
    assert rows["next", "terminated"][:, 0].tolist() == [False] * 4 + [True] + [False] * 5
    assert rows["next", "truncated"][:, 0].tolist() == [False] * 9 + [True]


def test_npz_import_export_import_is_lossless(tmp_path):
    """npz -> dataset -> npz gives back every array (extra proprio keys included), and a
    second import gives identical rows, final observations and metadata statistics."""
    src = write_npz_dir(tmp_path / "src", extra=True)
    first = import_npz(src, tmp_path / "ds1")
    exported = export_npz(first, tmp_path / "npz")
    for original, written in zip(sorted(src.glob("*.npz")), exported):
        with np.load(original) as a, np.load(written) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{original.name}:{key}")
    second = import_npz(tmp_path / "npz", tmp_path / "ds2")
    assert (first.rows == second.rows).all() and (first.final == second.final).all()
    assert first.metadata.observation_keys == ["pixels", "proprio"]
    for field in ("episodes", "frames", "return_mean", "return_std", "action_dim", "image_size"):
        assert getattr(first.metadata, field) == getattr(second.metadata, field)


def test_metadata_records_counts_returns_and_source(tmp_path):
    src = write_npz_dir(tmp_path / "src", lengths=(5, 9))
    meta = import_npz(src, tmp_path / "ds").metadata
    returns = [incoming_episode(n, seed=i)["reward"].sum() for i, n in enumerate((5, 9))]
    assert (meta.episodes, meta.frames, meta.action_dim, meta.image_size) == (2, 12, 6, SIZE)
    assert meta.return_mean == pytest.approx(np.mean(returns), rel=1e-5)
    assert meta.return_max == pytest.approx(max(returns), rel=1e-5)
    assert meta.source.startswith("import npz") and meta.format_version == 1
    saved = json.loads((tmp_path / "ds" / METADATA_FILE).read_text())
    assert saved["frames"] == 12


def test_opened_dataset_is_memory_mapped_read_only(tmp_path):
    """Every stored file is mapped into the process privately (copy-on-write, ``p`` in
    /proc/self/maps), none shared-writable (``s``): opening reads nothing and writes nothing."""
    dataset = import_npz(write_npz_dir(tmp_path / "src"), tmp_path / "ds")
    del dataset
    gc.collect()
    reopened = OfflineDataset(tmp_path / "ds")
    maps = Path("/proc/self/maps").read_text().splitlines()
    for file in sorted((tmp_path / "ds").rglob("*.memmap")):
        perms = {line.split()[1] for line in maps if line.endswith(str(file))}
        assert perms and all(p.endswith("p") for p in perms), (file, perms)
    assert len(reopened) == reopened.rows.shape[0] == 61


# ------------------------------------------------------------------ broken inputs
def _single(tmp_path: Path, episode: dict, name: str = "bad.npz") -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    np.savez(src / name, **episode)
    return src


def _broken(kind: str, tmp_path: Path) -> Path:
    episode = incoming_episode(8)
    if kind == "ragged":
        episode["action"] = episode["action"][:-1]
    elif kind == "channels_first":
        episode["image"] = np.ascontiguousarray(episode["image"].transpose(0, 3, 1, 2))
    elif kind == "float_image":
        episode["image"] = episode["image"].astype(np.float32)
    elif kind == "empty":
        episode = {k: v[:1] for k, v in episode.items()}
    elif kind == "nan_reward":
        episode["reward"][5] = np.nan
    elif kind == "missing_key":
        del episode["is_terminal"]
    src = _single(tmp_path, episode)
    if kind == "truncated_zip":
        path = src / "bad.npz"
        path.write_bytes(path.read_bytes()[:-200])
    return src


@pytest.mark.parametrize("kind, message", [
    ("ragged", r"ragged episode, keys have different lengths"),
    ("channels_first", r"channels first; transpose to \[L, H, W, 3\]"),
    ("float_image", r"image dtype float32; expected uint8"),
    ("empty", r"empty episode \(1 frame"),
    ("nan_reward", r"reward is NaN or inf at row\(s\) \[5\]"),
    ("missing_key", r"missing key\(s\) \['is_terminal'\]"),
    ("truncated_zip", r"truncated or corrupt"),
])
def test_broken_npz_gives_a_clear_error_naming_the_file_and_writes_nothing(tmp_path, kind, message):
    src = _broken(kind, tmp_path)
    with pytest.raises(DatasetError, match=message) as info:
        import_npz(src, tmp_path / "ds")
    assert "bad.npz" in str(info.value)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.partial-*")), "a partial dataset was left behind"


def test_a_bad_file_after_good_ones_leaves_no_dataset(tmp_path):
    """Values are checked while streaming: the NaN in the last file aborts the whole import."""
    src = write_npz_dir(tmp_path / "src", lengths=(6, 6))
    bad = incoming_episode(6)
    bad["reward"][2] = np.inf
    np.savez(src / "ep999.npz", **bad)
    with pytest.raises(DatasetError, match="ep999.npz: reward is NaN or inf"):
        import_npz(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.partial-*"))


def test_float64_is_cast_with_a_note(tmp_path):
    episode = incoming_episode(6)
    episode["reward"] = episode["reward"].astype(np.float64)
    episode["action"] = episode["action"].astype(np.float64)
    dataset = import_npz(_single(tmp_path, episode, "f64.npz"), tmp_path / "ds")
    assert dataset.rows["next", "reward"].dtype == torch.float32
    assert dataset.metadata.notes == ["f64.npz: float64 action, reward cast to float32"]


def test_action_dim_and_image_size_are_checked_against_the_env(tmp_path):
    src = write_npz_dir(tmp_path / "src", action_dim=4, size=64)
    with pytest.raises(DatasetError, match="action dim 4, but the env takes 6"):
        import_npz(src, tmp_path / "ds", env="dmc/walker_walk")
    with pytest.raises(DatasetError, match="image size 64x64; expected 32x32"):
        import_npz(src, tmp_path / "ds", image_size=32)
    dataset = import_npz(src, tmp_path / "ds", env="metaworld/button-press")
    assert dataset.metadata.env == "metaworld/button-press"


def test_mixed_image_sizes_are_refused(tmp_path):
    src = write_npz_dir(tmp_path / "src", lengths=(5,))
    np.savez(src / "ep900.npz", **incoming_episode(5, size=32))
    with pytest.raises(DatasetError, match="ep900.npz: image size 32x32; expected 16x16"):
        import_npz(src, tmp_path / "ds")


def test_existing_destination_is_refused_unless_overwrite(tmp_path):
    src = write_npz_dir(tmp_path / "src", lengths=(5,))
    import_npz(src, tmp_path / "ds")
    with pytest.raises(DatasetError, match="already exists"):
        import_npz(src, tmp_path / "ds")
    assert import_npz(src, tmp_path / "ds", overwrite=True).metadata.episodes == 1


def test_opening_a_non_dataset_or_a_damaged_one_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset directory"):
        OfflineDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a coworld_trl dataset"):
        OfflineDataset(tmp_path / "empty")
    import_npz(write_npz_dir(tmp_path / "src", lengths=(5,)), tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / METADATA_FILE).read_text())
    (tmp_path / "ds" / METADATA_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version=99"):
        OfflineDataset(tmp_path / "ds")


# ------------------------------------------------------------------ sampling
def test_sampled_sequences_never_cross_an_episode_boundary(tmp_path):
    """Many short episodes of different lengths: every [T] slice is one episode's consecutive
    rows; episodes shorter than T are never sampled."""
    lengths = (9, 4, 15, 11, 6, 30, 8)  # TED rows: length - 1
    dataset = import_npz(write_npz_dir(tmp_path / "src", lengths=lengths), tmp_path / "ds")
    seq_len = 7
    buffer = dataset.replay_buffer(batch_size=8, seq_len=seq_len, prefetch=2)
    starts = dataset.episodes["start"]
    seen = set()
    for _ in range(40):
        batch = buffer.sample().reshape(8, seq_len)
        episode = batch["episode"]
        assert torch.all(episode == episode[:, :1]), "a slice spans two episodes"
        for b in range(8):
            ep = int(episode[b, 0])
            seen.add(ep)
            assert int(dataset.episodes["length"][ep]) >= seq_len
            # consecutive rows of that episode: compare with the stored rows
            rows = dataset.rows["pixels"][int(starts[ep]):int(starts[ep]) + int(dataset.episodes["length"][ep])]
            matches = [i for i in range(rows.shape[0] - seq_len + 1) if torch.equal(rows[i], batch["pixels"][b, 0])]
            assert matches and torch.equal(rows[matches[0]:matches[0] + seq_len], batch["pixels"][b])
    assert seen == {i for i, n in enumerate(lengths) if n - 1 >= seq_len}


def test_sequence_longer_than_every_episode_is_refused(tmp_path):
    dataset = import_npz(write_npz_dir(tmp_path / "src", lengths=(5, 6)), tmp_path / "ds")
    with pytest.raises(DatasetError, match="seq_len=50 is longer than every episode"):
        dataset.replay_buffer(batch_size=2, seq_len=50)


# ------------------------------------------------------------------ hdf5
def _write_shard(path: Path, episodes: list[dict], tail: int = 3) -> None:
    """V-D4RL layout: CHW observations, step_type 0/1/2, plus an unfinished episode at the end."""
    h5py = pytest.importorskip("h5py")
    parts = []
    for ep in episodes:
        n = len(ep["reward"])
        step_type = np.ones(n, np.uint8)
        step_type[0], step_type[-1] = 0, 2
        parts.append(dict(observation=ep["image"].transpose(0, 3, 1, 2), action=ep["action"], reward=ep["reward"],
                          discount=ep["discount"], step_type=step_type))
    unfinished = incoming_episode(tail, seed=99)
    parts.append(dict(observation=unfinished["image"].transpose(0, 3, 1, 2), action=unfinished["action"],
                      reward=unfinished["reward"], discount=unfinished["discount"], step_type=np.array([0, 1, 1], np.uint8)))
    with h5py.File(path, "w") as f:
        for key in parts[0]:
            f.create_dataset(key, data=np.concatenate([p[key] for p in parts]))


def test_hdf5_shards_import_like_the_same_npz_episodes(tmp_path):
    """The same episodes as hdf5 (CHW, step_type) and as npz give identical datasets; the
    unfinished episode at the end of the shard is skipped."""
    from coworld_trl.data.hdf5 import import_hdf5

    episodes = [incoming_episode(n, seed=i) for i, n in enumerate((7, 12))]
    _write_shard(tmp_path / "shard.hdf5", episodes)
    src = tmp_path / "npz"
    src.mkdir()
    for i, ep in enumerate(episodes):
        np.savez(src / f"{i}.npz", **ep)
    from_hdf5 = import_hdf5(tmp_path / "shard.hdf5", tmp_path / "ds_h5")
    from_npz = import_npz(src, tmp_path / "ds_npz")
    assert from_hdf5.metadata.episodes == 2 and from_hdf5.metadata.frames == 6 + 11
    assert (from_hdf5.rows == from_npz.rows).all() and (from_hdf5.final == from_npz.final).all()


def test_broken_hdf5_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    from coworld_trl.data.hdf5 import import_hdf5

    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("observation", data=np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"bad.hdf5: missing dataset\(s\)"):
        import_hdf5(tmp_path / "bad.hdf5", tmp_path / "ds")
    (tmp_path / "cut.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DatasetError, match="cut.hdf5: not a readable hdf5 file"):
        import_hdf5(tmp_path / "cut.hdf5", tmp_path / "ds")


# ------------------------------------------------------------------ CLI
def test_cli_convert_info_validate_and_export(tmp_path, capsys):
    src = write_npz_dir(tmp_path / "src", lengths=(5, 9))
    assert data_cli(["convert", str(src), str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    assert data_cli(["info", str(tmp_path / "ds")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["episodes"], summary["frames"], summary["action_dim"], summary["image_size"]) == (2, 12, 6, SIZE)
    assert summary["episode_length_min"] == 4 and summary["episode_length_max"] == 8
    assert data_cli(["validate", str(src)]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 12
    assert data_cli(["convert", str(tmp_path / "ds"), str(tmp_path / "back")]) == 0
    assert len(list((tmp_path / "back").glob("*.npz"))) == 2


def test_cli_reports_a_broken_file_in_one_line(tmp_path, capsys):
    src = _broken("ragged", tmp_path)
    assert data_cli(["validate", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.npz: ragged episode" in err and "\n" not in err
