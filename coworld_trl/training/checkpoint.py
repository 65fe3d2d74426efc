"""Checkpoints: atomic writes, weights-only loads, RNG state included."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from coworld_trl.errors import CoWorldError


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain types (weights-only loadable)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s states; its tensors may have been loaded onto a device
    (``map_location="cuda"``): generators take CPU byte tensors."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class CheckpointError(CoWorldError, RuntimeError):
    """A checkpoint cannot be read, or not resumed by this version; the message names the file and the fix."""


# 3: one layout for every agent (progress, clocks, schedule state) and agent state dicts
# without duplicate entries; 2: the replay's rows live in the run directory and the checkpoint
# holds its length and cursor (format 1 referenced a copy of the replay made at each checkpoint).
CHECKPOINT_FORMAT = 3


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (plus its ``format``) to ``path`` atomically (a crash never leaves a
    half-written file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def _load_error(err: Exception) -> str:
    """The informative sentence of a ``torch.load`` error (its messages run over several lines)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return line.split(". ")[0].rstrip(".")


def load_checkpoint(path: str | Path, map_location=None, *, resume: bool = False) -> dict:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    ``resume=True`` also refuses a checkpoint of another format, which this version
    cannot resume (its weights alone can still be loaded).
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which and what to do
        raise CheckpointError(f"cannot read checkpoint {path} ({_load_error(err)}); it is damaged or not a coworld_trl "
                              f"checkpoint: delete it or use a new output_dir") from err
    found = state.get("format", 1)
    if resume and found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {found} and this coworld_trl resumes format "
                           f"{CHECKPOINT_FORMAT}; use a new output_dir (or the coworld_trl version that wrote it)")
    return state
