"""LLaVA's multimodal glue: vision tower + projector on the model, and splicing image features into the text.

`LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal` is the single function that turns token ids with
IMAGE_TOKEN_INDEX placeholders into LLM input embeddings; methods built on LLaVA may replace exactly this function.
"""
import math
from abc import ABC, abstractmethod

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.utils import load_weights_only

from .anyres import encode_anyres_images, unpad_image  # noqa: F401  (unpad_image: upstream import path)
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector


# Config fields `initialize_vision_modules` records, read from the model arguments: (field, default). A default of
# REQUIRED means the arguments must carry the field; the others fall back as LLaVA's scripts expect.
REQUIRED = object()
VISION_CONFIG_FIELDS = (
    ("mm_projector_type", "linear"),
    ("mm_vision_select_layer", REQUIRED),
    ("mm_vision_select_feature", REQUIRED),
    ("mm_patch_merge_type", "flat"),
)


def load_projector_weights(path: str) -> dict:
    """Read an `mm_projector.bin`-style file safely (safetensors or `torch.load(weights_only=True)`)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return load_weights_only(path)


def strip_prefix(weights: dict, keyword: str) -> dict:
    """{'model.mm_projector.0.weight': w} -> {'0.weight': w} for keyword 'mm_projector'."""
    marker = keyword + "."
    return {name.partition(marker)[2]: value for name, value in weights.items() if marker in name}


def vision_config_values(model_args) -> dict:
    """The VISION_CONFIG_FIELDS values of `model_args`, rejecting arguments that lack a required one."""
    values = {}
    for field, default in VISION_CONFIG_FIELDS:
        value = getattr(model_args, field, default)
        if value is REQUIRED:
            raise ValueError(f"model arguments {type(model_args).__name__} have no {field!r}, which the vision "
                             f"tower needs (e.g. --{field})")
        values[field] = value
    return values


def needs_image_newline(config) -> bool:
    """Whether the merge type ends grid rows with the learned `image_newline` vector ("spatial_unpad")."""
    return "unpad" in (getattr(config, "mm_patch_merge_type", "") or "")


class LlavaMetaModel:
    """Mixin for the base LLM model: owns `vision_tower`, `mm_projector` and (spatial_unpad) `image_newline`.

    `image_newline` is a bare parameter read outside this module's forward; see `llava.model.anyres` for why
    ZeRO-3 keeps it whole (stage3_param_persistence_threshold).

    Two ways in: a saved LLaVA config (with `mm_vision_tower`) builds the modules empty at construction, for the
    checkpoint to fill (the tower's weights load later, `delay_load`); `initialize_vision_modules` adds them to a
    plain LLM from the training arguments, or completes modules that construction left unloaded.
    """

    def __init__(self, config):
        super().__init__(config)
        if hasattr(config, "mm_vision_tower"):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)
            if needs_image_newline(config):
                self.image_newline = nn.Parameter(torch.empty(config.hidden_size, dtype=self.dtype))

    def get_vision_tower(self):
        """The vision tower, or None; under FSDP it is kept in a one-element list, outside the module tree."""
        tower = getattr(self, "vision_tower", None)
        return tower[0] if isinstance(tower, list) else tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach (or load) the vision tower, record the vision settings in the config, make sure the projector
        (and, for "spatial_unpad", `image_newline`) exist and train, and load `pretrain_mm_mlp_adapter` if given."""
        settings = vision_config_values(model_args)
        self.config.mm_vision_tower = model_args.vision_tower
        tower = self._ready_vision_tower(model_args, hide_from_module_tree=bool(fsdp))
        self.config.use_mm_proj = True
        self.config.mm_hidden_size = tower.hidden_size
        for field, value in settings.items():
            setattr(self.config, field, value)
        self._ready_projector()
        if needs_image_newline(self.config):
            self._ready_image_newline()
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter is not None:
            self._load_projector_adapter(adapter)

    def _ready_vision_tower(self, model_args, hide_from_module_tree: bool):
        """Load the tower built at construction, or build a loaded one from `model_args`.

        A new tower goes into a one-element list under FSDP, so FSDP does not wrap the frozen encoder."""
        tower = self.get_vision_tower()
        if tower is not None:
            tower.load_model()
            return tower
        tower = build_vision_tower(model_args)
        self.vision_tower = [tower] if hide_from_module_tree else tower
        return tower

    def _ready_projector(self) -> None:
        """Build the projector from the config, or re-enable gradients of an existing one (a LoRA setup may have
        frozen it)."""
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config)
        else:
            self.mm_projector.requires_grad_(True)

    def _ready_image_newline(self) -> None:
        """Create `image_newline` (normal, std 1/sqrt(hidden)) if missing; it trains with the projector."""
        if getattr(self, "image_newline", None) is None:
            hidden = self.config.hidden_size
            self.image_newline = nn.Parameter(torch.randn(hidden, dtype=self.dtype) * (1 / math.sqrt(hidden)))
        self.image_newline.requires_grad_(True)

    def _load_projector_adapter(self, path: str) -> None:
        """Load stage-1 projector weights (keys `...mm_projector.<name>`); they must fit the projector exactly."""
        weights = strip_prefix(load_projector_weights(path), "mm_projector")
        missing, unexpected = self.mm_projector.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: projector weights do not fit mm_projector_type={self.config.mm_projector_type!r} "
                f"(missing {missing}, unexpected {unexpected})"
            )


