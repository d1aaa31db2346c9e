"""LLaVA-NeXT ("anyres") image features: one packed visual sequence per image from its base view and tiles.

An anyres image arrives as `[1 + n_tiles, 3, H, W]`: a resized view of the whole image followed by the tiles of
the best-fitting grid (`llava.mm_utils.process_anyres_image`). All views are encoded in one vision-tower call;
`merge_image_views` then packs each image's `[n_views, N, C]` features into one `[S, C]` sequence following
`config.mm_patch_merge_type`:

- "flat": every view's tokens one after the other (base first).
- "spatial": base view, then the tiles stitched into one (rows * side) x (cols * side) token grid read row by row.
- "spatial_unpad": as "spatial", but the grid is first cropped to the image's own aspect ratio (`unpad_image`
  removes the letterbox padding the tiles carry) and a learned `image_newline` vector ends every grid row.
  A single-view image (e.g. the dummy image of a text-only sample) is its base view plus one newline.

The semantics (grid order, crop arithmetic, newline placement) follow upstream LLaVA so official LLaVA-NeXT
checkpoints see exactly the sequences they were trained on.

ZeRO-3: `image_newline` is a bare parameter of the base model, read here before that module's forward runs,
so DeepSpeed must not partition it. Parameters no larger than `stage3_param_persistence_threshold` stay whole
on every rank; transformers fills "auto" with 10 * hidden_size, and image_newline has hidden_size elements.
A smaller explicit threshold would leave it partitioned (an empty tensor here): `newline_vector` then raises.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from llava.mm_utils import get_anyres_image_grid_shape

MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
ImageSize = Tuple[int, int]  # (width, height) of the original image


def unpad_image(tensor: torch.Tensor, original_size: ImageSize) -> torch.Tensor:
    """Crop a `[C, H, W]` feature grid to the part covered by the original image (width, height).

    The anyres tiles hold the image letterboxed (centred, padded on two sides) inside the grid's resolution; this
    removes the padded rows or columns so the tokens describe only image content.
    """
    orig_w, orig_h = original_size
    cur_h, cur_w = tensor.shape[1:]
    if orig_w / orig_h > cur_w / cur_h:  # wider than the grid: padding above and below
        new_h = int(orig_h * (cur_w / orig_w))
        pad = (cur_h - new_h) // 2
        return tensor[:, pad:cur_h - pad, :]
    new_w = int(orig_w * (cur_h / orig_h))
    pad = (cur_w - new_w) // 2
    return tensor[:, :, pad:cur_w - pad]


def check_merge_type(merge_type: str) -> str:
    """Validate `mm_patch_merge_type` (upstream accepts 'flat' and anything starting with 'spatial')."""
    if merge_type != "flat" and not str(merge_type).startswith("spatial"):
        raise ValueError(f"Unexpected mm_patch_merge_type: {merge_type!r} (expected one of {MERGE_TYPES})")
    return merge_type


def newline_vector(model) -> torch.Tensor:
    """The model's `image_newline` [hidden], checked to be whole (see the ZeRO-3 note in the module docstring)."""
    newline = getattr(model.get_model(), "image_newline", None)
    hidden = model.config.hidden_size
    if newline is None:
        raise ValueError("mm_patch_merge_type 'spatial_unpad' needs model.image_newline, which this model lacks "
                         "(it is created by initialize_vision_modules when the merge type contains 'unpad')")
    if newline.numel() != hidden:
        raise RuntimeError(
            f"model.image_newline has {newline.numel()} elements, expected {hidden}: DeepSpeed ZeRO-3 partitioned it. "
            f"Keep stage3_param_persistence_threshold at 'auto' (10 * hidden_size) or >= {hidden} so it stays whole"
        )
    return newline


def merge_image_views(
    views: torch.Tensor,
    image_size: Optional[ImageSize],
    merge_type: str,
    aspect_ratio: str,
    grid_pinpoints,
    side: int,
    tile_px: int,
    newline: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One image's packed visual sequence [S, C] from its views' features [n_views, N, C] (base view first).

    `side` is the number of patches per view side (N == side**2 for the spatial merges), `tile_px` the vision
    tower's input size (the tile size the anyres grid is measured in), `newline` the image_newline vector.
    """
    if merge_type == "flat":
        return views.flatten(0, 1)
    check_merge_type(merge_type)
    unpad = "unpad" in merge_type
    base = views[0]
    if views.shape[0] == 1:
        return torch.cat([base, newline[None].to(base)], dim=0) if unpad else base
    if base.shape[0] != side * side:
        raise ValueError(f"spatial merge needs {side}x{side} tokens per view, got {base.shape[0]} "
                         "(mm_vision_select_feature 'cls_patch' only works with mm_patch_merge_type 'flat')")
    if aspect_ratio != "anyres":
        raise NotImplementedError(f"spatial merge of several views needs image_aspect_ratio 'anyres', got {aspect_ratio!r}")
    if image_size is None:
        raise ValueError("anyres images need image_sizes (width, height) to place their tiles")
    image_size = tuple(int(v) for v in image_size)
    cols, rows = get_anyres_image_grid_shape(image_size, grid_pinpoints, tile_px)
    tiles = views[1:]
    if tiles.shape[0] != rows * cols:
        raise ValueError(f"image of size {image_size} has {tiles.shape[0]} tiles, but its {cols}x{rows} "
                         f"anyres grid (image_grid_pinpoints {grid_pinpoints!r}) needs {rows * cols}")
    grid = tiles.view(rows, cols, side, side, -1)  # [tile row, tile col, y, x, C]
    if unpad:
        fmap = grid.permute(4, 0, 2, 1, 3).reshape(grid.shape[-1], rows * side, cols * side)  # [C, Y, X]
        fmap = unpad_image(fmap, image_size)
        column = newline.to(fmap)[:, None, None].expand(-1, fmap.shape[1], 1)
        packed = torch.cat([fmap, column], dim=2).flatten(1, 2).transpose(0, 1)
    else:
        packed = grid.permute(0, 2, 1, 3, 4).reshape(rows * side * cols * side, -1)
    return torch.cat([base, packed], dim=0)


def split_views(images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, List[int]]:
    """A batch of multi-view images (5-D tensor or list of [V, 3, H, W] / [3, H, W]) as one [sum V, 3, H, W] tensor
    plus the number of views of each image."""
    views = [image.unsqueeze(0) if image.ndim == 3 else image for image in images]
    return torch.cat(list(views), dim=0), [int(v.shape[0]) for v in views]


def encode_anyres_images(model, images, image_sizes: Optional[Sequence[ImageSize]]) -> List[torch.Tensor]:
    """Each image's packed visual sequence (list of [S_i, hidden]) for a batch of multi-view images."""
    stacked, counts = split_views(images)
    features = model.encode_images(stacked).split(counts, dim=0)
    config = model.config
    merge_type = check_merge_type(getattr(config, "mm_patch_merge_type", "flat"))
    if merge_type == "flat":
        return [f.flatten(0, 1) for f in features]
    tower = model.get_vision_tower()
    newline = newline_vector(model) if "unpad" in merge_type else None
    if image_sizes is None and any(c > 1 for c in counts):
        raise ValueError("anyres images need image_sizes (width, height) to place their tiles")
    return [
        merge_image_views(
            f, None if image_sizes is None else image_sizes[i], merge_type,
            getattr(config, "image_aspect_ratio", "square"), getattr(config, "image_grid_pinpoints", None),
            tower.num_patches_per_side, tower.config.image_size, newline,
        )
        for i, f in enumerate(features)
    ]
