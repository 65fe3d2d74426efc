"""Fig. 11: the source and target encoders' embeddings of the same target observations, before
and after state alignment (Eq. 3), as a t-SNE map (scikit-learn).

"Before" and "after" are two CoWorld checkpoints: for instance a run with
``coupling.alignment=false`` (never aligned) and one with it on, or a copy of a run's
``checkpoint.pt`` taken before its first offline phase next to the final one. Each is read
with its folder's ``config.yaml`` (model size); only the encoders are built. Next to the map,
each checkpoint's Eq. 3 divergence ``KL[g(e'(o)) || g(e(o))]`` on the same observations says
how far apart the two embeddings are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coworld_trl.analysis.runs import RunFolderError, load_run
from coworld_trl.analysis.stats import require
from coworld_trl.modules import AlignmentHead
from coworld_trl.modules.networks import ConvEncoder
from coworld_trl.objectives.alignment import embedding_kl
from coworld_trl.training.checkpoint import load_checkpoint

ENCODER = "world_model.encoder."


def _encoder(modules: dict[str, torch.Tensor], depth: int, where: str) -> ConvEncoder:
    """The ConvEncoder whose weights ``modules`` (an agent's state dict) holds."""
    prefix = next((k[:k.index(ENCODER) + len(ENCODER)] for k in modules if ENCODER in k), None)
    if prefix is None:
        raise RunFolderError(f"{where} holds no world-model encoder; pass a CoWorld checkpoint")
    encoder = ConvEncoder(depth=depth)
    encoder.load_state_dict({k[len(prefix):]: v for k, v in modules.items() if k.startswith(prefix)})
    return encoder.eval()


def coworld_encoders(path: str | Path) -> tuple[ConvEncoder, ConvEncoder, dict]:
    """``(source encoder, target encoder, info)`` of a CoWorld checkpoint file or run folder (its
    ``checkpoint.pt``); the folder's ``config.yaml`` gives the model size. The source is the
    one active when the checkpoint was written."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise RunFolderError(f"no checkpoint at {file}; pass a CoWorld run folder or a checkpoint file inside one")
    run = load_run(file.parent, need_results=False)
    if "model.cnn_depth" not in run.config:
        raise RunFolderError(f"{file.parent}/config.yaml is missing or has no model.cnn_depth; keep the checkpoint "
                             f"in its run folder")
    agent = load_checkpoint(file, map_location="cpu")["agent"]
    if "sources" not in agent or "target" not in agent:
        raise RunFolderError(f"{file} is not a CoWorld checkpoint (no source and target agents)")
    depth, active = int(run.config["model.cnn_depth"]), agent["active_source"]
    info = {"checkpoint": str(file), "active_source": active, "dataset": run.config.get("dataset")}
    return (_encoder(agent["sources"][active]["modules"], depth, f"{file} source {active}"),
            _encoder(agent["target"]["modules"], depth, f"{file} target"), info)


def target_observations(dataset: str | Path, count: int) -> torch.Tensor:
    """``count`` frames spread evenly over an offline dataset, uint8 ``[count, 3, 64, 64]``."""
    from coworld_trl.data import OfflineDataset

    data = OfflineDataset(dataset)
    index = torch.linspace(0, len(data) - 1, min(count, len(data))).round().long()
    return data.rows["pixels"][index].clone()


@torch.no_grad()
def embed(encoder: ConvEncoder, pixels: torch.Tensor, *, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def latent_alignment(before: str | Path, after: str | Path, output: Path, *, dataset: str | Path | None = None,
                     observations: int = 500, seed: int = 0) -> dict:
    """Two panels (before, after): t-SNE of source and target embeddings of the same target
    observations (``dataset``, default the ``after`` run's). Returns each checkpoint's Eq. 3 KL
    and the map's coordinates."""
    manifold = require("sklearn.manifold")
    from coworld_trl.analysis.figures import pyplot, save

    loaded = {"before": coworld_encoders(before), "after": coworld_encoders(after)}
    dataset = dataset or loaded["after"][2]["dataset"]
    if dataset is None:
        raise RunFolderError(f"{after}: config.yaml names no dataset; pass --dataset with the target's offline data")
    pixels = target_observations(dataset, observations)
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4.5))
    result = {"dataset": str(dataset), "observations": len(pixels)}
    for ax, (name, (source, target, info)) in zip(axes, loaded.items()):
        source_embedding, target_embedding = embed(source, pixels), embed(target, pixels)
        kl = embedding_kl(AlignmentHead.log_probs(source_embedding), AlignmentHead.log_probs(target_embedding))
        both = torch.cat([source_embedding, target_embedding]).numpy()
        perplexity = min(30.0, (len(both) - 1) / 3)
        points = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(both)
        n = len(pixels)
        ax.scatter(points[:n, 0], points[:n, 1], s=6, alpha=0.6, label="source encoder")
        ax.scatter(points[n:, 0], points[n:, 1], s=6, alpha=0.6, label="target encoder")
        ax.set_title(f"{name} alignment (KL {kl.mean():.3g})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8)
        result[name] = {**info, "alignment_kl": float(kl.mean()),
                        "points": {"source": points[:n].tolist(), "target": points[n:].tolist()}}
    save(fig, output)
    return result


def points_csv(result: dict) -> str:
    """The t-SNE coordinates as CSV: ``panel,encoder,observation,x,y``."""
    lines = ["panel,encoder,observation,x,y"]
    for panel in ("before", "after"):
        for encoder in ("source", "target"):
            lines += [f"{panel},{encoder},{i},{x:.5f},{y:.5f}"
                      for i, (x, y) in enumerate(np.asarray(result[panel]["points"][encoder]))]
    return "\n".join(lines) + "\n"
