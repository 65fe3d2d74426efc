"""Episode layouts: DreamerV2 / V-D4RL "incoming" rows to TorchRL's TED rows, and back.

This is the one place offline data is shifted. DreamerV2's npz episodes (and V-D4RL's
hdf5 shards) store, in row ``t``, the frame ``o_t`` together with the action and reward
that LED to it; row 0 is the reset, with a zero action and reward. TED rows store the
action taken AT ``o_t`` and, under ``next``, what followed it::

    incoming (npz), L rows (L = 501 for DMC: reset + 500 agent steps)
        row          0      1      2     ...   L-1
        image        o_0    o_1    o_2         o_{L-1}
        action       0      a_0    a_1         a_{L-2}
        reward       0      r_1    r_2         r_{L-1}
        is_first     1      0      0           0
        is_last      0      0      0           1
        is_terminal  0      0      0           0 / 1

    TED, L - 1 rows                                 (read from incoming row)
        row t        0      1           L-2
        pixels       o_0    o_1         o_{L-2}     image[t]
        action       a_0    a_1         a_{L-2}     action[t + 1]
        is_init      1      0           0           is_first[t]
        next.reward  r_1    r_2         r_{L-1}     reward[t + 1]
        next.done    0      0           1           is_last[t + 1] or is_terminal[t + 1]
        next.terminated                             is_terminal[t + 1]
        next.truncated                              done and not terminated
    final observation  o_{L-1}                      image[L - 1], kept per episode

TED rows do not repeat ``next.pixels`` (it is the next row's ``pixels``), which halves
the storage; the last frame of each episode, which no row holds, is kept separately so
that export gives back the original episode. Other per-frame arrays (proprio) follow
``image``.
"""
from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict

# DreamerV2 npz keys that are not per-frame observations.
NON_OBSERVATION_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")


def incoming_to_ted(episode: dict[str, np.ndarray], *, pixels_key: str = "image") -> tuple[TensorDict, TensorDict]:
    """One validated incoming-layout episode -> (TED rows ``[L - 1]``, final observation ``[]``).

    ``episode`` holds ``image`` ``[L, H, W, 3]`` uint8 (or ``[L, 3, H, W]``), ``action``
    ``[L, A]``, ``reward`` ``[L]``, ``is_first``, ``is_last``, ``is_terminal`` ``[L]`` bool
    and optional extra per-frame observations ``[L, ...]`` (kept under their own names).
    """
    image = torch.from_numpy(np.ascontiguousarray(episode[pixels_key]))
    if image.shape[-1] == 3:
        image = image.permute(0, 3, 1, 2)
    length = image.shape[0]
    terminal = torch.from_numpy(np.asarray(episode["is_terminal"], bool))
    last = torch.from_numpy(np.asarray(episode["is_last"], bool)) | terminal
    last[-1] = True  # an episode file ends its episode even when the writer did not flag it
    observations = {"pixels": image.contiguous()}
    for key, value in episode.items():
        if key not in (pixels_key, *NON_OBSERVATION_KEYS):
            observations[key] = torch.from_numpy(np.ascontiguousarray(value))
    rows = TensorDict(
        {
            **{key: value[:-1] for key, value in observations.items()},
            "action": torch.from_numpy(np.asarray(episode["action"][1:], np.float32)),
            "is_init": torch.from_numpy(np.asarray(episode["is_first"][:-1], bool)).unsqueeze(-1),
            "next": {
                "reward": torch.from_numpy(np.asarray(episode["reward"][1:], np.float32)).unsqueeze(-1),
                "done": last[1:].unsqueeze(-1),
                "terminated": terminal[1:].unsqueeze(-1),
                "truncated": (last[1:] & ~terminal[1:]).unsqueeze(-1),
            },
        },
        batch_size=[length - 1],
    )
    rows["is_init"][0] = True
    final = TensorDict({key: value[-1] for key, value in observations.items()}, batch_size=[])
    return rows, final


def ted_to_incoming(rows: TensorDict, final: TensorDict) -> dict[str, np.ndarray]:
    """The inverse of :func:`incoming_to_ted`: an npz-ready dict with ``image`` ``[L, H, W, 3]``."""
    length = rows.shape[0] + 1
    image = torch.cat([rows["pixels"], final["pixels"].unsqueeze(0)]).permute(0, 2, 3, 1)
    zero_action = torch.zeros_like(rows["action"][:1])
    terminal = torch.cat([torch.zeros(1, dtype=torch.bool), rows["next", "terminated"].reshape(-1)])
    episode = {
        "image": image.contiguous().numpy(),
        "action": torch.cat([zero_action, rows["action"]]).numpy(),
        "reward": torch.cat([torch.zeros(1), rows["next", "reward"].reshape(-1)]).numpy(),
        "discount": (~terminal).float().numpy(),
        "is_first": np.eye(1, length, dtype=bool)[0],
        "is_last": torch.cat([torch.zeros(1, dtype=torch.bool), rows["next", "done"].reshape(-1)]).numpy(),
        "is_terminal": terminal.numpy(),
    }
    for key in final.keys():
        if key != "pixels":
            episode[key] = torch.cat([rows[key], final[key].unsqueeze(0)]).numpy()
    return episode
