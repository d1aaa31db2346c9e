"""Hugging Face's Llava classes seen through LLaVA's interface, so DualSpeed's core runs on them unchanged.

`LlavaForConditionalGeneration` and `LlavaNextForConditionalGeneration` (transformers 5) differ from the LLaVA
repository in where their parts live and in two conventions, and `HFLlavaHost` bridges exactly those:
- parts: `get_model()` is the language model (`model.language_model`), `get_vision_tower()` a view of the CLIP tower
  that selects `vision_feature_layer` / `vision_feature_select_strategy` as Hugging Face does, the projector is
  `multi_modal_projector`, NeXT's newline `image_newline`, and the mode isolator lives on `model.model` (saved as
  `model.mode_isolator.weight`, the same key as in LLaVA checkpoints);
- image tokens: the processor expands each image into as many `image_token_id` tokens as it has visual tokens;
  DualSpeed's splice wants LLaVA's single placeholder per image (`placeholder_ids`);
- NeXT: `pixel_values` are padded to the batch's largest number of views and `image_sizes` are (height, width);
  `images` turns them into LLaVA's per-image view lists and (width, height) sizes, and the host's config states
  the pinpoints in LLaVA's (width, height) order, so `dualspeed_patch.anyres` packs exactly as Hugging Face does.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..anyres import grid_shape, packed_index, packing_settings
from ..splice import IMAGE_TOKEN_INDEX
from ..state import HOST_ATTR

SELECT_FEATURE = {"default": "patch", "full": "cls_patch"}  # Hugging Face's strategy -> LLaVA's select_feature


class HFVisionTower(nn.Module):
    """The Hugging Face CLIP tower as LLaVA's `CLIPVisionTower`: pixels -> hidden states of `vision_feature_layer`
    ([CLS] dropped under the "default" strategy), concatenated over the layers when it is a list."""

    def __init__(self, tower: nn.Module, feature_layer, strategy: str):
        super().__init__()
        if strategy not in SELECT_FEATURE:
            raise ValueError(f"vision_feature_select_strategy must be one of {sorted(SELECT_FEATURE)}, got {strategy!r}")
        self.vision_tower = tower
        self.select_layer, self.select_feature = feature_layer, SELECT_FEATURE[strategy]
        self.vision_tower_name = None  # Hugging Face Llava keeps no path to the full CLIP checkpoint

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def tokens_per_view(self) -> int:
        """Visual tokens one view yields (patches, plus [CLS] under "full"; times nothing for several layers)."""
        return self.num_patches_per_side ** 2 + (self.select_feature == "cls_patch")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixels.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        start = 1 if self.select_feature == "patch" else 0
        layers = self.select_layer if isinstance(self.select_layer, (list, tuple)) else [self.select_layer]
        return torch.cat([out.hidden_states[layer][:, start:] for layer in layers], dim=-1)


class HostConfig:
    """The config fields DualSpeed reads, stated for the Hugging Face model; other names read (and `update` writes)
    the model's own config, so DualSpeed's settings are saved in its config.json."""

    def __init__(self, hf_config, is_next: bool):
        text = hf_config.text_config
        self.__dict__.update(
            _hf=hf_config,
            hidden_size=text.hidden_size,
            num_hidden_layers=text.num_hidden_layers,
            mm_patch_merge_type="spatial_unpad" if is_next else "flat",
            image_aspect_ratio="anyres" if is_next else "square",
            # LLaVA's select_best_resolution reads (width, height): Hugging Face states (height, width) pairs.
            image_grid_pinpoints=[(w, h) for h, w in hf_config.image_grid_pinpoints] if is_next else None,
            unpad_rounds=True,
            text_only_consumes_image=False,  # Hugging Face batches hold images only for samples that have them
            tokenizer_model_max_length=None,  # the processor already expanded and truncated the text
            tokenizer_padding_side="right",
        )

    def __getattr__(self, name: str) -> Any:
        hf = self.__dict__["_hf"]
        if hasattr(hf, name):
            return getattr(hf, name)
        return getattr(hf.text_config, name)

    def update(self, values: dict) -> None:
        self._hf.update(values)


class HFLlavaHost:
    """LLaVA's interface (get_model, get_vision_tower, encode_images, config, ...) over one Hugging Face Llava or
    LlavaNext model. Holds no parameters of its own; every part is the model's."""

    def __init__(self, hf: nn.Module):
        if not (hasattr(hf, "model") and hasattr(hf.model, "multi_modal_projector")):
            raise TypeError(f"expected a Hugging Face LlavaForConditionalGeneration / LlavaNextForConditionalGeneration, "
                            f"got {type(hf).__name__}")
        self.hf = hf
        self.is_next = hasattr(hf.model, "image_newline")
        config = hf.config
        self.config = HostConfig(config, self.is_next)
        self.tower = HFVisionTower(hf.model.vision_tower, config.vision_feature_layer,
                                   config.vision_feature_select_strategy)
        self.image_token_id = int(config.image_token_id)

    # ---- LLaVA's interface
    @property
    def training(self) -> bool:
        return self.hf.training

    def get_model(self) -> nn.Module:
        return self.hf.model.language_model

    def get_vision_tower(self) -> HFVisionTower:
        return self.tower

    def encode_images(self, views: torch.Tensor) -> torch.Tensor:
        return self.hf.model.multi_modal_projector(self.tower(views))

    def get_output_embeddings(self) -> nn.Module:
        return self.hf.lm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.get_model().embed_tokens

    def llava_part(self, name: str):
        """`dualspeed_patch.host.llava_part`'s mapping for this model."""
        return {"mm_projector": self.hf.model.multi_modal_projector,
                "image_newline": getattr(self.hf.model, "image_newline", None),
                "isolator_home": self.hf.model}[name]

    # ---- Hugging Face's conventions -> LLaVA's
    def llava_batch(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                    pixel_values: Optional[torch.Tensor], image_sizes=None, instructions: Optional[list] = None) -> tuple:
        """A processor batch in LLaVA's form: (input_ids with one placeholder per image, attention_mask, images,
        image_sizes as (width, height), each image's instruction); unchanged without `pixel_values`."""
        if pixel_values is None:
            return input_ids, attention_mask, None, None, instructions
        if input_ids is None:
            raise ValueError("DualSpeed needs input_ids with the processor's image tokens, not inputs_embeds")
        images, sizes = self.images(pixel_values, image_sizes)
        ids, mask = self.placeholder_ids(input_ids, attention_mask, self.full_lengths(images, sizes))
        return ids, mask, images, sizes, per_image(instructions, ids)

    def images(self, pixel_values: torch.Tensor, image_sizes=None) -> tuple:
        """(LLaVA `images`, LLaVA `image_sizes`) from the processor's `pixel_values` / `image_sizes`.

        Llava: the [I, 3, H, W] batch as it is. NeXT: each image's own views (its padding dropped) and its size as
        (width, height)."""
        if not self.is_next:
            return pixel_values, None
        if image_sizes is None:
            raise ValueError("LlavaNext batches need image_sizes (the processor returns them beside pixel_values)")
        sizes = [(int(w), int(h)) for h, w in torch.as_tensor(image_sizes).tolist()]
        settings = packing_settings(self)
        views = [1 + cols * rows for cols, rows in (grid_shape(size, settings) for size in sizes)]
        if pixel_values.ndim != 5 or pixel_values.shape[0] != len(sizes) or max(views) > pixel_values.shape[1]:
            raise ValueError(f"LlavaNext pixel_values of shape {tuple(pixel_values.shape)} do not hold the views of "
                             f"{len(sizes)} images with views {views} (image_sizes {sizes} as width x height)")
        return [pixel_values[i, :n] for i, n in enumerate(views)], sizes

    def full_lengths(self, images, sizes) -> torch.Tensor:
        """[I] number of image tokens the processor wrote for each image (its full visual sequence)."""
        n_tokens = self.tower.tokens_per_view
        if not self.is_next:
            return torch.full((images.shape[0],), n_tokens, dtype=torch.long)
        counts = [int(view.shape[0]) for view in images]
        return packed_index(counts, n_tokens, sizes, packing_settings(self)).lengths

    def placeholder_ids(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                        lengths: torch.Tensor) -> tuple:
        """(input_ids, attention_mask) in LLaVA's form: the first of each image's `image_token_id` tokens becomes
        the placeholder IMAGE_TOKEN_INDEX and the rest leave the attention mask, so the splice puts the image's
        visual sequence (full, or pruned with its isolator) where the processor's tokens were.

        Checks, with one host synchronisation, that the batch holds exactly `lengths` image tokens per image, each
        image's tokens consecutive in one sample, as Hugging Face's own forward requires."""
        is_image = input_ids == self.image_token_id
        flat = is_image.flatten()
        rank = torch.cumsum(flat.long(), 0) - 1  # rank of each image token among the batch's image tokens
        lengths = lengths.to(input_ids.device)
        starts = torch.cumsum(lengths, 0) - lengths
        is_start = flat & torch.isin(rank, starts)
        # Consecutive: each image token after a start directly follows the previous image token in the same row.
        position = torch.arange(flat.numel(), device=flat.device)
        row = position // input_ids.shape[1]
        image_pos, image_row = position[flat], row[flat]
        follows = (image_pos[1:] == image_pos[:-1] + 1) & (image_row[1:] == image_row[:-1])
        ok = (flat.sum() == lengths.sum()) & (follows | is_start[flat][1:]).all()
        if not bool(ok):
            raise ValueError(f"the batch's image tokens (id {self.image_token_id}): {int(flat.sum())} in total, "
                             f"expected {lengths.tolist()} per image, each image's tokens consecutive in one sample "
                             "(did the processor use the same image size and feature strategy as the model?)")
        ids = torch.where(is_start, torch.full_like(flat, IMAGE_TOKEN_INDEX, dtype=input_ids.dtype),
                          input_ids.flatten()).view_as(input_ids)
        real = torch.ones_like(is_image) if attention_mask is None else attention_mask.bool()
        mask = real & ~(is_image & ~is_start.view_as(is_image))
        return ids, mask.to(attention_mask.dtype if attention_mask is not None else torch.long)


def per_image(instructions: Optional[list], placeholder_ids: torch.Tensor) -> Optional[list]:
    """Each image's instruction from each sample's (samples without an image hold none in Hugging Face batches);
    None stays None."""
    if instructions is None:
        return None
    if len(instructions) != placeholder_ids.shape[0]:
        raise ValueError(f"got {len(instructions)} instructions for a batch of {placeholder_ids.shape[0]} samples")
    counts = (placeholder_ids == IMAGE_TOKEN_INDEX).sum(1).tolist()
    return [text for text, n in zip(instructions, counts) for _ in range(n)]


def host_of(model) -> HFLlavaHost:
    """The host adapter of a Hugging Face Llava model (peft-wrapped or not), created on first use and kept on it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    host = base.__dict__.get(HOST_ATTR)
    if host is None:
        host = HFLlavaHost(base)
        base.__dict__[HOST_ATTR] = host
    return host
