"""CLIP vision tower: frozen CLIP image encoder whose selected hidden layer feeds the projector."""

import importlib.util

import torch
import torch.nn as nn
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.loading import load_pretrained, transformers_quiet


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


def image_processor_class():
    """CLIP's image processor: the torchvision-backed one when torchvision is installed, else the PIL one (which
    transformers otherwise falls back to with a warning per load)."""
    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor  # (resolved here: naming it without torchvision prints that notice)


def _load_clip_vision(name: str, device_map=None) -> nn.Module:
    # A full CLIP checkpoint also holds the text tower and the projections: not needed for image features.
    model = load_pretrained(CLIPVisionModel, name, expected_unused=("text_model.", "text_projection", "visual_projection",
                                                                     "logit_scale"), device_map=device_map)
    # transformers 4.x keeps the `vision_model` attribute itself; 5.x does not.
    return model if hasattr(model, "vision_model") else CLIPVisionHolder(model)


# Which tokens of the selected hidden layer reach the projector, per `mm_vision_select_feature`: "patch" drops the
# leading [CLS] token, "cls_patch" keeps it.
FEATURE_TOKENS = {"patch": slice(1, None), "cls_patch": slice(None)}


class CLIPVisionTower(nn.Module):
    """LLaVA's frozen CLIP image encoder: pixels -> hidden states of layer `mm_vision_select_layer`.

    Attribute names are part of the checkpoint format (`model.vision_tower.vision_tower.vision_model.*`) and of
    LLaVA's interface (`vision_tower_name`, `select_layer`, `select_feature`, `image_processor`, `is_loaded`).
    With `delay_load` only the CLIP config is read (`cfg_only`), so a model can be built before its weights
    arrive; `load_model` then reads the encoder and its image processor. A tower that will be trained
    (`unfreeze_mm_vision_tower`) is always loaded at once.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in FEATURE_TOKENS:
            raise ValueError(f"mm_vision_select_feature must be one of {sorted(FEATURE_TOKENS)}, "
                             f"got {self.select_feature!r}")
        self.select_layer = args.mm_vision_select_layer
        self.vision_tower_name = vision_tower
        self.is_loaded = False
        if delay_load and not getattr(args, "unfreeze_mm_vision_tower", False):
            self.cfg_only = CLIPVisionConfig.from_pretrained(vision_tower)
        else:
            self.load_model()

    def load_model(self, device_map=None) -> None:
        """Read the (frozen) encoder and its image processor; a second call does nothing."""
        if not self.is_loaded:
            with transformers_quiet():  # its notice about falling back to the PIL backend: nothing to act on
                self.image_processor = image_processor_class().from_pretrained(self.vision_tower_name)
            self.vision_tower = _load_clip_vision(self.vision_tower_name, device_map=device_map)
            self.vision_tower.requires_grad_(False)
            self.is_loaded = True

    def feature_select(self, hidden_states) -> torch.Tensor:
        """The selected layer of a CLIP `hidden_states` tuple, restricted to FEATURE_TOKENS[select_feature]."""
        return hidden_states[self.select_layer][:, FEATURE_TOKENS[self.select_feature]]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, C] in the tower's dtype (one encoder call)."""
        out = self.vision_tower(pixels.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out.hidden_states)

    @torch.no_grad()
    def forward(self, images):
        """[B, 3, H, W] pixels -> [B, N, C] features (N = patches, +1 with cls_patch), in the images' dtype.

        A list of [3, H, W] images gives a list of [N, C] features; images of one size share a single encoder
        call."""
        if not isinstance(images, list):
            return self._encode(images).to(images.dtype)
        if images and all(image.shape == images[0].shape for image in images):
            features = self._encode(torch.stack(images)).unbind(0)
        else:
            features = [self._encode(image.unsqueeze(0))[0] for image in images]
        return [feature.to(image.dtype) for feature, image in zip(features, images)]

    @property
    def dummy_feature(self) -> torch.Tensor:
        """One all-zero feature row [1, C]."""
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def config(self) -> CLIPVisionConfig:
        """The CLIP vision config, available before the weights are loaded."""
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        """Patches along each side of the (square) input image."""
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side * self.num_patches_per_side
