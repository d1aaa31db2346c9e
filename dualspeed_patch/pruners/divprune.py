"""DivPrune: keep the most mutually diverse visual tokens (greedy max-min cosine distance), batched."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .registry import Keep, check_inputs, effective_keep, mask_to_indices, register_pruner


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """Pairwise 1 - cos(x_i, x_j) in fp32, [B, N, N] (zero vectors are at distance 1 from everything)."""
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


@register_pruner("divprune")
@torch.no_grad()
def divprune_select(features: torch.Tensor, keep: Keep, valid: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
    """Indices [B, K] of each image's DivPrune selection (see registry contract).

    Seed: the valid token whose nearest other valid token is farthest. Then repeatedly add the valid
    token whose minimum distance to the chosen set is largest, updating that running minimum with the
    new token's distance row, so each step is O(N) per image after the N x N matrix. All images advance
    together (masked argmax); rows needing fewer tokens simply stop adding. Ties go to the lowest index.
    """
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    dist = cosine_distance(features)
    rows = torch.arange(b, device=features.device)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    pair_ok = valid.unsqueeze(2) & valid.unsqueeze(1) & ~eye
    nearest = dist.masked_fill(~pair_ok, float("inf")).amin(dim=2)  # inf for a lone valid token
    seed = nearest.masked_fill(~valid, float("-inf")).argmax(dim=1)

    selected = torch.zeros(b, n, dtype=torch.bool, device=features.device)
    selected[rows, seed] = k > 0
    min_dist = dist[rows, seed]  # [B, N] distance of every token to the chosen set
    blocked = ~valid
    steps = int(k.max()) if b > 0 else 0
    for step in range(1, steps):
        score = min_dist.masked_fill(selected | blocked, float("-inf"))
        nxt = score.argmax(dim=1)
        selected[rows, nxt] |= step < k
        min_dist = torch.minimum(min_dist, dist[rows, nxt])
    return mask_to_indices(selected)
