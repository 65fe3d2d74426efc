"""The run directory: resolved config, results file, checkpoint and replay paths."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from coworld_trl.errors import ConfigError


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
    """One run's folder. Re-running with the same folder resumes; a different config is refused.

    Layout: ``config.yaml`` (resolved config), ``results.jsonl`` (one record per
    evaluation), ``checkpoint.pt`` (latest state), the online replay's memmap folder (``replay/``, or
    ``replay_source<i>/`` per CoWorld source; see ``OnlineReplay``), ``logs/`` (logger output, videos).
    """

    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"output_dir={self.path} is not a writable folder ({err.strerror}); "
                              "choose another output_dir") from None
        config_file = self.path / "config.yaml"
        if config_file.exists():
            stored = yaml.safe_load(config_file.read_text()) or {}
            old, new = _flatten(stored), _flatten(config)
            diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            if diffs:
                raise ValueError(
                    f"output directory {self.path} holds a different run's config ({'; '.join(diffs[:3])}); "
                    "use a new output_dir or the same settings to resume"
                )
        else:
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))

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