class LlavaMetaForCausalLM(ABC):
    """Mixin for the causal LM: encodes images and splices them into the token sequence."""

    @abstractmethod
    def get_model(self):
        pass

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> projected visual tokens [B, N, hidden]."""
        image_features = self.get_model().get_vision_tower()(images)
        return self.get_model().mm_projector(image_features)

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
    ):
        """Replace each IMAGE_TOKEN_INDEX by that image's visual tokens; re-pad the batch.

        One image is consumed per image token, and one per sample without any (the data pipeline gives text-only
        samples of a multimodal set a dummy image, as upstream LLaVA does). Visual positions get IGNORE_INDEX labels.
        Multi-view (anyres) batches, a 5-D tensor or a list, become one packed sequence per image (`llava.model.anyres`,
        which needs `image_sizes`, (width, height) per image).
        Returns `(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)`; optional inputs that
        were None come back None.
        """
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if isinstance(images, list) or images.ndim == 5:
            image_features = encode_anyres_images(self, images, image_sizes)  # one packed [S_i, hidden] per image
        else:
            image_features = self.encode_images(images)

        if getattr(self.config, "tune_mm_mlp_adapter", False) and getattr(self.config, "mm_use_im_start_end", False):
            raise NotImplementedError("mm_use_im_start_end with tune_mm_mlp_adapter is not supported (as upstream)")

        _labels, _position_ids, _attention_mask = labels, position_ids, attention_mask
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        embed_tokens = self.get_model().embed_tokens
        new_embeds, new_labels = [], []
        image_idx = 0
        for ids, mask, labs in zip(input_ids, attention_mask, labels):
            ids, labs = ids[mask], labs[mask]
            is_image = ids == IMAGE_TOKEN_INDEX
            # Embed all text at once (placeholders temporarily mapped to id 0).
            text_embeds = embed_tokens(torch.where(is_image, torch.zeros_like(ids), ids))
            image_positions = torch.nonzero(is_image).flatten().tolist()
            if not image_positions:
                # Keep the projector in the graph (ZeRO-3 / DDP expect every parameter to be used).
                new_embeds.append(torch.cat([text_embeds, image_features[image_idx][0:0]], dim=0))
                new_labels.append(labs)
                image_idx += 1
                continue
            pieces, piece_labels, start = [], [], 0
            for pos in image_positions:
                feats = image_features[image_idx]
                image_idx += 1
                pieces += [text_embeds[start:pos], feats]
                piece_labels += [labs[start:pos], labs.new_full((feats.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            pieces.append(text_embeds[start:])
            piece_labels.append(labs[start:])
            new_embeds.append(torch.cat(pieces, dim=0))
            new_labels.append(torch.cat(piece_labels, dim=0))

        max_len = getattr(self.config, "tokenizer_model_max_length", None)
        if max_len is not None:
            new_embeds = [e[:max_len] for e in new_embeds]
            new_labels = [l[:max_len] for l in new_labels]
        return (None,) + pad_multimodal_batch(
            new_embeds, new_labels, _position_ids, _attention_mask, _labels, past_key_values,
            padding_side=getattr(self.config, "tokenizer_padding_side", "right"),
        )

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """Add the image tokens the flags ask for and size the embeddings to match.

        `mm_use_im_patch_token` adds <im_patch>; `mm_use_im_start_end` adds <im_start>/<im_end>, whose new rows
        start at the mean embedding, train on the input side during stage 1 (`tune_mm_mlp_adapter`), and are
        taken from `pretrain_mm_mlp_adapter` when that file holds `model.embed_tokens.weight`.
        """
        if model_args.mm_use_im_patch_token:
            self._add_special_tokens(tokenizer, [DEFAULT_IMAGE_PATCH_TOKEN])
        if not model_args.mm_use_im_start_end:
            return
        num_new = self._add_special_tokens(tokenizer, [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN])
        if num_new > 0:
            self._start_rows_at_mean(num_new)
        if model_args.tune_mm_mlp_adapter:
            self.get_input_embeddings().requires_grad_(True)
            self.get_output_embeddings().requires_grad_(False)
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            self._load_adapter_embeddings(adapter, num_new)

    def _add_special_tokens(self, tokenizer, tokens) -> int:
        """Add `tokens` as special tokens and resize the embeddings to the tokenizer; returns how many were new."""
        added = tokenizer.add_tokens(tokens, special_tokens=True)
        self.resize_token_embeddings(len(tokenizer))
        return added

    def _start_rows_at_mean(self, num_new: int) -> None:
        """Set the last `num_new` input and output embedding rows to the mean of the rows before them."""
        for matrix in (self.get_input_embeddings().weight.data, self.get_output_embeddings().weight.data):
            matrix[-num_new:] = matrix[:-num_new].mean(dim=0, keepdim=True)

    def _load_adapter_embeddings(self, path: str, num_new: int) -> None:
        """Copy `model.embed_tokens.weight` from a stage-1 file: the whole matrix, or just the new rows."""
        saved = load_projector_weights(path).get("model.embed_tokens.weight")
        if saved is None:
            return
        target = self.get_input_embeddings().weight.data
        if saved.shape == target.shape:
            target.copy_(saved)
        elif saved.shape[0] == num_new:
            target[-num_new:] = saved
        else:
            raise ValueError(
                f"{path}: embed_tokens has shape {tuple(saved.shape)}; expected {tuple(target.shape)} "
                f"or {num_new} new rows"
            )


def pad_multimodal_batch(embeds, labels, position_ids, attention_mask, orig_labels, past_key_values, padding_side="right"):
    """Stack variable-length sequences into a padded batch; returns the tail of LLaVA's 6-tuple (5 items)."""
    batch, longest = len(embeds), max(e.shape[0] for e in embeds)
    hidden, dtype, device = embeds[0].shape[1], embeds[0].dtype, embeds[0].device
    lengths = torch.tensor([e.shape[0] for e in embeds], device=device)
    steps = torch.arange(longest, device=device)
    if padding_side == "left":
        valid = steps.unsqueeze(0) >= (longest - lengths).unsqueeze(1)
    else:
        valid = steps.unsqueeze(0) < lengths.unsqueeze(1)
    padded = embeds[0].new_zeros(batch, longest, hidden, dtype=dtype)
    padded[valid] = torch.cat(embeds, dim=0)
    padded_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=labels[0].dtype, device=device)
    padded_labels[valid] = torch.cat(labels, dim=0)
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    out_mask = None if attention_mask is None else valid.to(attention_mask.dtype)
    out_positions = None if position_ids is None else positions.to(position_ids.dtype)
    out_labels = None if orig_labels is None else padded_labels
    return out_positions, out_mask, past_key_values, padded, out_labels
