"""How much attention each visual token receives inside the LLM, recomputed from one layer's queries and keys.

The LLM normally runs SDPA / FlashAttention, which never materialise attention probabilities. Layer-wise pruning
(FitPrune) needs them at a few layers only, so they are recomputed there from the layer's own query and key
projections (captured by hooks, rotary embedding re-applied), under `torch.no_grad()`, in fp32.

FitPrune's statistics, per visual token j of image m, from the head-wise maximum attention map A (A[i, j] =
max over heads of the probability that query i attends to key j):

- self  s_j = mean over the visual tokens i of image m of A[i, j]  (attention from the image to itself)
- cross c_j = mean over the query text tokens i after image m of A[i, j]  (attention from the text to the image)

Σ_j s_j and Σ_j c_j are the attention mass the image's own tokens and the text put on the image; FitPrune fits its
recipe so that pruning keeps most of both, and at run time drops the tokens with the lowest c_j · s_j.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Upper bound on the elements of one [B, heads, T, T] block of attention logits (fp32: 512 MiB); larger problems
# are processed a group of heads at a time.
MAX_BLOCK_ELEMENTS = 1 << 27


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the rotate-half form of RoPE)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `x` [B, heads, T, e] with per-position `cos`, `sin` [B or 1, T, e]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


@torch.no_grad()
def head_max_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    real: torch.Tensor,
    head_dim: int,
    scaling: Optional[float] = None,
) -> torch.Tensor:
    """Causal attention probabilities, maximum over heads: [B, T, T] fp32, row i = query i, column j = key j.

    `queries` [B, T, heads·e] and `keys` [B, T, kv_heads·e] are the layer's q / k projections before the rotary
    embedding (grouped-query attention: query head h reads key head h // (heads / kv_heads)). Keys that are not
    `real` ([B, T] bool: padding, empty slots) get no attention; every query may attend to itself, so padding
    rows stay finite (their values are not used).
    """
    b, t, _ = queries.shape
    if queries.shape[-1] % head_dim or keys.shape[-1] % head_dim:
        raise ValueError(f"q width {queries.shape[-1]} / k width {keys.shape[-1]} not divisible by head_dim {head_dim}")
    heads, kv_heads = queries.shape[-1] // head_dim, keys.shape[-1] // head_dim
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads evenly")
    scale = float(scaling) if scaling is not None else head_dim ** -0.5
    q = apply_rotary(queries.float().view(b, t, heads, head_dim).transpose(1, 2), cos.float(), sin.float())
    k = apply_rotary(keys.float().view(b, t, kv_heads, head_dim).transpose(1, 2), cos.float(), sin.float())
    positions = torch.arange(t, device=queries.device)
    allowed = (positions.unsqueeze(1) >= positions.unsqueeze(0)).unsqueeze(0) & real.bool().unsqueeze(1)
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=queries.device)
    blocked = ~allowed.unsqueeze(1)
    step = max(1, MAX_BLOCK_ELEMENTS // max(1, b * t * t))
    group = heads // kv_heads
    out = torch.zeros(b, t, t, device=queries.device)
    for start in range(0, heads, step):  # a few head groups, only for very long sequences
        head_ids = torch.arange(start, min(heads, start + step), device=queries.device)
        logits = q[:, head_ids] @ k[:, head_ids // group].transpose(-1, -2) * scale
        probs = logits.masked_fill(blocked, float("-inf")).softmax(dim=-1)
        out = torch.maximum(out, probs.amax(dim=1))
    return out


@dataclass
class VisualScores:
    """FitPrune's per-token statistics of one layer, [B, T] each (0 at non-visual positions).

    `has_query` marks visual tokens whose image has at least one query text token after it; an image without
    (e.g. a caption-only pretraining sample, whose text is all answer) is ranked by self-attention alone.
    """

    self_attention: torch.Tensor
    cross_attention: torch.Tensor
    has_query: torch.Tensor

    @property
    def importance(self) -> torch.Tensor:
        """The run-time ranking score: cross · self (self alone for images without query text)."""
        return torch.where(self.has_query, self.cross_attention * self.self_attention, self.self_attention)


@torch.no_grad()
def visual_scores(attention: torch.Tensor, visual: torch.Tensor, image: torch.Tensor,
                  query: torch.Tensor) -> VisualScores:
    """Self and cross attention of every visual token (module docstring) from a head-max map [B, T, T].

    `visual` [B, T] marks visual tokens, `image` [B, T] their image index (any value elsewhere), `query` [B, T] the
    text tokens whose attention counts as cross attention. A query only ever attends to earlier tokens, so the
    cross term of image m gathers exactly the queries after it.
    """
    same_image = visual.unsqueeze(2) & visual.unsqueeze(1) & (image.unsqueeze(2) == image.unsqueeze(1))
    weights = same_image.float()
    image_size = weights.sum(dim=1)  # visual tokens of token j's image
    self_attention = (attention * weights).sum(dim=1) / image_size.clamp(min=1)
    later_queries = query.long().flip(1).cumsum(1).flip(1) - query.long()  # queries strictly after position j
    cross = torch.einsum("bij,bi->bj", attention, query.float()) / later_queries.clamp(min=1).float()
    has_query = visual & (later_queries > 0)
    zero = torch.zeros_like(self_attention)
    return VisualScores(
        self_attention=torch.where(visual, self_attention, zero),
        cross_attention=torch.where(visual, cross, zero),
        has_query=has_query,
    )
