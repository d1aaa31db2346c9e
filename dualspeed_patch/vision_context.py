"""Context the instruction- and attention-based pruners need, computed from the CLIP vision tower.

- CDPruner's `relevance` [B, N]: `clip_relevance` (the formula) and `ClipTextScorer` (loads the CLIP text tower
  and projections from the vision tower's checkpoint directory and applies the formula to instruction strings).
- FasterVLM's `cls_attention` [B, N]: `capture_cls_attention`, a context manager that hooks one encoder layer.

Which encoder layer produces LLaVA's features: with `output_hidden_states=True` a CLIP tower with L encoder
layers returns L + 1 hidden states: index 0 is the embedding output (after `pre_layrnorm`) and index h >= 1 is
the output of encoder layer h - 1. So `hidden_states[select_layer]` comes from encoder layer
`encoder_layer_for_select_layer(select_layer, L)`: L + select_layer for a negative select_layer (LLaVA's -2 is
layer L - 2, e.g. layer 22 of ViT-L/14's 24, the penultimate layer) and select_layer - 1 for a positive one.
For negative values this is also `layers[select_layer]` with Python indexing, and the layer whose
`attentions[select_layer]` FasterVLM reads.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_PLACEHOLDER = "<image>"


# ---------------------------------------------------------------- CDPruner: instruction relevance


def clip_relevance(
    patch_embeds: torch.Tensor,
    text_embeds: Optional[torch.Tensor] = None,
    has_text: Optional[torch.Tensor] = None,
    valid: Optional[torch.Tensor] = None,
    *,
    negate: bool = False,
) -> torch.Tensor:
    """CDPruner's per-token relevance q [B, N] in [0, 1] (fp32).

    `patch_embeds` [B, N, C] are image-patch embeddings in CLIP's joint space (through the visual projection),
    `text_embeds` [B, C] each sample's instruction embedding (text projection). q is the cosine similarity of
    each patch with its sample's instruction, min-max normalised per sample over the valid tokens
    (`valid` [B, N], default all), so the least relevant valid token gets 0 and the most relevant 1. Rows with
    `has_text` False (no instruction, e.g. the plain pretraining template), every row when `text_embeds` is None,
    and rows whose similarities are all equal get q = 1 (the pure-diversity DPP). Invalid tokens get 0.
    `negate=True` ranks by negative similarity, as the reference CDPruner code does for LLaVA.
    """
    if patch_embeds.dim() != 3:
        raise ValueError(f"patch_embeds must be [batch, tokens, dim], got shape {tuple(patch_embeds.shape)}")
    b, n, c = patch_embeds.shape
    device = patch_embeds.device
    valid = torch.ones(b, n, dtype=torch.bool, device=device) if valid is None else valid.to(device)
    if valid.shape != (b, n):
        raise ValueError(f"valid must be [batch, tokens] = {(b, n)}, got shape {tuple(valid.shape)}")
    if text_embeds is None:
        return valid.float()
    if text_embeds.shape != (b, c):
        raise ValueError(f"text_embeds must be [batch, dim] = {(b, c)}, got shape {tuple(text_embeds.shape)}")
    if has_text is None:
        has_text = torch.ones(b, dtype=torch.bool, device=device)
    elif has_text.shape != (b,):
        raise ValueError(f"has_text must be [batch] = ({b},), got shape {tuple(has_text.shape)}")
    text_unit = F.normalize(text_embeds.to(device=device, dtype=torch.float32), dim=-1)
    sim = (F.normalize(patch_embeds.float(), dim=-1) @ text_unit.unsqueeze(2)).squeeze(2)
    if negate:
        sim = -sim
    low = sim.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    high = sim.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    spread = high - low
    flat = ~(spread > 0)  # also catches rows with no valid token (inf - inf = nan)
    q = (sim - low) / torch.where(flat, torch.ones_like(spread), spread)
    q = torch.where(flat | ~has_text.to(device).unsqueeze(1), torch.ones_like(q), q)
    return q.masked_fill(~valid, 0.0)


def _clean_instruction(text: Optional[str]) -> str:
    return "" if text is None else text.replace(IMAGE_PLACEHOLDER, " ").strip()


def read_checkpoint_tensors(directory: Union[str, Path], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a Hugging Face checkpoint directory (single or sharded safetensors, or
    pytorch_model.bin), read without building the model; a KeyError names the missing ones and the directory."""
    directory = Path(directory)
    wanted = list(names)
    found: dict[str, torch.Tensor] = {}
    for stem, loader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_torch_bin)):
        index = directory / f"{stem}.index.json"
        if (directory / stem).is_file():
            found = loader(directory / stem, wanted)
        elif index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            for shard in sorted({weight_map[name] for name in wanted if name in weight_map}):
                found.update(loader(directory / shard, [n for n in wanted if weight_map.get(n) == shard]))
        else:
            continue
        break
    else:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (single or sharded) in {directory}")
    missing = [name for name in wanted if name not in found]
    if missing:
        raise KeyError(f"checkpoint in {directory} has no tensor(s) {', '.join(missing)}")
    return found


