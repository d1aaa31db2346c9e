"""LLaVA-NeXT ("anyres") packing for the patch: each image's final visual sequence as an index map.

The patch must run on upstream LLaVA too, which has no reusable packing helper, so this module rebuilds the
packing from the SPEC §4 interface alone: `config.mm_patch_merge_type`, `config.image_aspect_ratio`,
`config.image_grid_pinpoints`, `get_model().image_newline`, `get_vision_tower().config.image_size` and
`.num_patches_per_side`, plus `llava.mm_utils.select_best_resolution` (in upstream LLaVA as here) for the grid. It reproduces upstream LLaVA's sequences exactly (base view, tiles stitched into one
grid read row by row, the letterbox crop of "spatial_unpad" and a newline after every grid row).

Packing is expressed as an index map rather than as reshapes: for every image, `image_layout` lists which row of
the flattened view features ([views * N, C], view-major) fills each position of the packed sequence, with
`NEWLINE` marking newline slots. The maps of a batch are padded into one [I, S] index, so the packed batch of
every image is a single gather (`gather_packed`), and any per-token map computed on the views (FasterVLM's [CLS]
attention, CDPruner's CLIP embeddings) is carried onto the packed sequence by the same gather.

Newline tokens are prunable. The pruner sees exactly the sequence the LLM would see, and K_i is computed from its
full packed length (newlines included), so every merge type and every plug-in pruner work without special cases.
Forcing newlines to stay would not fit the budget: at p = 0.9 a 2x2-grid NeXT image (576 + 48 * 49 = 2928 tokens)
keeps 293, of which 48 would be newlines, and a 1x3 tall image needs 72 of its 238; at higher p there are more
newlines than kept tokens. They also carry no image content (one shared learned vector), which the built-in
pruners see for themselves: DivPrune finds the newlines exact duplicates of each other (distance 0), so it keeps
at most one; FasterVLM gives them [CLS] attention 0 and CDPruner relevance 0, so both rank them last. A kept
newline stays at its place in the original order.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .host import llava_part

# Upstream LLaVA has the same function (name, arguments and choice), so the patch runs on either.
from llava.mm_utils import select_best_resolution

NEWLINE = -1  # layout entry of a newline slot
PAD = -2  # index-map entry of a padding slot (beyond an image's packed length)


@dataclass(frozen=True)
class PackingSettings:
    """What decides an image's packed layout, read once from the model."""

    merge_type: str
    aspect_ratio: str
    pinpoints: Optional[tuple]
    side: int  # patches per view side
    tile_px: int  # the vision tower's input size, the unit of the anyres grid
    round_unpad: bool = False  # Hugging Face's LlavaNext rounds the kept extent (to 7 digits) before truncating

    @property
    def unpad(self) -> bool:
        return "unpad" in self.merge_type


def parse_pinpoints(value) -> Optional[tuple]:
    """`image_grid_pinpoints` as a tuple of (width, height): accepts a list/tuple of pairs or its string form."""
    if value is None:
        return None
    pairs = ast.literal_eval(value) if isinstance(value, str) else value
    try:
        return tuple((int(w), int(h)) for w, h in pairs)
    except (TypeError, ValueError):
        raise ValueError(f"image_grid_pinpoints {value!r} is not a list of (width, height) pairs") from None


def packing_settings(model) -> PackingSettings:
    """The model's anyres settings (config + vision tower); unknown merge types are rejected as upstream does."""
    config = model.config
    merge_type = getattr(config, "mm_patch_merge_type", "flat") or "flat"
    if merge_type != "flat" and not merge_type.startswith("spatial"):
        raise ValueError(f"Unexpected mm_patch_merge_type: {merge_type!r} (expected flat, spatial or spatial_unpad)")
    tower = model.get_vision_tower()
    return PackingSettings(
        merge_type=merge_type,
        aspect_ratio=getattr(config, "image_aspect_ratio", "square") or "square",
        pinpoints=parse_pinpoints(getattr(config, "image_grid_pinpoints", None)),
        side=int(tower.num_patches_per_side),
        tile_px=int(tower.config.image_size),
        round_unpad=bool(getattr(config, "unpad_rounds", False)),
    )


def grid_shape(image_size: tuple, settings: PackingSettings) -> tuple:
    """(columns, rows) of tiles the data pipeline cut from an image of image_size (width, height)."""
    if not settings.pinpoints:
        raise ValueError("image_aspect_ratio 'anyres' needs config.image_grid_pinpoints")
    cand_w, cand_h = select_best_resolution(image_size, settings.pinpoints)
    return cand_w // settings.tile_px, cand_h // settings.tile_px


def unpadded_window(grid_h: int, grid_w: int, image_size: tuple, rounded: bool = False) -> tuple:
    """(top, bottom, left, right) of the part of a grid_h x grid_w token grid covered by the letterboxed image
    (upstream's unpad arithmetic: the padded side loses (excess // 2) rows or columns at each end; `rounded`:
    Hugging Face's, which rounds the kept extent to 7 digits before truncating it)."""
    width, height = image_size
    extent = (lambda x: int(round(x, 7))) if rounded else int
    if width / height > grid_w / grid_h:
        kept = extent(height * (grid_w / width))
        cut = (grid_h - kept) // 2
        return cut, grid_h - cut, 0, grid_w
    kept = extent(width * (grid_h / height))
    cut = (grid_w - kept) // 2
    return 0, grid_h, cut, grid_w - cut


