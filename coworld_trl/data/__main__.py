"""Command line for offline datasets::

    python -m coworld_trl.data info DATASET
    python -m coworld_trl.data validate SOURCE [--env NAME] [--checksum]   # a dataset, npz directory or hdf5 shards
    python -m coworld_trl.data convert SOURCE DEST [--env NAME] [--overwrite]
        SOURCE: npz directory or hdf5 shard(s) -> DEST dataset; or a dataset -> DEST npz directory
    python -m coworld_trl.data checksum DATASET [--overwrite]   # store sha256s in an older dataset's metadata

Every command but ``convert`` and ``checksum`` only reads: datasets are opened read-only. A
bad input is refused in one line ``error: ...`` with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coworld_trl.data.dataset import METADATA_FILE, DatasetError, OfflineDataset, add_checksums
from coworld_trl.errors import CoWorldError


def source_kind(path: Path) -> str:
    """``dataset``, ``npz`` or ``hdf5``."""
    if (path / METADATA_FILE).exists():
        return "dataset"
    if path.is_file() and path.suffix in (".hdf5", ".h5") or path.is_dir() and any(path.glob("*.h*5")):
        return "hdf5"
    if path.is_dir() and any(path.glob("*.npz")):
        return "npz"
    raise DatasetError(f"{path}: neither a dataset (no {METADATA_FILE}), a directory of .npz episodes nor hdf5 shards.")


def info(dataset: OfflineDataset) -> dict:
    m = dataset.metadata
    lengths = dataset.episodes["length"]
    return dict(path=str(dataset.path), env=m.env, episodes=m.episodes, frames=m.frames,
                episode_length_min=int(lengths.min()), episode_length_max=int(lengths.max()),
                return_mean=m.return_mean, return_std=m.return_std, return_min=m.return_min,
                return_max=m.return_max, action_dim=m.action_dim, image_size=m.image_size,
                observation_keys=m.observation_keys, source=m.source, notes=m.notes)


def validate(path: Path, env: str | None, checksum: bool = False) -> dict:
    """Every check an import runs, without writing anything; the summary of what is there.

    A dataset: the opening checks (file sizes, episode index), every row's episode id and,
    with ``checksum``, every file's sha256 against ``metadata.json`` (a full read)."""
    kind = source_kind(path)
    if checksum and kind != "dataset":
        raise DatasetError(f"{path}: --checksum verifies a dataset's stored checksums; {kind} input has none "
                           f"(drop --checksum).")
    if kind == "dataset":
        dataset = OfflineDataset(path)
        dataset.check_rows()
        if env is not None:
            from coworld_trl.envs import env_info

            if dataset.metadata.action_dim != env_info(env).action_dim:
                raise DatasetError(f"{path}: action dim {dataset.metadata.action_dim}, {env} takes "
                                   f"{env_info(env).action_dim}; the dataset belongs to another env (check --env).")
        if checksum:
            checksums = f"verified ({dataset.verify_checksums(progress=True)} files, sha256)"
        elif dataset.metadata.checksums:
            checksums = "stored, not verified (pass --checksum)"
        else:
            checksums = f"none stored (add them: python -m coworld_trl.data checksum {path})"
        return {"kind": kind, **info(dataset), "checksums": checksums}
    action_dim = None
    if env is not None:
        from coworld_trl.envs import env_info

        action_dim = env_info(env).action_dim
    if kind == "npz":
        from coworld_trl.data.npz import npz_files, read_npz_episode

        notes, frames, returns = [], 0, []
        files = npz_files(path)
        for file in files:
            episode = read_npz_episode(file, action_dim=action_dim, notes=notes)
            frames += len(episode["image"]) - 1
            returns.append(float(episode["reward"][1:].sum()))
        return dict(kind=kind, files=len(files), episodes=len(files), frames=frames,
                    return_mean=sum(returns) / len(returns), notes=notes)
    from coworld_trl.data.hdf5 import hdf5_files, read_shard_episode, shard_episodes

    episodes = frames = 0
    for file in hdf5_files(path):
        for start, stop in shard_episodes(file, action_dim=action_dim):
            read_shard_episode(file, start, stop)
            episodes, frames = episodes + 1, frames + stop - start - 1
    return dict(kind=kind, episodes=episodes, frames=frames)


def convert(source: Path, destination: Path, env: str | None, overwrite: bool) -> dict:
    kind = source_kind(source)
    if kind == "dataset":
        from coworld_trl.data.npz import export_npz

        files = export_npz(OfflineDataset(source), destination, overwrite=overwrite)
        return dict(exported=len(files), to=str(destination))
    if kind == "npz":
        from coworld_trl.data.npz import import_npz

        return info(import_npz(source, destination, env=env, overwrite=overwrite, progress=True))
    from coworld_trl.data.hdf5 import import_hdf5

    return info(import_hdf5(source, destination, env=env, overwrite=overwrite, progress=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coworld_trl.data", description="offline datasets")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="episodes, frames, returns, action dim, image size")
    p_info.add_argument("dataset", type=Path)
    p_val = sub.add_parser("validate", help="check a dataset, npz directory or hdf5 shards")
    p_val.add_argument("source", type=Path)
    p_val.add_argument("--env", default=None, help="registry name whose action dim the data must have")
    p_val.add_argument("--checksum", action="store_true",
                       help="also verify every file's sha256 against metadata.json (reads the whole dataset)")
    p_conv = sub.add_parser("convert", help="import npz/hdf5 into a dataset, or export a dataset to npz")
    p_conv.add_argument("source", type=Path)
    p_conv.add_argument("destination", type=Path)
    p_conv.add_argument("--env", default=None, help="registry name recorded in the metadata and checked against")
    p_conv.add_argument("--overwrite", action="store_true")
    p_sum = sub.add_parser("checksum", help="store every file's sha256 in the metadata of a dataset that has none")
    p_sum.add_argument("dataset", type=Path)
    p_sum.add_argument("--overwrite", action="store_true", help="recompute existing checksums (after a deliberate change)")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            result = info(OfflineDataset(args.dataset))
        elif args.command == "validate":
            result = {"valid": True, **validate(args.source, args.env, args.checksum)}
        elif args.command == "checksum":
            files = add_checksums(args.dataset, overwrite=args.overwrite, progress=True)
            result = dict(path=str(args.dataset), checksums=f"stored ({files} files, sha256)")
        else:
            result = convert(args.source, args.destination, args.env, args.overwrite)
    except CoWorldError as err:  # a damaged input, an unknown env name: one line, as the recipes print it
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
