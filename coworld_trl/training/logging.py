"""TorchRL loggers by name, with mp4 videos for the CSV logger."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchrl.record.loggers import Logger
from torchrl.record.loggers.csv import CSVLogger

from coworld_trl.errors import MissingDependencyError

METRIC_NAMESPACES = ("train", "eval", "time")
log = logging.getLogger(__name__)


class CSVVideoLogger(CSVLogger):
    """TorchRL's CSVLogger, writing videos as mp4 through imageio-ffmpeg.

    TorchRL's own mp4 path (``CSVLogger(video_format="mp4")``) needs torchcodec and system
    FFmpeg libraries, which no extra of this library installs; imageio-ffmpeg ships its own
    binary, so ``pip install coworld_trl[video]`` is enough here. Without it videos fall back
    to TorchRL's ``.pt`` tensors, with a warning.
    """

    _warned = False

    def log_video(self, name: str, video: torch.Tensor, step: int | None = None, **kwargs) -> None:
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            if not CSVVideoLogger._warned:
                log.warning("videos are saved as .pt tensors: `pip install coworld_trl[video]` for mp4")
                CSVVideoLogger._warned = True
            return super().log_video(name, video, step=step, **kwargs)
        frames = video.reshape(-1, *video.shape[-3:])  # [T, C, H, W] uint8
        if frames.dtype != torch.uint8:
            frames = (frames.clamp(0, 1) * 255).to(torch.uint8)
        folder = Path(self.log_dir) / self.exp_name / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name.replace('/', '_')}_{step}.mp4"
        imageio.mimwrite(path, frames.permute(0, 2, 3, 1).cpu().numpy(), fps=kwargs.get("fps", 30),
                         macro_block_size=1)


def make_logger(backend: str, run_dir: str | Path, *, project: str = "coworld_trl", exp_name: str = "logs") -> Logger:
    """``csv`` (default), ``tensorboard`` or ``wandb`` logger writing under ``run_dir``."""
    run_dir = str(run_dir)
    if backend == "csv":
        return CSVVideoLogger(exp_name=exp_name, log_dir=run_dir)
    if backend == "tensorboard":
        try:
            from torchrl.record.loggers.tensorboard import TensorboardLogger
            return TensorboardLogger(exp_name=exp_name, log_dir=run_dir)
        except ImportError as err:
            raise MissingDependencyError(f"logger.backend=tensorboard needs the tensorboard package ({err}): "
                                         f"pip install -e '.[tensorboard]', or use logger.backend=csv") from err
    if backend == "wandb":
        try:
            from torchrl.record.loggers.wandb import WandbLogger
            return WandbLogger(exp_name=exp_name, save_dir=run_dir, project=project)
        except ImportError as err:
            raise MissingDependencyError(f"logger.backend=wandb needs the wandb package ({err}): "
                                         f"pip install -e '.[wandb]', or use logger.backend=csv") from err
    raise ValueError(f"logger backend {backend!r} is unknown; use 'csv', 'tensorboard' or 'wandb'")


def log_metrics(logger: Logger, metrics: dict[str, float], step: int) -> None:
    for key, value in metrics.items():
        if key.split("/", 1)[0] not in METRIC_NAMESPACES:
            raise ValueError(f"metric {key!r} is outside the namespaces {METRIC_NAMESPACES}")
        logger.log_scalar(key, float(value), step=step)
