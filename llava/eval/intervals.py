"""95% confidence intervals by the percentile bootstrap, over questions and, for several training runs, over runs.

A run-level interval resamples runs (seeds) and, within each drawn run, its questions, so that it covers both the
evaluation-set noise and the run-to-run noise of training; with one run it is the question bootstrap.
"""
from __future__ import annotations

from typing import Sequence

import torch

DRAWS = 2000


def bootstrap_ci(values: Sequence[float], draws: int = DRAWS, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (resampled with replacement ``draws`` times)."""
    return bootstrap_ci_runs([values], draws=draws, seed=seed, level=level)


def bootstrap_ci_runs(runs: Sequence[Sequence[float]], draws: int = DRAWS, seed: int = 0, level: float = 0.95
                      ) -> tuple[float, float]:
    """Percentile interval of the mean over runs of each run's mean, resampling runs, then questions in each.

    Runs must have the same number of values (the same evaluation questions).
    """
    data = torch.tensor([list(map(float, r)) for r in runs], dtype=torch.float64)
    if data.ndim != 2 or data.numel() == 0:
        raise ValueError("bootstrap needs at least one run with at least one value (runs of equal length)")
    n_runs, n = data.shape
    generator = torch.Generator().manual_seed(seed)
    run_idx = torch.randint(n_runs, (draws, n_runs), generator=generator) if n_runs > 1 \
        else torch.zeros((draws, 1), dtype=torch.long)
    question_idx = torch.randint(n, (draws, n_runs, n), generator=generator)
    means = data[run_idx.unsqueeze(-1), question_idx].mean(dim=(1, 2))
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high
