"""Builds the vision tower named by `mm_vision_tower` (or `vision_tower`) in a config or argument object."""
import os

from .clip_encoder import CLIPVisionTower


def is_clip_checkpoint(name: str) -> bool:
    """A local directory, an openai/laion hub name, or a name that says it is CLIP (ShareGPT4V's towers too)."""
    return (
        os.path.exists(name)
        or name.startswith(("openai", "laion"))
        or "ShareGPT4V" in name
        or "clip" in name.lower()
    )


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """The CLIP tower for `vision_tower_cfg` (keywords such as `delay_load` go to `CLIPVisionTower`)."""
    # A saved LLaVA config names it `mm_vision_tower`; training arguments name it `vision_tower`.
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if name is None:
        raise ValueError("No vision tower given: set --vision_tower (a CLIP checkpoint directory or hub name).")
    if not is_clip_checkpoint(name):
        raise ValueError(f"Unknown vision tower: {name!r} (expected a CLIP checkpoint directory or hub name)")
    return CLIPVisionTower(name, args=vision_tower_cfg, **kwargs)
