"""The parts of the host model DualSpeed reads beyond `get_model()` / `get_vision_tower()` / `get_output_embeddings()`.

On LLaVA (this repo's or upstream's) they are attributes of `get_model()`: the projector `mm_projector`, NeXT's
`image_newline`, and the module that holds the mode isolator. A host adapter (`dualspeed_patch.hf`, for Hugging
Face's Llava classes) keeps them elsewhere and maps each name through its own `llava_part(name)`.
"""
from __future__ import annotations

from typing import Any

PARTS = ("mm_projector", "image_newline", "isolator_home")


def llava_part(model, name: str) -> Any:
    """`model`'s part `name` (one of PARTS): the adapter's mapping when `model` is a host adapter, else LLaVA's
    `get_model().<name>` (`get_model()` itself for the isolator's home). None when the model has no such part."""
    if name not in PARTS:
        raise KeyError(f"unknown host part {name!r}; expected one of {PARTS}")
    mapped = getattr(model, "llava_part", None)
    if callable(mapped):
        return mapped(name)
    base = model.get_model() if hasattr(model, "get_model") else model
    return base if name == "isolator_home" else getattr(base, name, None)
