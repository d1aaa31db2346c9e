"""The mode isolator: `l` learnable vectors prefixed to each image's kept visual tokens in fast mode only.

It tells the LLM "these visual tokens are pruned", so fast-mode training does not bend the behaviour the model
shows on full token sequences (slow mode, and inference). It lives at `model.mode_isolator` (the LLaVA base
model) as a module whose call returns the vectors: a module call lets DeepSpeed ZeRO-3 gather the partitioned
parameter when it is used. Saved as `mode_isolator.bin` ({"model.mode_isolator.weight": [l, hidden]}); a file in
the paper authors' format ({"weight": [l, hidden]}) loads too.
"""
import math
import os
import pickle
import warnings
from typing import Optional

import torch
import torch.nn as nn

from .host import llava_part

ISOLATOR_FILE = "mode_isolator.bin"
ISOLATOR_KEY = "model.mode_isolator.weight"


class ModeIsolator(nn.Module):
    def __init__(self, length: int, hidden_size: int, dtype: Optional[torch.dtype] = None):
        super().__init__()
        # Same scale as LLaVA-NeXT's image_newline: comparable to the LLM's input embeddings.
        self.weight = nn.Parameter(torch.randn(length, hidden_size, dtype=dtype) / math.sqrt(hidden_size))

    def forward(self) -> torch.Tensor:
        return self.weight


def prefix_isolator(isolator: Optional[ModeIsolator], visual: torch.Tensor, lengths: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast mode's visual input: [isolator; tokens] for every image ([I, l + K, H], lengths + l); unchanged without
    an isolator. The vectors are cast to the tokens' dtype (the module call lets ZeRO-3 gather them)."""
    if isolator is None:
        return visual, lengths
    vectors = isolator().to(visual.dtype)
    prefix = vectors.unsqueeze(0).expand(visual.shape[0], -1, -1)
    return torch.cat([prefix, visual], dim=1), lengths + vectors.shape[0]


def get_isolator(model) -> Optional[ModeIsolator]:
    """The isolator module of a LLaVA causal LM (or its base model), if attached."""
    return getattr(llava_part(model, "isolator_home"), "mode_isolator", None)


def read_isolator_file(path: str) -> torch.Tensor:
    """The [l, hidden] tensor stored in an isolator file (or in a non_lora_trainables.bin), loaded safely: the key
    ending in `mode_isolator.weight`, or the only key `weight` (the paper authors' `mode_isolator.bin`)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        weights = load_file(path)
    else:
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError(f"{path}: refused by weights-only loading (it holds pickled objects, not only tensors)") \
                from None
    found = [v for k, v in weights.items() if k.endswith("mode_isolator.weight")]
    if not found and set(weights) == {"weight"}:  # the format the paper authors' code writes
        found = [weights["weight"]]
    if len(found) != 1 or not isinstance(found[0], torch.Tensor):
        raise ValueError(f"{path}: expected one '*mode_isolator.weight' tensor (or only a 'weight' tensor, the "
                         f"paper authors' format), found keys {sorted(weights)[:8]}")
    return found[0]


def locate_isolator_file(explicit: Optional[str], pretrain_mm_mlp_adapter: Optional[str]) -> Optional[str]:
    """`--mode_isolator_path` if given (must exist), else `mode_isolator.bin` beside the pretrained projector."""
    if explicit:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"--mode_isolator_path {explicit}: no such file")
        return explicit
    if pretrain_mm_mlp_adapter:
        candidate = os.path.join(os.path.dirname(pretrain_mm_mlp_adapter), ISOLATOR_FILE)
        if os.path.isfile(candidate):
            return candidate
    return None


def attach_isolator(model, length: int, source: Optional[str] = None, announce: bool = True) -> Optional[ModeIsolator]:
    """Create `model.mode_isolator` ([length, hidden], trainable); load it from `source` when given.

    Without a source (e.g. an official LLaVA projector, which has no isolator) a fresh isolator is used and a
    warning says so. Returns None for length 0 (no isolator).
    """
    if length == 0:
        return None
    base = llava_part(model, "isolator_home")
    hidden = model.config.hidden_size
    embed = model.get_model().embed_tokens.weight
    isolator = ModeIsolator(length, hidden, dtype=torch.float32).to(device=embed.device)
    if source is not None:
        weights = read_isolator_file(source)
        if tuple(weights.shape) != (length, hidden):
            raise ValueError(
                f"{source}: mode isolator has shape {tuple(weights.shape)}, expected ({length}, {hidden}) "
                f"(--mode_isolator_len {length}, hidden size {hidden})"
            )
        isolator.weight.data.copy_(weights)
    elif announce:
        warnings.warn(
            f"no trained mode isolator found (no --mode_isolator_path, no {ISOLATOR_FILE} beside the pretrained "
            "projector): starting from a fresh isolator",
            stacklevel=2,
        )
    base.mode_isolator = isolator.to(dtype=embed.dtype)  # ZeRO-3 rejects mixed parameter dtypes
    base.mode_isolator.requires_grad_(True)
    return base.mode_isolator
