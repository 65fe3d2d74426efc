"""OnlineReplay: sparse files in the run directory, zero-copy checkpoints, run-wide episode ids."""
from __future__ import annotations

import functools

import pytest
import torch
from tensordict import TensorDict

from coworld_trl.training.replay import OnlineReplay

# The storage mechanics below hold for either mode; rows as collected keep the cases small.
RowReplay = functools.partial(OnlineReplay, whole_episodes=False)


def steps(episode_lengths: list[int], *, first_step: int = 0, pixels=(3, 8, 8), ends=()) -> TensorDict:
    """Collector-like rows: episodes of the given lengths; ``t`` counts steps inside each episode
    (the first may continue an episode at ``first_step``); the episodes whose index is in ``ends``
    end at their last row (``next.done``)."""
    t = torch.cat([torch.arange(n) + (first_step if i == 0 else 0) for i, n in enumerate(episode_lengths)])
    n = t.numel()
    done = torch.zeros(n, 1, dtype=torch.bool)
    last_rows = torch.tensor(episode_lengths).cumsum(0) - 1
    for i in ends:
        done[last_rows[i]] = True
    return TensorDict(
        pixels=torch.randint(0, 256, (n, *pixels), dtype=torch.uint8),
        t=t,
        is_init=(t == 0).unsqueeze(-1),
        action=torch.randn(n, 2),
        collector=TensorDict(traj_ids=torch.zeros(n, dtype=torch.long), batch_size=[n]),
        next=TensorDict(reward=torch.randn(n, 1), done=done, batch_size=[n]),
        batch_size=[n],
    )


def assert_slices_inside_episodes(replay: OnlineReplay, draws: int = 50, batch: int = 16) -> None:
    """Every sampled slice is one episode: one id and consecutive in-episode steps."""
    for _ in range(draws):
        sample = replay.sample(batch)
        assert (sample["episode"] == sample["episode"][:, :1]).all()
        assert (sample["t"].diff(dim=1) == 1).all()


def disk_bytes(folder) -> int:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def test_files_are_sparse_and_a_checkpoint_copies_nothing(tmp_path):
    """A 100k-row pixel replay with 600 rows written uses disk for the rows, not the capacity (1.2 GB),
    and its state_dict writes no rows and makes no folder."""
    replay = RowReplay(tmp_path / "replay", capacity=100_000, seq_len=8)
    replay.extend(steps([600], pixels=(3, 64, 64)))
    pixels_file = next((tmp_path / "replay").rglob("pixels.memmap"))
    assert pixels_file.stat().st_size == 100_000 * 3 * 64 * 64
    before = disk_bytes(tmp_path)
    assert before < 20 * 2**20
    state = replay.state_dict()
    assert state["len"] == 600 and state["writer"]["_cursor"] == 600
    assert disk_bytes(tmp_path) - before < 2**20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replay"]


def test_episode_ids_and_slices_across_batches_and_a_full_ring(tmp_path):
    """Episodes that span collector batches keep one id; after the ring wraps, slices still never
    join the newest rows to the oldest."""
    replay = RowReplay(tmp_path / "replay", capacity=100, seq_len=6)
    replay.extend(steps([10, 15]))
    replay.extend(steps([5, 20], first_step=15))  # the second episode goes on, then a new one
    ids = replay.buffer.storage[:]["episode"]
    assert ids.tolist() == [0] * 10 + [1] * 20 + [2] * 20
    for _ in range(4):
        replay.extend(steps([9, 9, 9, 9]))
    assert len(replay) == 100 and replay.buffer.writer.state_dict()["_cursor"] == 94  # wrapped
    assert_slices_inside_episodes(replay)


