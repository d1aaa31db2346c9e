"""LLaVA training data: JSON conversations -> supervised token sequences (+ image tensors) -> padded batches.

Tokenization and answer masking live in `llava.train.preprocess` (re-exported here: `preprocess`, ...).
"""
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.conversation import SeparatorStyle
from llava.mm_utils import load_image_rgb, process_images
from llava.train.preprocess import (  # noqa: F401  (re-exported: the names upstream code imports from here)
    ROLES,
    Encoded,
    Turns,
    _warn_mismatch,
    conversation_parts,
    encode_conversation,
    encode_parts,
    preprocess,
    preprocess_multimodal,
    resolve_template,
)

logger = logging.getLogger(__name__)

ASPECT_RATIOS = ("square", "pad", "anyres")
DEFAULT_MAX_MISMATCH_FRACTION = 0.01
EAGER_CHECK_SAMPLES = 200
# The running mismatch rate is judged over at least this many samples, so one early bad sample is tolerated.
RUNNING_CHECK_MIN_SAMPLES = 100
# Visual-token allowance in the length estimate used for length grouping (upstream convention).
IMAGE_LENGTH_ESTIMATE = 128



class DataError(ValueError):
    """A problem with the training data (file, sample structure, image, tokenization); the message names it."""


class MissingImageError(DataError, FileNotFoundError):
    """An image a sample refers to is not on disk."""


# ----------------------------------------------------------------------------------------------- dataset

def _sample_name(record: Any, index: int) -> str:
    if isinstance(record, dict) and "id" in record:
        return f"index {index} (id {record['id']!r})"
    return f"index {index}"


def _load_records(data_path: str) -> List[Any]:
    if not data_path:
        raise ValueError("data_path is not set: pass --data_path with a LLaVA JSON list")
    try:
        with open(data_path, "r", encoding="utf-8") as handle:
            records = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"data file {data_path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"data file {data_path} is not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise DataError(f"data file {data_path} must hold a JSON list of samples, got {type(records).__name__}")
    return records


MISSING_IMAGES_SHOWN = 3  # missing images named (with their samples) when the data is checked before loading


def _warn_truncated(name: str, max_length: int) -> None:
    logger.warning("sample %s: its whole answer lies beyond model_max_length %d (image tokens included); it trains "
                   "on nothing", name, max_length)


def check_data_files(data_path: str, image_folder: Optional[str]) -> int:
    """Before any model loads: the data file is a non-empty JSON list and every image its samples name exists.
    Returns the number of samples; a DataError names the file (and the first few missing images, with the count)."""
    records = _load_records(data_path)
    if not records:
        raise DataError(f"data file {data_path} holds no samples")
    missing = []
    for index, record in enumerate(records):
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and image:
            path = os.path.join(image_folder, image) if image_folder else image
            if not os.path.isfile(path):
                missing.append((path, _sample_name(record, index)))
    if missing:
        shown = "; ".join(f"image file {path} of sample {name} does not exist"
                          for path, name in missing[:MISSING_IMAGES_SHOWN])
        more = f"; and {len(missing) - MISSING_IMAGES_SHOWN} more" if len(missing) > MISSING_IMAGES_SHOWN else ""
        raise MissingImageError(f"data file {data_path}: {len(missing)} of {len(records)} samples' images are "
                                f"missing: {shown}{more}")
    return len(records)


