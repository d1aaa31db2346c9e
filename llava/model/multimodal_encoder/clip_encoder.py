"""CLIP vision tower: frozen CLIP image encoder whose selected hidden layer feeds the projector."""

import torch
import torch.nn as nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel


class CLIPVisionHolder(nn.Module):
    """Holds a `CLIPVisionModel` under the attribute `vision_model`.

    transformers 5 flattened `CLIPVisionModel` (its parameters no longer start with `vision_model.`), while
    every LLaVA checkpoint names them `model.vision_tower.vision_tower.vision_model.*`. Holding the model one
    level down restores those names (and the 4.x attribute path `...vision_tower.vision_model.encoder.layers`).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_model.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_model.device

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        return self.vision_model(pixel_values=pixel_values, **kwargs)


def _load_clip_vision(name: str, device_map=None) -> nn.Module:
    model = CLIPVisionModel.from_pretrained(name, device_map=device_map)
    # transformers 4.x keeps the `vision_model` attribute itself; 5.x does not.
    return model if hasattr(model, "vision_model") else CLIPVisionHolder(model)


class CLIPVisionTower(nn.Module):
    """LLaVA's `CLIPVisionTower`: returns hidden states of `mm_vision_select_layer` ("patch" drops [CLS])."""

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {self.select_feature!r}")
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.image_processor = CLIPImageProcessor.from_pretrained(self.vision_tower_name)
        self.vision_tower = _load_clip_vision(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, hidden_states) -> torch.Tensor:
        features = hidden_states[self.select_layer]
        return features[:, 1:] if self.select_feature == "patch" else features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels -> [B, N, C] features (N = patches, +1 with cls_patch), in the images' dtype."""
        if isinstance(images, list):
            return [self.forward(img.unsqueeze(0)).squeeze(0) for img in images]
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out.hidden_states).to(images.dtype)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2
