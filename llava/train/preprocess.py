"""Conversation -> supervised token sequence: LLaVA's `preprocess`, one masking routine for every template.

The template renders a conversation as tagged parts (`Conversation.get_prompt_parts`); the prompt is tokenized once
and, for every boundary between a supervised and an unsupervised part, the prefix of the prompt up to that boundary
is tokenized too. Labels are the tokens of answer parts. The routine is self-checking: every prefix's tokens must be
an exact prefix of the full prompt's tokens, otherwise the label boundaries are unknown and the sample is not
supervised (its labels are all IGNORE_INDEX and a warning names it).
"""
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import torch

from llava import conversation as conversation_lib
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, PromptPart, SeparatorStyle
from llava.mm_utils import tokenizer_image_token_batch

logger = logging.getLogger(__name__)

ROLES = ("human", "gpt")
Turns = List[Dict[str, str]]


class Encoded(NamedTuple):
    """One tokenized conversation; aligned is False when label boundaries could not be verified."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    aligned: bool


# ----------------------------------------------------------------------------------------------- templates

def resolve_template(template: Union[str, Conversation, None]) -> Conversation:
    """The Conversation for a template key (None: the process-wide default_conversation set by train())."""
    if template is None:
        return conversation_lib.default_conversation.copy()
    if isinstance(template, Conversation):
        return template.copy()
    return conversation_lib.get_conv_template(template)


def preprocess_multimodal(sources: Sequence[Turns], data_args, template: Union[str, Conversation, None] = None
                          ) -> Sequence[Turns]:
    """Put "<image>" at the start of its turn followed by a newline, wrapped as the model expects (in place).

    mm_use_im_start_end makes it "<im_start><image><im_end>"; mmtag templates wrap that in <Image>...</Image>.
    """
    if not data_args.is_multimodal:
        return sources
    version = resolve_template(template if template is not None else data_args.conv_version).version
    image = DEFAULT_IMAGE_TOKEN
    if getattr(data_args, "mm_use_im_start_end", False):
        image = DEFAULT_IM_START_TOKEN + image + DEFAULT_IM_END_TOKEN
    if "mmtag" in version:
        image = "<Image>" + image + "</Image>"
    for source in sources:
        for turn in source:
            if DEFAULT_IMAGE_TOKEN in turn["value"]:
                text = turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                turn["value"] = (image + "\n" + text).strip()
    return sources


def conversation_parts(source: Turns, conv: Conversation) -> List[PromptPart]:
    """The training prompt of one conversation as (text, supervised) parts.

    "plain" (pretraining) is image + caption + separator, the human text dropped, only the caption
    (with its separator) supervised. Other templates use the template's own rendering: assistant answers
    and the separator closing each answer are supervised.
    """
    if conv.sep_style == SeparatorStyle.PLAIN:
        if len(source) != 2 or DEFAULT_IMAGE_TOKEN not in source[0]["value"]:
            raise ValueError("the 'plain' template needs exactly two turns: "
                             "a human turn with <image> and a gpt caption")
        return [(DEFAULT_IMAGE_TOKEN, False), (source[1]["value"] + conv.sep, True)]
    conv = conv.copy()
    conv.messages = []
    for j, turn in enumerate(source):
        if turn["from"] != ROLES[j % 2]:
            raise ValueError(f"turn {j} is from {turn['from']!r}; turns must alternate human/gpt starting with human")
        conv.append_message(conv.roles[j % 2], turn["value"])
    return conv.get_prompt_parts()


# ----------------------------------------------------------------------------------------------- masking

def _encode_texts(texts: List[str], tokenizer, has_image: bool) -> List[List[int]]:
    if has_image:
        return tokenizer_image_token_batch(texts, tokenizer)
    return [list(ids) for ids in tokenizer(texts).input_ids]


def encode_parts(parts: Sequence[PromptPart], tokenizer, has_image: bool) -> Encoded:
    """Tokenize the prompt made of parts and label the tokens of supervised parts (see module docstring).

    Image placeholders are never supervised. The result is truncated to tokenizer.model_max_length.
    """
    spans: List[List[Any]] = []
    for text, supervised in parts:
        if spans and spans[-1][1] == supervised:
            spans[-1][0] += text
        elif text:
            spans.append([text, supervised])
    if not spans:
        spans = [["", False]]
    prompt = "".join(text for text, _ in spans)
    cuts, position = [], 0
    for text, _ in spans[:-1]:
        position += len(text)
        cuts.append(position)
    encoded = _encode_texts([prompt[:cut] for cut in cuts] + [prompt], tokenizer, has_image)
    full = encoded[-1]
    aligned = all(full[:len(prefix)] == prefix for prefix in encoded[:-1])
    input_ids = torch.tensor(full, dtype=torch.long)
    if aligned:
        # Token t belongs to the span whose end (exclusive) is the first one greater than t.
        ends = torch.tensor([len(prefix) for prefix in encoded[:-1]] + [len(full)], dtype=torch.long)
        span_of_token = torch.searchsorted(ends, torch.arange(len(full)), right=True)
        flags = torch.tensor([supervised for _, supervised in spans], dtype=torch.bool)
        supervised_mask = flags[span_of_token] & input_ids.ne(IMAGE_TOKEN_INDEX)
        labels = torch.where(supervised_mask, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    else:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    max_length = tokenizer.model_max_length
    return Encoded(input_ids[:max_length], labels[:max_length], aligned)


def encode_conversation(source: Turns, tokenizer, template: Union[str, Conversation, None], has_image: bool) -> Encoded:
    """Token ids and labels of one (already multimodal-preprocessed) conversation."""
    return encode_parts(conversation_parts(source, resolve_template(template)), tokenizer, has_image)


def _warn_mismatch(sample: str, encoded: Encoded) -> None:
    logger.warning("tokenization mismatch in sample %s (%d tokens): label boundaries could not be verified, "
                   "its labels are all ignored", sample, len(encoded.input_ids))


def preprocess(sources: Sequence[Turns], tokenizer, template: Union[str, Conversation, None] = None,
               has_image: bool = False, sample_ids: Optional[Sequence[Any]] = None) -> Dict[str, List[torch.Tensor]]:
    """input_ids and labels (lists of 1-D LongTensors) for conversations, supervising only the answers.

    A conversation whose label boundaries cannot be verified gets all labels IGNORE_INDEX and a warning.
    """
    conv = resolve_template(template)
    result: Dict[str, List[torch.Tensor]] = {"input_ids": [], "labels": []}
    for k, source in enumerate(sources):
        encoded = encode_conversation(source, tokenizer, conv, has_image)
        if not encoded.aligned:
            _warn_mismatch(repr(sample_ids[k]) if sample_ids is not None else f"#{k}", encoded)
        result["input_ids"].append(encoded.input_ids)
        result["labels"].append(encoded.labels)
    return result
