"""The run directory: resolved config, results file, checkpoint and replay paths."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from coworld_trl.errors import ConfigError

PROBE = ".writable"  # touched and removed to check that the folder is writable


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class RunDirectory:
    """One run's folder. Re-running with the same folder resumes; a different config, or a folder
    holding files of anything but a run, is refused before anything is written.

    Layout: ``config.yaml`` (resolved config), ``results.jsonl`` (one record per
    evaluation), ``checkpoint.pt`` (latest state), the online replay's memmap folder (``replay/``, or
    ``replay_source<i>/`` per CoWorld source; see ``OnlineReplay``), ``logs/`` (logger output, videos).
    """

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        config_file = self.path / "config.yaml"
        # A new run: a missing or empty folder. discard() takes it back to that state.
        self.created = not self.path.exists()
        self.fresh = not config_file.exists()
        try:
            foreign = sorted(p.name for p in self.path.iterdir() if p.name != PROBE) if self.fresh and \
                self.path.is_dir() else []
            if foreign:
                raise ConfigError(f"output_dir={self.path} holds files that are not a coworld_trl run "
                                  f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                                  "choose a new or empty output_dir")
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / PROBE
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"output_dir={self.path} is not a writable folder ({err.strerror}); "
                              "choose another output_dir") from None
        if not self.fresh:
            stored = yaml.safe_load(config_file.read_text()) or {}
            old, new = _flatten(stored), _flatten(config)
            diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            if diffs:
                raise ConfigError(
                    f"output directory {self.path} holds a different run's config ({'; '.join(diffs[:3])}); "
                    "use a new output_dir or the same settings to resume"
                )
        else:
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def discard(self) -> None:
        """Undo a new run's folder after a failed start, so that the corrected command is not refused
        as another run: remove the folder if this run made it, else empty it (only for a new run)."""
        if not self.fresh:
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def results(self) -> Path:
        return self.path / "results.jsonl"

    def append_result(self, record: dict[str, Any]) -> None:
        with self.results.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_results(self) -> list[dict[str, Any]]:
        if not self.results.exists():
            return []
        return [json.loads(line) for line in self.results.read_text().splitlines() if line.strip()]
