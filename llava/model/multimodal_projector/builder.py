"""The multimodal projector: maps vision features (mm_hidden_size) to LLM embeddings (hidden_size).

`mm_projector_type` names the architecture:

- "linear": one Linear layer.
- "mlp{N}x_gelu": N Linear layers with a GELU between consecutive ones, as one `nn.Sequential` whose indices
  are those of LLaVA checkpoints (mlp2x_gelu: `0` Linear, `1` GELU, `2` Linear -> `mm_projector.0.weight`, ...).
- "identity": features pass unchanged (needs mm_hidden_size == hidden_size to be useful).
"""
import re
from typing import Callable, Dict

import torch.nn as nn

MLP_GELU = re.compile(r"mlp(?P<depth>\d+)x_gelu")


class IdentityMap(nn.Module):
    """A projector that returns its input (the "identity" type); has no parameters."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def mlp_gelu(in_features: int, out_features: int, depth: int) -> nn.Sequential:
    """`depth` Linear layers (in -> out, then out -> out) with a GELU before every Linear but the first."""
    if depth < 1:
        raise ValueError(f"mm_projector_type mlp{depth}x_gelu: an MLP needs at least one layer")
    widths = [in_features] + [out_features] * depth
    layers = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.GELU()] if index else []
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


# Projector types with a fixed name: type -> factory(config).
FIXED_PROJECTORS: Dict[str, Callable[[object], nn.Module]] = {
    "linear": lambda config: nn.Linear(config.mm_hidden_size, config.hidden_size),
    "identity": lambda config: IdentityMap(),
}


def build_vision_projector(config, delay_load: bool = False, **kwargs) -> nn.Module:
    """The projector named by `config.mm_projector_type` (default "linear"), sized by `config.mm_hidden_size`
    and `config.hidden_size`. `delay_load` and extra keywords are accepted for LLaVA's interface and unused."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type in FIXED_PROJECTORS:
        return FIXED_PROJECTORS[projector_type](config)
    match = MLP_GELU.fullmatch(projector_type or "")
    if match is None:
        raise ValueError(
            f"Unknown mm_projector_type: {projector_type!r} (use {', '.join(FIXED_PROJECTORS)} or mlp<N>x_gelu)"
        )
    return mlp_gelu(config.mm_hidden_size, config.hidden_size, depth=int(match["depth"]))
