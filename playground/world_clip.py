"""The tiny CLIP: a small full ``CLIPModel`` (vision + text towers) and its image processor.

Briefly trained contrastively on the pretraining images matched with their objects' colour and shape
(``clip_steps``; 0 keeps it random) so that, like the real CLIP, its patch features say what covers each patch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from playground.tiny_scenes import Scene
from playground.world_params import WorldParams
from playground.world_training import train_loop

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor


def clip_image_processor(params: WorldParams) -> CLIPImageProcessor:
    """CLIP's standard preprocessing at the tiny resolution (resize shortest edge + centre crop)."""
    from transformers import CLIPImageProcessor

    size = params.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        do_resize=True, do_center_crop=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def clip_text(scene: Scene) -> str:
    """What the tiny CLIP is trained to match an image with: the objects' colour and shape, not their number.
    Each patch feature then says what covers that patch, like a real CLIP's local features, and the number of
    objects is only in how many patches say so (the LLM counts them; a pruned view cannot)."""
    return f"a {scene[0]['color']} {scene[0]['shape']}"


def build_clip(out: Path, params: WorldParams, text_info: dict) -> dict:
    """Create the tiny CLIP, briefly train it contrastively on the pretraining images, save it."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    model_dir = out / "models" / "tiny-clip"
    vision = dict(image_size=params.image_size, patch_size=params.patch_size, num_channels=3,
                  hidden_size=params.clip_hidden, intermediate_size=4 * params.clip_hidden,
                  num_hidden_layers=params.clip_layers, num_attention_heads=params.clip_heads,
                  hidden_act="quick_gelu", projection_dim=params.clip_projection_dim)
    text = dict(vocab_size=text_info["vocab_size"], hidden_size=params.clip_text_hidden,
                intermediate_size=4 * params.clip_text_hidden, num_hidden_layers=params.clip_text_layers,
                num_attention_heads=max(1, params.clip_text_hidden // 32), max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=params.clip_projection_dim,
                bos_token_id=text_info["bos_token_id"], eos_token_id=text_info["eos_token_id"],
                pad_token_id=text_info["eos_token_id"])
    config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                     projection_dim=params.clip_projection_dim)
    torch.manual_seed(params.seed + 1)
    model = transformers.CLIPModel(config)
    if params.clip_position_std > 0:
        torch.nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=params.clip_position_std)
    processor = clip_image_processor(params)
    losses: list[float] = []
    if params.clip_steps > 0:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(model_dir))
        records = json.loads((out / "pretrain.json").read_text())
        pixels = np.stack([np.asarray(Image.open(out / "images" / r["image"]).convert("RGB")) for r in records])
        mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        scenes = json.loads((out / "scenes.json").read_text())
        texts = tokenizer([clip_text(scenes[r["image"]]) for r in records], padding=True,
                          truncation=True, return_tensors="pt")
        generator = torch.Generator().manual_seed(params.seed + 1)

        def batches() -> Iterator[dict]:
            while True:
                idx = torch.randperm(len(records), generator=generator)[: params.clip_batch]
                yield {"pixel_values": images[idx], "input_ids": texts.input_ids[idx],
                       "attention_mask": texts.attention_mask[idx], "return_loss": True}

        losses = train_loop(model, batches(), params.clip_steps, params.clip_lr, "tiny-clip contrastive")
    model.save_pretrained(str(model_dir))
    processor.save_pretrained(str(model_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "num_patches": (params.image_size // params.patch_size) ** 2,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4) if losses else None}
