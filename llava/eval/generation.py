"""Batched generation for evaluation runners: load a model for evaluation and answer a batch of prompts.

`load_for_eval(args)` loads a checkpoint the way `llava.eval.model_vqa_loader` does (upstream flags, plus those of
the installed evaluation extensions, `llava.eval.extensions`); `answer_batch(session, prompts, images)` answers a
left-padded batch in one `generate` call, with greedy answers token-for-token equal to one-at-a-time generation.
"""
import argparse
import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval import extensions
from llava.mm_utils import get_model_name_from_path, load_image_rgb, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import torch_init_disabled


@dataclass
class EvalSession:
    """A model loaded for evaluation, with what generation needs next to it (see `load_for_eval`)."""

    tokenizer: Any
    model: Any
    image_processor: Any
    model_name: str
    args: argparse.Namespace


def load_for_eval(args: argparse.Namespace) -> EvalSession:
    """Load `args.model_path` (+ `args.model_base`) as upstream's evaluation does, and let the evaluation
    extensions set it up (`llava.eval.extensions`; fails here, before any question is read, on a bad option)."""
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    with torch_init_disabled():
        tokenizer, model, image_processor, _ = load_pretrained_model(
            model_path, getattr(args, "model_base", None), model_name, device=getattr(args, "device", "cuda"))
    extensions.prepare(model, args)
    return EvalSession(tokenizer, model, image_processor, model_name, args)


def load_image(image_folder: str, image_file: str, question_id: Any) -> Image.Image:
    """The question's image as RGB; a clear error naming the question and file when it cannot be read."""
    path = os.path.join(image_folder, image_file)
    try:
        return load_image_rgb(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"question {question_id}: cannot read image {path}: {e}") from None


@contextlib.contextmanager
def padding_side(model, side: str) -> Iterator[None]:
    """Temporarily pad multimodal batches on `side` (generation needs left padding: new tokens go on the right)."""
    previous = getattr(model.config, "tokenizer_padding_side", None)
    model.config.tokenizer_padding_side = side
    try:
        yield
    finally:
        if previous is None:
            del model.config.tokenizer_padding_side
        else:
            model.config.tokenizer_padding_side = previous


def pad_sequences(sequences: List[torch.Tensor], pad_id: int, side: str = "left") -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D token id tensors padded on `side` (left by default): ([B, L] ids, [B, L] attention mask)."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(longest - len(seq), longest) if side == "left" else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask


def vision_inputs(session: EvalSession, images: List[Image.Image], instructions: Optional[List[str]] = None
                  ) -> Tuple[Any, List[Tuple[int, int]]]:
    """(pixel values on the model's device and dtype, image sizes) of a batch of images; also hands the bare
    questions to the evaluation extensions that read them."""
    model = session.model
    pixel_values = process_images(images, session.image_processor, model.config)
    pixel_values = [v.to(device=model.device, dtype=model.dtype) for v in pixel_values] \
        if isinstance(pixel_values, list) else pixel_values.to(device=model.device, dtype=model.dtype)
    extensions.on_batch(model, session.args, instructions)
    return pixel_values, [image.size for image in images]


def answer_batch(session: EvalSession, prompts: List[str], images: Optional[List[Image.Image]],
                 instructions: Optional[List[str]] = None) -> List[str]:
    """Generate one answer per prompt in a single left-padded batch (greedy answers equal batch-1 answers).

    `prompts` are full conversation prompts (with the image token when `images` is given: one image per prompt,
    or None for a text-only batch); `instructions` are the bare questions, read by instruction-aware pruners.
    Generation settings (temperature, top_p, num_beams, max_new_tokens) come from the session's args.
    """
    tokenizer, model, args = session.tokenizer, session.model, session.args
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"answer_batch: {len(prompts)} prompts but {len(images)} images")
    ids = [tokenizer_image_token(p, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
    input_ids, mask = pad_sequences(ids, tokenizer.pad_token_id)
    device = model.device
    pixel_values, image_sizes = vision_inputs(session, images, instructions) if images is not None else (None, None)
    temperature = getattr(args, "temperature", 0.0)
    with torch.inference_mode(), padding_side(model, "left"), extensions.context(model, args):
        output_ids = model.generate(
            input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0).to(device),
            images=pixel_values,
            image_sizes=image_sizes,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=getattr(args, "top_p", None),
            num_beams=getattr(args, "num_beams", 1),
            max_new_tokens=getattr(args, "max_new_tokens", 128),
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    return [text.strip() for text in tokenizer.batch_decode(output_ids, skip_special_tokens=True)]
