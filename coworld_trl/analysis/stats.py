"""Aggregate statistics over seeds and tasks (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice"): the interquartile mean (IQM) and the mean with 95% stratified-bootstrap
confidence intervals.

The bootstrap resamples each task's seeds with replacement, independently per task (the
tasks are the strata), recomputes the statistic over all resampled scores and takes the
2.5th and 97.5th percentiles (the percentile method, as rliable does). It runs on
``scipy.stats.bootstrap``: rliable itself depends on ``arch``, which does not import with
pandas 3.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from coworld_trl.errors import MissingDependencyError


def require(module: str, *, extra: str = "analysis"):
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"this report needs {module.split('.')[0]}, which is not installed; "
                                     f"pip install -e \".[{extra}]\"") from None


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of ``scores`` (``scipy.stats.trim_mean``
    cutting ``int(0.25 n)`` scores from each end; so plain mean for n < 4)."""
    return require("scipy.stats").trim_mean(scores, 0.25, axis=axis)


def mean(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.mean(scores, axis=axis)


STATISTICS: dict[str, Callable] = {"iqm": iqm, "mean": mean}


@dataclass
class Estimate:
    """A point estimate and its confidence interval (``None`` when a task has fewer than 2 seeds)."""

    value: float
    ci: tuple[float, float] | None

    def as_dict(self) -> dict:
        return {"value": self.value, "ci": list(self.ci) if self.ci is not None else None}

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.ci[0]:.3g}, {self.ci[1]:.3g}]" if self.ci else f"{self.value:.3g} [n/a]"


def stratified_bootstrap(scores_per_task: Sequence[Sequence[float]], statistic: Callable, *, reps: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> Estimate:
    """``statistic`` over all scores, with a ``confidence`` stratified-bootstrap interval.

    Args:
        scores_per_task: one sequence of per-seed scores per task.
        statistic: ``f(scores, axis=...)`` over a flat array of scores (:func:`iqm`, :func:`mean`).

    Keyword Args:
        reps: bootstrap resamples.
        confidence: interval size.
        seed: the resampling RNG's seed (the same seed gives the same interval).
    """
    samples = tuple(np.asarray(s, dtype=float) for s in scores_per_task)
    value = float(statistic(np.concatenate(samples)))
    if any(len(s) < 2 for s in samples):
        return Estimate(value, None)
    st = require("scipy.stats")
    result = st.bootstrap(samples, lambda *resampled, axis: statistic(np.concatenate(resampled, axis=axis), axis=axis),
                          n_resamples=reps, confidence_level=confidence, method="percentile", paired=False,
                          vectorized=True, rng=np.random.default_rng(seed))
    return Estimate(value, (float(result.confidence_interval.low), float(result.confidence_interval.high)))


def mean_band(curves: np.ndarray, *, reps: int = 2000, confidence: float = 0.95, seed: int = 0):
    """Mean over seeds of ``curves`` ``[seeds, points]`` and its per-point bootstrap interval
    ``(mean, low, high)``; no interval (``low``/``high`` ``None``) with a single seed."""
    mean_curve = curves.mean(axis=0)
    if curves.shape[0] < 2:
        return mean_curve, None, None
    st = require("scipy.stats")
    result = st.bootstrap((curves,), np.mean, n_resamples=reps, confidence_level=confidence, method="percentile",
                          axis=0, vectorized=True, rng=np.random.default_rng(seed))
    return mean_curve, result.confidence_interval.low, result.confidence_interval.high
