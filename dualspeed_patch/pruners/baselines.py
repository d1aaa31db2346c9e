"""Baseline pruners: a seeded random subset and evenly spaced tokens."""
from __future__ import annotations

from typing import Optional

import torch

from .registry import Keep, check_inputs, effective_keep, mask_to_indices, register_pruner


@register_pruner("random")
@torch.no_grad()
def random_select(
    features: torch.Tensor, keep: Keep, valid: Optional[torch.Tensor] = None, *, seed: Optional[int] = None, **context
) -> torch.Tensor:
    """Indices [B, K] of a uniformly random subset of each image's valid tokens (see registry contract).

    `seed` is required and drives a private CPU torch.Generator, so every rank (and every device type)
    draws the same subset and the global RNG is untouched; pass e.g. `modes.step_seed(...)` per step.
    """
    if seed is None:
        raise ValueError("the 'random' pruner needs a seed=<int> context argument (e.g. dualspeed_patch.modes.step_seed(...))")
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & ((1 << 63) - 1))
    scores = torch.rand(b, n, generator=gen).to(features.device).masked_fill(~valid, -1.0)
    order = scores.argsort(dim=1, descending=True)  # invalid tokens rank last
    take = torch.arange(n, device=features.device).expand(b, n) < k.unsqueeze(1)
    selected = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter(1, order, take)
    return mask_to_indices(selected)


@register_pruner("uniform")
@torch.no_grad()
def uniform_select(features: torch.Tensor, keep: Keep, valid: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
    """Indices [B, K] of evenly spaced valid tokens (see registry contract): of a row's n valid tokens,
    keep the ones at valid-rank floor((i + 1/2) * n / k) for i < k, i.e. the centre of each of k equal strides."""
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    n_valid = valid.sum(dim=1)
    width = int(k.max()) if b > 0 else 0
    i = torch.arange(width, device=features.device).expand(b, width)
    rank = torch.div((2 * i + 1) * n_valid.unsqueeze(1), 2 * k.clamp(min=1).unsqueeze(1), rounding_mode="floor")
    positions = torch.arange(n, device=features.device).expand(b, n)
    valid_positions = torch.where(valid, positions, n).sort(dim=1).values  # row's valid indices first, ascending
    chosen = valid_positions.gather(1, rank.clamp(max=max(n - 1, 0)))
    active = i < k.unsqueeze(1)
    # scatter_add, not scatter: padding entries may share an index with a real one.
    hits = torch.zeros(b, n, dtype=torch.long, device=features.device)
    hits.scatter_add_(1, chosen.clamp(max=max(n - 1, 0)), active.long())
    return mask_to_indices(hits > 0)
