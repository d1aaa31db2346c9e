"""FasterVLM: keep the patches the vision tower's [CLS] token attends to most (at the feature layer)."""
from __future__ import annotations

from typing import Optional

import torch

from .registry import Keep, check_inputs, effective_keep, mask_to_indices, register_pruner


@register_pruner("fastervlm", context_keys=("cls_attention",))
@torch.no_grad()
def fastervlm_select(
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    *,
    cls_attention: Optional[torch.Tensor] = None,
    **context,
) -> torch.Tensor:
    """Indices [B, K] of each image's top-k_b valid tokens by `cls_attention` (see registry contract).

    `cls_attention` [B, N] is the head-averaged attention of the [CLS] token to each token of `features`
    at the vision tower's feature layer, aligned with the features' token order (see
    `dualspeed_patch.vision_context.capture_cls_attention`). Ties go to the lowest index.
    """
    if cls_attention is None:
        raise ValueError(
            "the 'fastervlm' pruner needs a cls_attention=<[batch, tokens] tensor> context argument "
            "(see dualspeed_patch.vision_context.capture_cls_attention)"
        )
    valid = check_inputs(features, valid)
    k = effective_keep(keep, valid)
    b, n, _ = features.shape
    if not isinstance(cls_attention, torch.Tensor) or cls_attention.shape != (b, n):
        shape = tuple(cls_attention.shape) if isinstance(cls_attention, torch.Tensor) else type(cls_attention).__name__
        raise ValueError(f"fastervlm context 'cls_attention' must be a [batch, tokens] = {(b, n)} tensor, got {shape}")
    scores = cls_attention.to(device=features.device, dtype=torch.float32).masked_fill(~valid, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)  # invalid tokens rank last
    take = torch.arange(n, device=features.device).expand(b, n) < k.unsqueeze(1)
    selected = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter(1, order, take)
    return mask_to_indices(selected)
