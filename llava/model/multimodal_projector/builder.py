"""The multimodal projector: maps vision features (mm_hidden_size) to LLM embeddings (hidden_size)."""
import re

import torch.nn as nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """`linear`, `mlp{N}x_gelu` (N Linear layers with GELU between) or `identity`, as in LLaVA.

    Module indices match upstream checkpoints: mlp2x_gelu -> `0` Linear, `1` GELU, `2` Linear.
    """
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", projector_type)
    if match:
        depth = int(match.group(1))
        layers = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(f"Unknown mm_projector_type: {projector_type!r} (use linear, mlp<N>x_gelu or identity)")