def _read_safetensors(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        return {name: handle.get_tensor(name) for name in names if name in keys}


def _read_torch_bin(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return {name: state[name].clone() for name in names if name in state}


class ClipTextScorer(nn.Module):
    """CLIP's text tower + text projection + tokenizer, and the vision side's post_layernorm + visual projection,
    loaded from the vision tower's checkpoint directory (a full `CLIPModel` checkpoint, as
    openai/clip-vit-large-patch14-336 and the tiny world's tiny-clip are), to compute CDPruner's relevance.

    Which image features it scores: the vision tower's selected-layer patch features, i.e. exactly what
    `CLIPVisionTower.forward` returns and the projector consumes (hidden_states[mm_vision_select_layer] without
    [CLS]), mapped into the joint space with post_layernorm then visual_projection, the head CLIP applies to
    its final [CLS] state. Why: those are the tokens being pruned, so q lines up with them one to one at no
    extra tower cost, and it is what the reference CDPruner implementation for LLaVA scores. (The head was
    trained on the last layer's [CLS]; on penultimate patch tokens it is an approximation of the joint space.)
    Frozen; move it with `.to(device, dtype)`. Keep it outside the trained model (no optimizer / ZeRO state).
    """

    def __init__(self, vision_tower_path: Union[str, Path], *, negate: bool = False):
        super().__init__()
        from transformers import AutoTokenizer, CLIPConfig, CLIPTextModelWithProjection

        path = Path(vision_tower_path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"CDPruner's CLIP text scorer needs a local CLIP checkpoint; no {config_file}")
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type != "clip":
            raise ValueError(
                f"CDPruner needs a full CLIP checkpoint (text tower + projections) in {path}, but its config.json "
                f"has model_type={model_type!r} (expected 'clip')"
            )
        config = CLIPConfig.from_pretrained(str(path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.text_model, info = CLIPTextModelWithProjection.from_pretrained(str(path), output_loading_info=True)
        if info.get("missing_keys"):
            raise KeyError(f"CLIP text tower weights missing from {path}: {sorted(info['missing_keys'])[:5]}")
        vision = config.vision_config
        self.post_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.visual_projection = nn.Linear(vision.hidden_size, config.projection_dim, bias=False)
        tensors = read_checkpoint_tensors(
            path, ["visual_projection.weight", "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]
        )
        self.visual_projection.weight.data.copy_(tensors["visual_projection.weight"])
        self.post_layernorm.weight.data.copy_(tensors["vision_model.post_layernorm.weight"])
        self.post_layernorm.bias.data.copy_(tensors["vision_model.post_layernorm.bias"])
        self.max_length = int(self.text_model.config.max_position_embeddings)
        self.negate = negate
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.visual_projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[Optional[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, P] fp32 instruction embeddings, [B] has_text) for instruction strings; `<image>` placeholders
        are removed, None / blank entries count as no instruction (zero rows), and each text is truncated to
        CLIP's context length (77 tokens, end-of-text kept). The text tower runs only on rows with text."""
        cleaned = [_clean_instruction(t) for t in texts]
        rows = [i for i, t in enumerate(cleaned) if t]
        embeds = torch.zeros(len(cleaned), self.visual_projection.out_features, device=self.device)
        has_text = torch.zeros(len(cleaned), dtype=torch.bool)
        if rows:
            batch = self.tokenizer(
                [cleaned[i] for i in rows], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            out = self.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
            index = torch.tensor(rows, device=self.device)
            embeds.index_copy_(0, index, out.float())
            has_text[rows] = True
        return embeds, has_text.to(self.device)

    @torch.no_grad()
    def image_embeds(self, patch_features: torch.Tensor) -> torch.Tensor:
        """[B, N, C_vision] selected-layer patch features -> [B, N, P] fp32 embeddings in CLIP's joint space."""
        x = patch_features.to(device=self.device, dtype=self.dtype)
        return self.visual_projection(self.post_layernorm(x)).float()

    @torch.no_grad()
    def relevance(
        self, texts: Sequence[Optional[str]], patch_features: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """CDPruner's q [B, N] (see `clip_relevance`) for B instructions and their images' selected-layer patch
        features [B, N, C_vision]; returned on the features' device."""
        if len(texts) != patch_features.shape[0]:
            raise ValueError(f"got {len(texts)} instructions for {patch_features.shape[0]} images")
        text, has_text = self.text_embeds(texts)
        valid = None if valid is None else valid.to(self.device)
        q = clip_relevance(self.image_embeds(patch_features), text, has_text, valid, negate=self.negate)
        return q.to(patch_features.device)


# ---------------------------------------------------------------- FasterVLM: [CLS] attention at one layer


def encoder_layer_for_select_layer(select_layer: int, num_layers: int) -> int:
    """Index (0-based, into `encoder.layers`) of the encoder layer whose output is `hidden_states[select_layer]`
    for a tower with `num_layers` layers (see the module docstring); -2 -> num_layers - 2."""
    h = select_layer + num_layers + 1 if select_layer < 0 else select_layer
    if not 1 <= h <= num_layers:
        raise ValueError(
            f"mm_vision_select_layer={select_layer} does not select an encoder layer's output of a {num_layers}-layer "
            f"tower (valid: 1..{num_layers} or -{num_layers}..-1; 0 / -{num_layers + 1} is the embedding output)"
        )
    return h - 1


def encoder_layers(vision_model: nn.Module) -> nn.ModuleList:
    """The `encoder.layers` of a CLIP vision model, given LLaVA's `CLIPVisionTower`, our transformers-5 holder
    (`.vision_model`), or a Hugging Face `CLIPVisionModel` (4.x nests it under `.vision_model`, 5.x does not)."""
    module = vision_model
    for _ in range(4):
        encoder = getattr(module, "encoder", None)
        if encoder is not None and isinstance(getattr(encoder, "layers", None), nn.ModuleList):
            return encoder.layers
        inner = getattr(module, "vision_model", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "vision_tower", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    raise TypeError(f"cannot find a CLIP encoder (.encoder.layers) in {type(vision_model).__name__}")


class ClsAttentionCapture:
    """What `capture_cls_attention` records: one [B, T] fp32 tensor per vision forward inside the context."""

    def __init__(self) -> None:
        self.captured: list[torch.Tensor] = []

    @property
    def cls_attention(self) -> torch.Tensor:
        """The recorded scores, concatenated along the batch when the tower ran more than once."""
        if not self.captured:
            raise RuntimeError("no vision tower forward ran inside capture_cls_attention(...)")
        return self.captured[0] if len(self.captured) == 1 else torch.cat(self.captured, dim=0)

    def clear(self) -> None:
        self.captured.clear()


def _cls_attention_row(attn: nn.Module, hidden: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Head-averaged softmax(q_cls . K^T * scale) [B, T] from an attention module's input, via its own
    q/k projections (called as modules, so parameter-gathering hooks such as ZeRO-3's still fire)."""
    b, t, _ = hidden.shape
    head_dim = attn.head_dim
    heads = getattr(attn, "num_heads", None) or attn.config.num_attention_heads
    scale = getattr(attn, "scale", head_dim**-0.5)
    query = attn.q_proj(hidden[:, :1]).view(b, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, d]
    keys = attn.k_proj(hidden).view(b, t, heads, head_dim).transpose(1, 2)  # [B, H, T, d]
    logits = torch.matmul(query, keys.transpose(-1, -2)) * scale  # [B, H, 1, T]
    if mask is not None:
        row = mask[..., :1, :]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row
    return logits.softmax(dim=-1, dtype=torch.float32).mean(dim=1).squeeze(1)


@contextlib.contextmanager
def capture_cls_attention(
    vision_model: nn.Module, layer_index: int, *, include_cls: bool = False
) -> Iterator[ClsAttentionCapture]:
    """Record FasterVLM's [CLS] attention while the enclosed code runs the CLIP vision tower.

    Registers one forward pre-hook on `encoder.layers[layer_index].self_attn` (use
    `encoder_layer_for_select_layer(select_layer, L)` for LLaVA's feature layer) that recomputes only the [CLS]
    query row of that layer's attention from the module's own input: softmax(q_cls K^T * scale) in fp32,
    averaged over heads. The tower's own computation is untouched (any attention implementation; no
    `output_attentions`), so its outputs are unchanged. Yields a `ClsAttentionCapture`; its `cls_attention` is
    [B, N] over the patch tokens (the [CLS] column dropped, matching `mm_vision_select_feature='patch'`;
    `include_cls=True` keeps it, for 'cls_patch'). The hook is removed on exit.
    """
    layers = encoder_layers(vision_model)
    if not -len(layers) <= layer_index < len(layers):
        raise IndexError(f"layer_index {layer_index} out of range for a {len(layers)}-layer CLIP encoder")
    attn = layers[layer_index].self_attn
    capture = ClsAttentionCapture()

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        causal = kwargs.get("causal_attention_mask")  # transformers 4.x passes it separately (None for vision)
        if causal is not None:
            mask = causal if mask is None else mask + causal
        with torch.no_grad():
            row = _cls_attention_row(module, hidden, mask)
        capture.captured.append(row if include_cls else row[:, 1:])

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield capture
    finally:
        handle.remove()
