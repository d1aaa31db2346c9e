"""CDPruner: keep the visual tokens that maximise a conditional DPP (instruction relevance x diversity), batched.

The kernel is L = diag(q) S diag(q): S is the cosine similarity of the (post-projector) features, q the
per-token instruction relevance (context `relevance`, in [0, 1]; q = 1 everywhere when absent, which makes it
the pure-diversity DPP). The chosen set is the greedy MAP of det(L_Y): each step adds the token with the
largest residual variance d_i^2 = L_ii - ||c_i||^2 (the gain in log det), where c_i is token i's row of the
incremental Cholesky factor of the chosen set. Adding token j appends the orthogonalised row
e = (L_j - C^T c_j) / d_j to the factor and lowers every d_i^2 by e_i^2, so a step costs O(t * N) per image
after the N x N similarity (fast greedy MAP inference for DPPs).

Numerical exhaustion: once every remaining valid token of a row has d_i^2 <= tol * max_i L_ii (the chosen set
already spans them, e.g. duplicate tokens, or their relevance is 0), the determinant cannot grow any more;
that row then fills its remaining slots with the unselected valid tokens of largest L_ii = q_i^2 (most
relevant first, lowest index on ties) without touching the factor, so exactly k_b tokens are returned.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .registry import Keep, check_inputs, effective_keep, mask_to_indices, register_pruner

EXHAUSTION_TOL = 1e-5


def cosine_similarity(features: torch.Tensor) -> torch.Tensor:
    """Pairwise cos(x_i, x_j) in fp32, [B, N, N], with an exact unit diagonal (so tokens of equal relevance tie
    exactly); a zero vector has similarity 0 with everything, itself included."""
    x = features.float()
    unit = F.normalize(x, dim=-1)
    sim = unit @ unit.transpose(1, 2)
    sim.diagonal(dim1=1, dim2=2).copy_((x != 0).any(dim=-1))
    return sim


def _relevance_weights(relevance: Optional[torch.Tensor], b: int, n: int, device: torch.device) -> torch.Tensor:
    if relevance is None:
        return torch.ones(b, n, device=device)
    if not isinstance(relevance, torch.Tensor) or relevance.shape != (b, n):
        shape = tuple(relevance.shape) if isinstance(relevance, torch.Tensor) else type(relevance).__name__
        raise ValueError(f"cdpruner context 'relevance' must be a [batch, tokens] = {(b, n)} tensor, got {shape}")
    return relevance.to(device=device, dtype=torch.float32)


def greedy_dpp_map(
    similarity: torch.Tensor,
    weights: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    tol: float = EXHAUSTION_TOL,
) -> torch.Tensor:
    """Selection mask [B, N] of the greedy MAP of the DPP with kernel diag(w) S diag(w), k[b] tokens per row.

    `similarity` [B, N, N] (PSD, fp32), `weights` [B, N], `k` LongTensor [B] (<= valid tokens per row),
    `valid` [B, N]. All rows advance together; a row stops adding once it has k[b] tokens. See the module
    docstring for what happens when a row's residual variances are exhausted.
    """
    b, n, _ = similarity.shape
    device = similarity.device
    rows = torch.arange(b, device=device)
    quality = weights * weights * similarity.diagonal(dim1=1, dim2=2)  # L_ii
    residual = quality.clone()  # d_i^2
    floor = tol * quality.masked_fill(~valid, 0.0).amax(dim=1) if n > 0 else quality.new_zeros(b)
    fallback = quality.masked_fill(~valid, float("-inf"))
    steps = int(k.max()) if b > 0 else 0
    factor = similarity.new_zeros(b, steps, n)  # factor[:, t] = row t of the incremental Cholesky factor
    selected = torch.zeros(b, n, dtype=torch.bool, device=device)
    for t in range(steps):
        open_ = valid & ~selected
        best, pick = residual.masked_fill(~open_, float("-inf")).max(dim=1)
        exhausted = best <= floor
        pick = torch.where(exhausted, fallback.masked_fill(selected, float("-inf")).argmax(dim=1), pick)
        active = t < k
        selected[rows, pick] |= active
        kernel_row = (weights[rows, pick].unsqueeze(1) * weights) * similarity[rows, pick]  # L[pick, :]
        if t > 0:
            kernel_row = kernel_row - torch.bmm(factor[rows, :t, pick].unsqueeze(1), factor[:, :t]).squeeze(1)
        new_row = kernel_row * best.clamp(min=torch.finfo(torch.float32).tiny).rsqrt().unsqueeze(1)
        new_row = new_row.masked_fill((exhausted | ~active).unsqueeze(1), 0.0)
        factor[:, t] = new_row
        residual = residual - new_row * new_row
    return selected


@register_pruner("cdpruner", context_keys=("relevance",))
@torch.no_grad()
def cdpruner_select(
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    *,
    relevance: Optional[torch.Tensor] = None,
    **context,
) -> torch.Tensor:
    """Indices [B, K] of each image's CDPruner selection (see registry contract).

    `relevance` [B, N]: each token's relevance to the sample's instruction in [0, 1] (e.g.
    `dualspeed_patch.vision_context.clip_relevance`); rows or calls without an instruction use q = 1, the
    pure-diversity DPP. Ties go to the lowest index.
    """
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    weights = _relevance_weights(relevance, b, n, features.device)
    selected = greedy_dpp_map(cosine_similarity(features), weights, k, valid)
    return mask_to_indices(selected)
