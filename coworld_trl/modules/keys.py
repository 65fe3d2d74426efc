"""Reading TensorDict entries with one-line errors that name the key, who wanted it and the fix.

Every module and loss of the library reads its inputs through :func:`require`, so a
missing entry is reported as, e.g.::

    KeyError: "WorldModelLoss: the batch has no key 'pixels' (it has 'action', 'is_init', 'obs', ...);
    rename it with set_keys(pixels=...)"

(one line) instead of ``'NoneType' object has no attribute 'shape'`` further down.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

_SHOWN_KEYS = 8


def _present(tensordict: TensorDictBase) -> str:
    keys = sorted(str(k if isinstance(k, str) else tuple(k)) for k in tensordict.keys(True, True))
    shown = ", ".join(repr(k) if not k.startswith("(") else k for k in keys[:_SHOWN_KEYS])
    return shown + (", ..." if len(keys) > _SHOWN_KEYS else "") if keys else "no entries"


def missing_key_error(tensordict: TensorDictBase, key: NestedKey, owner: str, fix: str, what: str = "batch") -> KeyError:
    """The one-line ``KeyError`` for ``key`` missing from ``tensordict``."""
    return KeyError(f"{owner}: the {what} has no key {key!r} (it has {_present(tensordict)}); {fix}")


def require(tensordict: TensorDictBase, key: NestedKey, owner: str, fix: str, what: str = "batch") -> torch.Tensor:
    """``tensordict.get(key)``, or a one-line ``KeyError`` naming ``key``, ``owner`` and ``fix``.

    Args:
        tensordict: where to read.
        key: the (nested) key.
        owner: who reads it (``"WorldModelLoss"``), first word of the message.
        fix: how to provide the entry (``"rename it with set_keys(pixels=...)"``).
        what: what ``tensordict`` is called in the message (``"batch"``, ``"imagined TensorDict"``).
    """
    value = tensordict.get(key, None)
    if value is None:
        raise missing_key_error(tensordict, key, owner, fix, what)
    return value
