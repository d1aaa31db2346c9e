"""Builds the vision tower named by `mm_vision_tower` (or `vision_tower`) in a config or argument object."""
import os

from .clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is None:
        raise ValueError("No vision tower given: set --vision_tower (a CLIP checkpoint directory or hub name).")
    if os.path.exists(name) or name.startswith(("openai", "laion")) or "ShareGPT4V" in name or "clip" in name.lower():
        return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
    raise ValueError(f"Unknown vision tower: {name!r} (expected a CLIP checkpoint directory or hub name)")