def test_resume_restores_length_and_cursor_and_numbers_after_every_id_in_the_files(tmp_path):
    """Rows written after the checkpoint (a kill) stay in the files; the reopened replay has the
    checkpoint's length and cursor, new episodes get ids above the lost ones, and with a full ring
    no slice joins a lost row to a new one."""
    replay = RowReplay(tmp_path / "replay", capacity=60, seq_len=5)
    replay.extend(steps([30, 30]))
    replay.extend(steps([8], first_step=30))  # wraps: the ring is full
    state = replay.state_dict()
    replay.extend(steps([2, 10, 10], first_step=38))  # lost: ids 1 (continued), 2, 3 over rows 8..29
    lost_ids = replay.buffer.storage._storage["episode"].clone()

    resumed = RowReplay(tmp_path / "replay", capacity=60, seq_len=5)
    resumed.load_state_dict(state)
    assert len(resumed) == 60 and resumed.buffer.writer.state_dict() == state["writer"]
    assert torch.equal(resumed.buffer.storage._storage["episode"], lost_ids)  # reopened in place, not copied
    resumed.extend(steps([7]))
    new_ids = resumed.buffer.storage[:]["episode"][8:15]
    assert (new_ids == lost_ids.max() + 1).all()
    assert_slices_inside_episodes(resumed)


def test_a_reopened_replay_checkpoints_again_before_any_write(tmp_path):
    """A replay reopened from a checkpoint and checkpointed again before any write (the source
    replay during DV2 Finetune's finetuning) gives the same state, without TorchRL's warning that
    it "may not be saved properly", and reopens from it with the same rows."""
    import warnings

    replay = RowReplay(tmp_path / "replay", capacity=60, seq_len=5)
    replay.extend(steps([30, 12]))
    state = replay.state_dict()
    resumed = RowReplay(tmp_path / "replay", capacity=60, seq_len=5)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resumed.state_dict() == state
    again = RowReplay(tmp_path / "replay", capacity=60, seq_len=5)
    again.load_state_dict(resumed.state_dict())
    assert len(again) == 42 and torch.equal(again.buffer.storage[:]["episode"], replay.buffer.storage[:]["episode"])


def test_fresh_start_discards_stale_files_but_not_a_replay_in_use(tmp_path):
    stale = RowReplay(tmp_path / "replay", capacity=50, seq_len=4)
    stale.extend(steps([20]))
    fresh = RowReplay(tmp_path / "replay", capacity=50, seq_len=4)
    fresh.discard_files()
    assert not (tmp_path / "replay").exists()
    fresh.extend(steps([10]))
    assert fresh.buffer.storage[:]["episode"].tolist() == [0] * 10
    with pytest.raises(RuntimeError, match="in use"):
        fresh.discard_files()


def test_batched_collector_output_is_refused(tmp_path):
    replay = RowReplay(tmp_path / "replay", capacity=50, seq_len=4)
    with pytest.raises(ValueError, match=r"batch_size=\(2, 5\)"):
        replay.extend(steps([10]).reshape(2, 5))


def test_whole_episodes_are_stored_when_they_end_and_the_one_being_collected_is_never_sampled(tmp_path):
    """DreamerV2's replay: an episode reaches the storage with its last row, across batches and
    with several ends in one batch; what is sampled never comes from the episode being collected."""
    replay = OnlineReplay(tmp_path / "replay", capacity=1_000, seq_len=4)
    replay.extend(steps([12]))
    assert len(replay) == 0
    replay.extend(steps([8, 6, 5], first_step=12, ends=(0, 1)))  # episode 0 (20 rows) and 1 end, 2 goes on
    assert len(replay) == 26
    assert replay.buffer.storage[:]["episode"].tolist() == [0] * 20 + [1] * 6
    assert replay.buffer.storage[:]["t"][:20].tolist() == list(range(20))
    for _ in range(20):
        assert (replay.sample(8)["episode"] <= 1).all()
    replay.extend(steps([3], first_step=5, ends=(0,)))
    assert len(replay) == 34 and replay.buffer.storage[:]["episode"][26:].tolist() == [2] * 8
    assert_slices_inside_episodes(replay)


def test_rows_of_an_unfinished_episode_are_not_checkpointed(tmp_path):
    """A checkpoint taken mid-episode keeps the stored episodes; the resumed replay starts the next
    episode clean (the collector restarts the env), so no stored slice holds rows of both."""
    replay = OnlineReplay(tmp_path / "replay", capacity=100, seq_len=4)
    replay.extend(steps([10, 7], ends=(0,)))
    state = replay.state_dict()
    assert state["len"] == 10
    resumed = OnlineReplay(tmp_path / "replay", capacity=100, seq_len=4)
    resumed.load_state_dict(state)
    resumed.extend(steps([9], ends=(0,)))
    assert len(resumed) == 19 and resumed.buffer.storage[:]["episode"].tolist() == [0] * 10 + [1] * 9
