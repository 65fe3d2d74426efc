"""Run folders of multirun jobs: a job's folder is named after its own overrides.

A recipe's ``output_dir`` is ``runs/<target>/<method>_<preset>${sweep_key:...}/seed<N>``.
In a single run the key is empty, so single runs keep their folders. In a multirun (``-m``,
any launcher) the key is ``/<key>=<value>,...`` over the job's overrides, sorted, leaving out
what already names the folder (seed, preset, target or env name, ``output_dir``) and settings
that do not change the results (device, threads, ``logger.*``, ``eval.video``). So a requeued
or re-launched job with the same overrides finds its own folder and resumes, whatever else the
sweep holds; a seeds-only sweep writes where single runs do.
"""
from __future__ import annotations

import hashlib

NOT_IN_KEY = ("train.seed", "output_dir", "preset", "target.name", "env.name", "train.device", "train.threads",
              "eval.video")
NOT_IN_KEY_PREFIXES = ("logger.", "hydra.")
# One path component stays well under the 255-byte limit of common filesystems.
MAX_KEY_CHARS = 120


def _clean(value: str) -> str:
    """A path-safe override value: ``[dmc/walker_walk,dmc/cheetah_run]`` -> ``dmc-walker_walk+dmc-cheetah_run``."""
    for old, new in (("/", "-"), (",", "+"), (" ", "")):
        value = value.replace(old, new)
    return "".join(c for c in value if c not in "[]{}'\"")


def sweep_key(mode, overrides) -> str:
    """``""`` outside a multirun; else ``"/" + key`` of the job's task ``overrides`` (``key=value``
    strings), long keys shortened to a prefix and a hash of the whole key."""
    if not str(mode).endswith("MULTIRUN"):
        return ""
    items = []
    for override in overrides:
        name, _, value = str(override).lstrip("+~").partition("=")
        if name not in NOT_IN_KEY and not name.startswith(NOT_IN_KEY_PREFIXES):
            items.append(f"{name}={_clean(value)}")
    key = ",".join(sorted(items))
    if len(key) > MAX_KEY_CHARS:
        key = f"{key[:MAX_KEY_CHARS - 9]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return f"/{key}" if key else ""
