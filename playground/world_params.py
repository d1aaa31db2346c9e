"""The tiny world's build parameters: every knob of a build in one frozen dataclass.

Kept apart from the builders so that each of them (data, tokenizers, models) and the cache in
``playground.build_tiny_world`` read the same definition; the manifest stores ``asdict(WorldParams)``
and a change to any field triggers a rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from playground.tiny_scenes import CATEGORIES, GRID


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the build; the manifest stores them and a change triggers a rebuild."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    n_pretrain: int = 2000
    n_sft: int = 3000
    n_eval: int = 1500
    text_only_ratio: float = 0.05
    short_answer_ratio: float = 0.7
    vocab_size: int = 1024
    llm_hidden: int = 128
    llm_intermediate: int = 344
    llm_layers: int = 4
    llm_heads: int = 4
    # Language pretraining of the tiny LLaMA on "scene texts" (scene words where the image will sit, then a
    # caption or a chat about the scene), from scenes of its own (never the SFT or evaluation scenes).
    lm_scenes: int = 2000
    lm_steps: int = 220
    lm_batch: int = 24
    lm_lr: float = 3e-3
    clip_hidden: int = 128
    clip_layers: int = 4
    clip_heads: int = 4
    clip_projection_dim: int = 64
    clip_text_hidden: int = 64
    clip_text_layers: int = 2
    clip_vocab_size: int = 704
    # Contrastive training on the pretraining images (0: random CLIP), matched with their objects' colour and shape
    # (``clip_text``). A random tower's patch features barely vary with the image; trained, each says what covers
    # its patch.
    clip_steps: int = 150
    # Std of the vision tower's position embeddings at initialisation (0: transformers' default, 0.02); 0.5 makes
    # them a sizeable part of every token, as in a trained ViT. Measured: with 0.02, DualSpeed's count accuracy
    # stayed at chance (27% and 31% in two runs; Baseline 92%), with 0.5 it reached 54%. DivPrune keeps tokens of
    # about as many objects either way (2.7 of 3, 3.1 of 4 on layer -2 features), so what changes is likely what
    # the kept tokens say: with positions in them, tokens of different identical objects differ.
    clip_position_std: float = 0.5
    clip_batch: int = 32
    clip_lr: float = 2e-3


def make_params(**overrides: Any) -> WorldParams:
    """Defaults updated by ``overrides``; unknown names or impossible values raise ValueError."""
    known = {f.name for f in fields(WorldParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown tiny-world parameter(s) {unknown}; known: {sorted(known)}")
    params = WorldParams(**overrides)
    if params.image_size % params.patch_size:
        raise ValueError(
            f"image_size={params.image_size} must be a multiple of patch_size={params.patch_size}"
        )
    if params.image_size < GRID * 8:
        raise ValueError(f"image_size={params.image_size} is too small to draw a {GRID}x{GRID} grid "
                         f"(need >= {GRID * 8})")
    for name in ("n_pretrain", "n_sft", "n_eval"):
        if getattr(params, name) < len(CATEGORIES):
            raise ValueError(f"{name}={getattr(params, name)} must be at least {len(CATEGORIES)}")
    return params