def _structure_problem(record: Any, plain: bool, multimodal: bool) -> Optional[str]:
    """What is wrong with one record's structure, or None when it is well formed."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "missing or empty 'conversations' list"
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return f"turn {j} needs 'from' and 'value'"
        if not isinstance(turn["value"], str):
            return f"turn {j} 'value' must be a string, got {type(turn['value']).__name__}"
        if turn["from"] != ROLES[j % 2]:
            return f"turn {j} is from {turn['from']!r}; turns must alternate human/gpt starting with human"
    image_turns = [j for j, turn in enumerate(turns) if DEFAULT_IMAGE_TOKEN in turn["value"]]
    n_images = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    if "image" in record:
        if not isinstance(record["image"], str) or not record["image"]:
            return f"'image' must be a non-empty file path string, got {record['image']!r}"
        if not multimodal:
            return "has an 'image' but the model is not multimodal (data_args.is_multimodal is False)"
        if n_images != 1:
            return f"has an 'image' but {n_images} '<image>' placeholders in its turns (need exactly 1)"
        if image_turns[0] % 2 != 0:
            return f"'<image>' is in turn {image_turns[0]}, a gpt turn; it must be in a human turn"
    elif n_images:
        return f"has {n_images} '<image>' placeholder(s) but no 'image' file"
    if plain and (len(turns) != 2 or "image" not in record):
        return "the 'plain' template needs an 'image' and exactly two turns (human with <image>, gpt caption)"
    return None


class LazySupervisedDataset(Dataset):
    """LLaVA-format JSON samples, tokenized and (for image samples) loaded lazily in __getitem__.

    Items: input_ids and labels (1-D LongTensors), plus for a multimodal model an image [3, H, W]
    (anyres: [n_views, 3, H, W] and image_size (width, height)). A text-only sample in a multimodal
    dataset gets an all-zero image so every sample carries one; its text has no image token, so the
    model never uses it.
    """

    def __init__(self, data_path: str, tokenizer, data_args, max_mismatch_fraction: Optional[float] = None,
                 eager_check_samples: int = EAGER_CHECK_SAMPLES):
        super().__init__()
        self.data_path = data_path
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.conv = resolve_template(data_args.conv_version)
        if max_mismatch_fraction is None:
            max_mismatch_fraction = getattr(data_args, "max_mismatch_fraction", DEFAULT_MAX_MISMATCH_FRACTION)
        self.max_mismatch_fraction = float(max_mismatch_fraction)
        self.records = _load_records(data_path)
        self._check_settings()
        self._check_structure()
        self.max_truncated_fraction = float(getattr(data_args, "max_truncated_fraction", DEFAULT_MAX_MISMATCH_FRACTION))
        self.max_length = int(getattr(tokenizer, "model_max_length", 0) or 0)
        self.seen = 0
        self.mismatched = 0
        self.truncated = 0
        self._check_alignment(eager_check_samples)
        words = [sum(len(turn["value"].split()) for turn in record["conversations"]) for record in self.records]
        has_image = ["image" in record for record in self.records]
        self._lengths = [n + (IMAGE_LENGTH_ESTIMATE if img else 0) for n, img in zip(words, has_image)]
        self._modality_lengths = [n if img else -n for n, img in zip(words, has_image)]

    # -- construction checks

    def _check_settings(self) -> None:
        args = self.data_args
        if args.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio {args.image_aspect_ratio!r} is not one of {ASPECT_RATIOS}")
        if args.image_aspect_ratio == "anyres" and not args.image_grid_pinpoints:
            raise ValueError("image_aspect_ratio 'anyres' needs image_grid_pinpoints")
        if args.is_multimodal and getattr(args, "image_processor", None) is None:
            raise ValueError("data_args.is_multimodal is True but data_args.image_processor is not set")

    def _check_structure(self) -> None:
        plain = self.conv.sep_style == SeparatorStyle.PLAIN
        for index, record in enumerate(self.records):
            problem = _structure_problem(record, plain, bool(self.data_args.is_multimodal))
            if problem is not None:
                raise DataError(f"{self.data_path}: sample {_sample_name(record, index)}: {problem}")

    def _check_alignment(self, n_samples: int) -> None:
        """Tokenize (text only) up to n_samples evenly spread samples and fail if too many are misaligned."""
        total = len(self.records)
        count = min(n_samples, total)
        if count == 0:
            return
        indices = sorted({round(k * (total - 1) / max(count - 1, 1)) for k in range(count)})
        encoded = {index: self._encode(index) for index in indices}
        bad = [index for index in indices if not encoded[index].aligned]
        cut = [index for index in indices if not self._answer_fits(index, encoded[index])]
        for index in cut:
            _warn_truncated(_sample_name(self.records[index], index), self.max_length)
        if len(cut) > self.max_truncated_fraction * len(indices):
            raise DataError(self._truncation_message(len(cut), len(indices), "checked samples", cut[-1]))
        for index in bad:
            _warn_mismatch(_sample_name(self.records[index], index), encoded[index])
        if len(bad) > self.max_mismatch_fraction * len(indices):
            names = ", ".join(_sample_name(self.records[i], i) for i in bad[:5])
            raise DataError(
                f"{self.data_path}: {len(bad)} of {len(indices)} checked samples do not tokenize consistently with "
                f"template {self.conv.version!r} (over the {self.max_mismatch_fraction:.1%} limit), e.g. {names}; "
                f"check --version against the tokenizer"
            )

    # -- sizes for the length-grouped sampler

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> List[int]:
        """Estimated length per sample (words, plus an allowance for the image)."""
        return list(self._lengths)

    @property
    def modality_lengths(self) -> List[int]:
        """Estimated text length per sample, negative for text-only samples (groups batches by modality)."""
        return list(self._modality_lengths)

    # -- items

    def _encode(self, index: int) -> Encoded:
        record = self.records[index]
        turns = [dict(turn) for turn in record["conversations"]]
        preprocess_multimodal([turns], self.data_args, self.conv)
        return encode_conversation(turns, self.tokenizer, self.conv, has_image="image" in record)

    def _answer_fits(self, index: int, encoded: Encoded) -> bool:
        """Whether some answer token stays within model_max_length once the image's visual tokens are spliced in
        (they replace the one placeholder, which comes before the answers)."""
        supervised = (encoded.labels != IGNORE_INDEX).nonzero().flatten()
        if supervised.numel() == 0 or not self.max_length:
            return supervised.numel() > 0 or not encoded.aligned  # no answer at all: only a mismatch explains it
        extra = max(int(self.data_args.image_token_count) - 1, 0) if "image" in self.records[index] else 0
        return int(supervised[0]) + extra < self.max_length

    def _truncation_message(self, cut: int, total: int, what: str, latest: int) -> str:
        return (f"{self.data_path}: {cut} of {total} {what} ({cut / total:.1%}) have their whole answer cut off by "
                f"model_max_length {self.max_length} (image tokens included; over the "
                f"{self.max_truncated_fraction:.1%} limit of --max_truncated_fraction); latest: sample "
                f"{_sample_name(self.records[latest], latest)}; raise --model_max_length or shorten those samples")

    def _count(self, index: int, encoded: Encoded) -> None:
        self.seen += 1
        if not self._answer_fits(index, encoded):
            self.truncated += 1
            _warn_truncated(_sample_name(self.records[index], index), self.max_length)
            if self.truncated > self.max_truncated_fraction * max(self.seen, RUNNING_CHECK_MIN_SAMPLES):
                raise DataError(self._truncation_message(self.truncated, self.seen, "samples read so far", index))
        if encoded.aligned:
            return
        self.mismatched += 1
        name = _sample_name(self.records[index], index)
        _warn_mismatch(name, encoded)
        if self.mismatched > self.max_mismatch_fraction * max(self.seen, RUNNING_CHECK_MIN_SAMPLES):
            raise DataError(
                f"{self.data_path}: {self.mismatched} of {self.seen} samples read so far have a tokenization "
                f"mismatch (over the {self.max_mismatch_fraction:.1%} limit); latest: sample {name}"
            )

    def _load_image(self, index: int) -> Image.Image:
        record = self.records[index]
        folder = self.data_args.image_folder
        path = os.path.join(folder, record["image"]) if folder else record["image"]
        name = _sample_name(record, index)
        if not os.path.isfile(path):
            raise MissingImageError(f"image file {path} of sample {name} does not exist")
        try:
            return load_image_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image file {path} of sample {name}: {exc}") from None

    def _zero_image(self) -> Dict[str, Any]:
        crop = self.data_args.image_processor.crop_size
        height, width = int(crop["height"]), int(crop["width"])
        if self.data_args.image_aspect_ratio == "anyres":
            return {"image": torch.zeros(1, 3, height, width), "image_size": (width, height)}
        return {"image": torch.zeros(3, height, width)}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        record = self.records[index]
        item: Dict[str, Any] = {}
        if "image" in record:
            image = self._load_image(index)
            item["image"] = process_images([image], self.data_args.image_processor, self.data_args)[0]
            if self.data_args.image_aspect_ratio == "anyres":
                item["image_size"] = image.size
        elif self.data_args.is_multimodal:
            item.update(self._zero_image())
        encoded = self._encode(index)
        self._count(index, encoded)
        if getattr(self.data_args, "carry_instructions", False):
            item["instruction"] = first_instruction(record)
        return {"input_ids": encoded.input_ids, "labels": encoded.labels, **item}


def first_instruction(record: Dict[str, Any]) -> str:
    """The first human turn without the image placeholder: the text an instruction-aware token selector reads."""
    for turn in record["conversations"]:
        if turn["from"] == "human":
            return turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return ""


# ----------------------------------------------------------------------------------------------- batches

@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a list of samples into a batch: input_ids, labels, attention_mask, images, image_sizes."""

    tokenizer: Any

    def __call__(self, instances: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token "
                             "(train() uses the unk token for v1/plain)")
        max_length = self.tokenizer.model_max_length
        input_ids = [instance["input_ids"][:max_length] for instance in instances]
        labels = [instance["labels"][:max_length] for instance in instances]
        lengths = torch.tensor([len(ids) for ids in input_ids], dtype=torch.long)
        padded_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=pad_id)
        batch: Dict[str, Any] = {
            "input_ids": padded_ids,
            "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
            "attention_mask": torch.arange(padded_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1),
        }
        with_image = ["image" in instance for instance in instances]
        if any(with_image):
            if not all(with_image):
                raise ValueError("batch mixes samples with and without 'image'; "
                                 "a multimodal dataset gives every sample one")
            images = [instance["image"] for instance in instances]
            same_shape = all(image.shape == images[0].shape for image in images)
            batch["images"] = torch.stack(images) if same_shape else images
        if any("image_size" in instance for instance in instances):
            batch["image_sizes"] = [instance.get("image_size") for instance in instances]
        if any("instruction" in instance for instance in instances):
            batch["instructions"] = [instance.get("instruction", "") for instance in instances]
        return batch


def make_supervised_data_module(tokenizer, data_args) -> Dict[str, Any]:
    """Training dataset and collator for the Trainer (no eval split, as upstream)."""
    return {
        "train_dataset": LazySupervisedDataset(data_path=data_args.data_path, tokenizer=tokenizer, data_args=data_args),
        "eval_dataset": None,
        "data_collator": DataCollatorForSupervisedDataset(tokenizer=tokenizer),
    }