def image_layout(n_views: int, n_tokens: int, image_size: Optional[tuple], settings: PackingSettings) -> torch.Tensor:
    """[S] positions of one image's packed sequence as rows of its flattened views (view * n_tokens + token),
    NEWLINE for newline slots."""
    if settings.merge_type == "flat":
        return torch.arange(n_views * n_tokens)
    base = torch.arange(n_tokens)
    newline = torch.tensor([NEWLINE]) if settings.unpad else base[:0]
    if n_views == 1:
        return torch.cat([base, newline])
    side = settings.side
    if n_tokens != side * side:
        raise ValueError(f"spatial merge needs {side}x{side} tokens per view, got {n_tokens} "
                         "(mm_vision_select_feature 'cls_patch' only works with mm_patch_merge_type 'flat')")
    if settings.aspect_ratio != "anyres":
        raise NotImplementedError(
            f"spatial merge of several views needs image_aspect_ratio 'anyres', got {settings.aspect_ratio!r}")
    if image_size is None:
        raise ValueError("anyres images need image_sizes (width, height) to place their tiles")
    cols, rows = grid_shape(image_size, settings)
    if rows * cols != n_views - 1:
        raise ValueError(f"image of size {image_size} has {n_views - 1} tiles, but its {cols}x{rows} anyres grid "
                         f"(image_grid_pinpoints {settings.pinpoints}) needs {rows * cols}")
    top, bottom, left, right = 0, rows * side, 0, cols * side
    if settings.unpad:
        top, bottom, left, right = unpadded_window(rows * side, cols * side, image_size, settings.round_unpad)
    y = torch.arange(top, bottom).unsqueeze(1)
    x = torch.arange(left, right).unsqueeze(0)
    tile = 1 + (y // side) * cols + x // side  # view index (the base view is 0)
    rows_map = tile * n_tokens + (y % side) * side + x % side  # [grid rows, grid cols]
    if settings.unpad:
        rows_map = torch.cat([rows_map, torch.full((rows_map.shape[0], 1), NEWLINE)], dim=1)
    return torch.cat([base, rows_map.flatten()])


@dataclass
class PackedIndex:
    """Where every packed position of a batch comes from: `index` [I, S] into the flattened view rows of the
    whole batch, or NEWLINE / PAD; `lengths` [I] the packed length of each image."""

    index: torch.Tensor
    lengths: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return self.index != PAD

    @property
    def is_newline(self) -> torch.Tensor:
        return self.index == NEWLINE


def packed_index(views_per_image: Sequence[int], n_tokens: int, image_sizes, settings: PackingSettings,
                 device=None) -> PackedIndex:
    """The batch's index map (layouts built per image, then padded and moved to `device` at once)."""
    if image_sizes is not None and len(image_sizes) != len(views_per_image):
        raise ValueError(f"got {len(image_sizes)} image_sizes for {len(views_per_image)} images")
    layouts, first = [], 0
    for i, n_views in enumerate(views_per_image):
        size = None if image_sizes is None or image_sizes[i] is None else tuple(int(v) for v in image_sizes[i])
        layout = image_layout(n_views, n_tokens, size, settings)
        layouts.append(torch.where(layout >= 0, layout + first * n_tokens, layout))
        first += n_views
    index = torch.nn.utils.rnn.pad_sequence(layouts, batch_first=True, padding_value=PAD)
    lengths = torch.tensor([len(layout) for layout in layouts])
    return PackedIndex(index.to(device), lengths.to(device))


def gather_packed(rows: torch.Tensor, packing: PackedIndex, newline: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[I, S, C] packed sequences from the batch's flattened view rows [R, C]: newline slots get `newline` [C]
    (zeros when None), padding slots zeros. Differentiable with respect to `rows` and `newline`."""
    channels = rows.shape[-1]
    newline_row = rows.new_zeros(1, channels) if newline is None else newline.reshape(1, channels).to(rows)
    table = torch.cat([rows, newline_row, rows.new_zeros(1, channels)], dim=0)
    slot = torch.where(packing.index >= 0, packing.index,
                       torch.where(packing.is_newline, rows.shape[0], rows.shape[0] + 1))
    return table[slot]


def split_views(images) -> tuple:
    """A multi-view batch (5-D tensor or list of [V, 3, H, W] / [3, H, W]) as ([sum V, 3, H, W], views per image)."""
    views = [image.unsqueeze(0) if image.ndim == 3 else image for image in images]
    return torch.cat(views, dim=0), [int(v.shape[0]) for v in views]


def image_newline(model) -> torch.Tensor:
    """`get_model().image_newline`, checked to be whole.

    It is a bare parameter read outside its module's forward, so under ZeRO-3 it must be persistent: DeepSpeed
    keeps parameters of at most `stage3_param_persistence_threshold` elements whole on every rank, and
    transformers fills "auto" with 10 * hidden_size (image_newline has hidden_size elements).
    """
    newline = llava_part(model, "image_newline")
    hidden = model.config.hidden_size
    if newline is None:
        raise ValueError("mm_patch_merge_type 'spatial_unpad' needs get_model().image_newline, which is missing")
    if newline.numel() != hidden:
        raise RuntimeError(
            f"image_newline has {newline.numel()} elements, expected {hidden}: DeepSpeed ZeRO-3 partitioned it. "
            f"Keep stage3_param_persistence_threshold at 'auto' (10 * hidden_size) or >= {hidden}")
    return newline
