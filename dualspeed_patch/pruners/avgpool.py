"""`avgpool`: a visual-token *compressor* that averages windows of neighbouring tokens (creates new tokens).

For an image with n valid tokens and a budget of K = keep tokens (K = kept_tokens(n, p) in DualSpeed):

- **2-D** (context `grid_side = s`, every row's n == s * s tokens laid out row-major on an s x s patch grid):
  the output is a g x g grid with g the integer whose square is nearest to K, g = argmin_{1 <= g <= s} |g^2 - K|
  (never a tie: g^2 and (g + 1)^2 are equally far from K only if 2K = 2g^2 + 2g + 1, which is odd). Rows and
  columns are split into g bands [floor(i * s / g), floor((i + 1) * s / g)), so windows tile the grid without
  overlap, each token counted once, band widths floor(s / g) or ceil(s / g); when g divides s they are the
  k x k windows of avg-pooling with kernel = stride = k = s / g. Output order is row-major over the g x g grid.
  LLaVA-1.5: s = 24, K = 58 -> g = 8 (64 tokens, 3 x 3 windows); the tiny world: s = 8, K = 6 -> g = 2 (4 x 4).
- **1-D** (no `grid_side`: non-square or packed sequences, e.g. LLaVA-NeXT anyres base + tiles + newlines, or
  ragged rows): exactly K tokens, token j the mean of the valid tokens with valid-rank in
  [floor(j * n / K), floor((j + 1) * n / K)), i.e. consecutive runs of floor(n / K) or ceil(n / K) tokens in
  sequence order. On a packed sequence a run may straddle a row end or a view boundary; that is the price of
  pooling a sequence whose 2-D layout is not a single grid.

The training forward supplies `grid_side` for single-view images whose token count is a perfect square (CLIP
"patch" features); "cls_patch" features (s^2 + 1 tokens) and anyres packed sequences get the 1-D rule.
Averaging is an fp32 batched matrix product with a 0/1 window matrix (deterministic, no scatter atomics),
differentiable with respect to every valid input token; the result has the features' dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from .compressors import register_compressor
from .registry import Keep, check_inputs, effective_keep


def nearest_square_side(keep: torch.Tensor) -> torch.Tensor:
    """Elementwise g >= 1 whose square is nearest to `keep` (LongTensor; the 2-D output side per row)."""
    k = keep.long().clamp(min=1)
    g = k.double().sqrt().floor().long()
    g = g + ((g + 1) * (g + 1) <= k).long() - (g * g > k).long()  # exact integer sqrt despite float rounding
    return torch.where((g + 1) * (g + 1) - k < k - g * g, g + 1, g)


def _band(position: torch.Tensor, parts: torch.Tensor, length) -> torch.Tensor:
    """Index of the band [floor(j*length/parts), floor((j+1)*length/parts)) holding `position` (0-based);
    `length` (>= 1) is an int or a tensor broadcasting against `position`."""
    return torch.div((position + 1) * parts - 1, length, rounding_mode="floor")


def _window_ids(valid: torch.Tensor, k: torch.Tensor, grid_side: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token output slot [B, N] (invalid tokens -> -1) and per-row output count [B]."""
    b, n = valid.shape
    positions = torch.arange(n, device=valid.device).expand(b, n)
    if grid_side is None:
        n_valid = valid.sum(dim=1, keepdim=True).clamp(min=1)
        rank = valid.long().cumsum(dim=1) - 1
        slot = _band(rank, k.unsqueeze(1), n_valid)
        count = k
    else:
        s = grid_side
        g = nearest_square_side(k).clamp(max=s).unsqueeze(1)
        rows = _band(torch.div(positions, s, rounding_mode="floor"), g, s)
        cols = _band(positions % s, g, s)
        slot = rows * g + cols
        count = (g * g).squeeze(1).masked_fill(k == 0, 0)
    return slot.masked_fill(~valid, -1), count


@register_compressor("avgpool", context_keys=("grid_side",))
def avgpool_compress(
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    *,
    grid_side: Optional[int] = None,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool each image's visual tokens to about `keep` tokens: `(tokens [B, K, D], mask [B, K])`.

    With `grid_side = s` (features [B, s*s, D], all valid) the 2-D rule gives g^2 tokens per row; without it the
    1-D rule gives exactly k_b = min(keep_b, valid tokens) tokens per row (module docstring). A row with
    keep 0 or no valid token yields none. Gradients flow to every valid input token.
    """
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    if grid_side is not None:
        if isinstance(grid_side, bool) or int(grid_side) != grid_side or grid_side < 1 or grid_side * grid_side != n:
            raise ValueError(f"avgpool grid_side={grid_side!r} does not match {n} tokens per image (need side^2 == N)")
        if not bool(valid.all()):
            raise ValueError("avgpool on a grid (grid_side given) needs every token valid; pass grid_side=None "
                             "for ragged rows (1-D pooling)")
        grid_side = int(grid_side)
    slot, count = _window_ids(valid, k, grid_side)
    width = int(count.max()) if b > 0 else 0  # host sync (as in pruner selection): the padded output width
    windows = (slot.unsqueeze(1) == torch.arange(width, device=features.device).view(1, width, 1)).float()
    sizes = windows.sum(dim=2, keepdim=True)
    pooled = torch.bmm(windows, features.float()) / sizes.clamp(min=1.0)
    mask = torch.arange(width, device=features.device).unsqueeze(0) < count.unsqueeze(1)
    return pooled.to(features.dtype), mask
