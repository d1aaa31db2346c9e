"""Image and prompt helpers shared by training, evaluation and serving (upstream LLaVA's `llava.mm_utils` interface)."""
import ast
import base64
import math
from io import BytesIO
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

Resolution = Tuple[int, int]  # (width, height)


# ----------------------------------------------------------------------------------------------- images

# PIL modes holding more than 8 bits per channel, and the largest value of each: converted by scaling, since
# `convert("RGB")` clips them (a 16-bit image becomes almost all white).
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB; 16-bit (and 32-bit integer) grayscale scaled to 0..255 instead of clipped."""
    if image.mode not in WIDE_MODES:
        return image.convert("RGB")
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.rint(values * (255.0 / WIDE_MODES[image.mode])), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L").convert("RGB")


def load_image_rgb(path: str) -> Image.Image:
    """The image file at `path` as 8-bit RGB (see `to_rgb`), read fully so the file is closed."""
    with Image.open(path) as image:
        return to_rgb(image)


def load_image_from_base64(image: str) -> Image.Image:
    """Decode a base64-encoded image file (as sent by the web demo / API)."""
    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad the shorter side so the image becomes square, centred, keeping all pixels (LLaVA-1.5 'pad')."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    canvas = Image.new(pil_img.mode, (side, side), background_color)
    canvas.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return canvas


def parse_grid_pinpoints(grid_pinpoints: Union[str, Sequence[Sequence[int]]]) -> List[Resolution]:
    """Candidate (width, height) resolutions from a list or its string form, e.g. "[(336,672),(672,336)]"."""
    value = grid_pinpoints
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} is not a list of (width, height) pairs") from exc
    try:
        pairs = [(int(w), int(h)) for w, h in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} is not a list of (width, height) pairs") from exc
    if not pairs or any(w <= 0 or h <= 0 for w, h in pairs):
        raise ValueError(f"image_grid_pinpoints {grid_pinpoints!r} must be a non-empty list of positive sizes")
    return pairs


def fit_score(original_size: Resolution, candidate: Resolution) -> Tuple[int, int]:
    """How well `candidate` holds an image of original_size, as a key to maximise: (pixels of the image kept
    after an aspect-preserving resize into the candidate, capped at the original count; minus the candidate's
    pixels left unused)."""
    orig_w, orig_h = original_size
    cand_w, cand_h = candidate
    scale = min(cand_w / orig_w, cand_h / orig_h)
    kept = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
    return kept, -(cand_w * cand_h - kept)


def select_best_resolution(original_size: Resolution, possible_resolutions: Sequence[Resolution]) -> Resolution:
    """The (width, height) candidate that keeps the most of the image's pixels after an aspect-preserving fit,
    then wastes the least; the first listed wins a tie (the anyres grid choice of LLaVA-NeXT)."""
    candidates = [(width, height) for width, height in possible_resolutions]
    if not candidates:
        raise ValueError("select_best_resolution needs at least one candidate resolution")
    return max(candidates, key=lambda candidate: fit_score(original_size, candidate))


def resize_and_pad_image(image: Image.Image, target_resolution: Resolution) -> Image.Image:
    """Fit the image inside target_resolution keeping its aspect ratio, centred on a black canvas."""
    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(orig_w * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> List[Image.Image]:
    """Square tiles of side patch_size in row-major order (the anyres grid views)."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(image_size: Resolution, grid_pinpoints, patch_size: int) -> Tuple[int, int]:
    """(columns, rows) of the anyres tile grid chosen for an image of image_size (width, height)."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints))
    return width // patch_size, height // patch_size


def _processor_size(processor, attribute: str, key: str) -> int:
    value = getattr(processor, attribute, None)
    try:
        return int(value[key])
    except (TypeError, KeyError):
        name = type(processor).__name__
        raise ValueError(f"image processor {name} has no {attribute}[{key!r}] (got {value!r})") from None


def _pixel_values(processor, image: Image.Image) -> torch.Tensor:
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def process_anyres_image(image: Image.Image, processor, grid_pinpoints) -> torch.Tensor:
    """[1 + n_tiles, 3, H, W]: a resized global view followed by the tiles of the best-fitting grid."""
    best = select_best_resolution(image.size, parse_grid_pinpoints(grid_pinpoints))
    tiles = divide_to_patches(resize_and_pad_image(image, best), _processor_size(processor, "crop_size", "height"))
    side = _processor_size(processor, "size", "shortest_edge")
    views = [image.resize((side, side))] + tiles
    return torch.stack([_pixel_values(processor, view) for view in views], dim=0)


def process_images(images: Sequence[Image.Image], image_processor,
                   model_cfg) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Pixel tensors for a list of PIL images following model_cfg.image_aspect_ratio ("pad", "anyres", else square).

    Returns one stacked tensor when all images give the same shape, else a list (anyres grids can differ).
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        tensors = [_pixel_values(image_processor, expand2square(image, background)) for image in images]
    elif aspect == "anyres":
        pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
        if pinpoints is None:
            raise ValueError("image_aspect_ratio is 'anyres' but image_grid_pinpoints is not set")
        tensors = [process_anyres_image(image, image_processor, pinpoints) for image in images]
    else:
        return image_processor(images, return_tensors="pt")["pixel_values"]
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


# ----------------------------------------------------------------------------------------------- text

def tokenizer_image_token_batch(prompts: Sequence[str], tokenizer,
                                image_token_index: int = IMAGE_TOKEN_INDEX) -> List[List[int]]:
    """tokenizer_image_token for many prompts with a single tokenizer call (used by the training pipeline)."""
    chunked = [prompt.split(DEFAULT_IMAGE_TOKEN) for prompt in prompts]
    flat = [chunk for chunks in chunked for chunk in chunks]
    encoded = tokenizer(flat).input_ids if flat else []
    bos = tokenizer.bos_token_id
    results, cursor = [], 0
    for chunks in chunked:
        pieces = encoded[cursor:cursor + len(chunks)]
        cursor += len(chunks)
        keep_bos = bos is not None and len(pieces[0]) > 0 and pieces[0][0] == bos
        ids = [bos] if keep_bos else []
        for k, piece in enumerate(pieces):
            if k > 0:
                ids.append(image_token_index)
            ids.extend(piece[1:] if keep_bos and piece[:1] == [bos] else piece)
        results.append(ids)
    return results


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                          return_tensors: Optional[str] = None):
    """Token ids of prompt with each "<image>" replaced by image_token_index and a single leading BOS.

    Each text chunk between images is tokenized on its own (so the placeholder never merges with text);
    the BOS the tokenizer adds to every chunk is kept once, at the start.
    """
    ids = tokenizer_image_token_batch([prompt], tokenizer, image_token_index)[0]
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors!r} (only 'pt' or None)")


def get_model_name_from_path(model_path: str) -> str:
    """Model name from a checkpoint path: the last folder, or "<run>_checkpoint-N" for intermediate checkpoints."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stops a sequence once its generated tail contains one of the keywords (e.g. the template's separator).

    Follows the transformers StoppingCriteria API: returns one bool per batch row, so rows finish independently.
    """

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(ids) for ids in self.keyword_ids), default=0)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs) -> torch.BoolTensor:
        batch, length = input_ids.shape
        generated = length - self.start_len
        done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        if generated <= 0:
            return done
        for ids in self.keyword_ids:
            if 0 < len(ids) <= generated:
                tail = input_ids[:, -len(ids):]
                done |= (tail == ids.to(input_ids.device)).all(dim=1)
        window = min(generated, self.max_keyword_len)
        if window > 0:
            texts = self.tokenizer.batch_decode(input_ids[:, -window:], skip_special_tokens=True)
            by_text = [any(keyword in text for keyword in self.keywords) for text in texts]
            done |= torch.tensor(by_text, dtype=torch.bool, device=input_ids.device)
        return done
