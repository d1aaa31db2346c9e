"""The answering loop of every evaluation runner (question files, ScienceQA, MMBench): batch, generate, write.

Each item is {"question_id", "text" (the question put after the image token), "image" (a zero-argument callable
returning the PIL image, or None for text-only), "record" (extra fields for the answer line, e.g. "prompt")}.
Images are loaded batch by batch, so a large benchmark is never held in memory at once. The answers file is resumed
and unreadable images are skipped (`llava.eval.answers_file`).
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Iterator, List, Tuple

from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.eval.answers_file import load_or_skip, open_answers, resume_notice, skipped_summary, write_answer
from llava.eval.generation import EvalSession, answer_batch


def build_prompt(question: str, conv_mode: str, use_im_start_end: bool, has_image: bool) -> str:
    """The conversation prompt for one question (image token first when it has an image), ready for generation."""
    if has_image:
        image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if use_im_start_end else DEFAULT_IMAGE_TOKEN
        question = image + "\n" + question
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def has_image(question: dict) -> bool:
    """Whether a question comes with an image (an absent or null "image" field means text-only)."""
    return question.get("image") is not None


def batches(questions: List[dict], size: int) -> Iterator[List[dict]]:
    """Consecutive questions in groups of at most `size`; image and text-only questions are never mixed."""
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    group: List[dict] = []
    for q in questions:
        if group and (len(group) == size or has_image(group[0]) != has_image(q)):
            yield group
            group = []
        group.append(q)
    if group:
        yield group


def item_key(item: dict, key_fields: Tuple[str, ...]) -> tuple:
    """The item's answer key: its `key_fields` read from the item, then from its record (e.g. MMBench's round_id)."""
    fields = {**item.get("record", {}), "question_id": item["question_id"]}
    return tuple(fields[name] for name in key_fields)


def answer_items(session: EvalSession, items: List[dict], args: argparse.Namespace, answers_file: str,
                 key_fields: Tuple[str, ...] = ("question_id",)) -> List[Tuple[object, str]]:
    """Answer the items `answers_file` does not hold yet (JSON lines: question_id, prompt, text, answer_id, model_id,
    metadata and the item's record fields), appending and flushing each line; `args.overwrite` starts over.

    Items are matched to answers by `key_fields`. An item whose image cannot be read is skipped with a warning
    naming it; returns the skipped (key, reason) pairs (the caller exits non-zero when there are any).
    """
    out, done = open_answers(answers_file, getattr(args, "overwrite", False), key_fields)
    pending = [it for it in items if item_key(it, key_fields) not in done]
    if done:
        print(resume_notice(len(items) - len(pending), len(items), answers_file))
    use_im_start_end = getattr(session.model.config, "mm_use_im_start_end", False)
    start, answered, skipped = time.time(), 0, []
    with out, tqdm(total=len(pending), desc="answering") as progress:
        for group in batches(pending, args.batch_size):
            size, with_image = len(group), group[0]["image"] is not None
            images = None
            if with_image:  # an unreadable image drops only its own item from the batch
                loaded = [(it, load_or_skip(it["image"], _shown(item_key(it, key_fields)), skipped)) for it in group]
                group = [it for it, image in loaded if image is not None]
                images = [image for _, image in loaded if image is not None]
            if group:
                prompts = [build_prompt(it["text"], args.conv_mode, use_im_start_end, with_image) for it in group]
                texts = answer_batch(session, prompts, images, instructions=[it["text"] for it in group])
                for it, text in zip(group, texts):
                    write_answer(out, {"question_id": it["question_id"], "prompt": it["text"], **it.get("record", {}),
                                       "text": text, "answer_id": uuid.uuid4().hex, "model_id": session.model_name,
                                       "metadata": {}})
            answered += len(group)
            progress.update(size)
    print(f"answered {answered} questions in {time.time() - start:.1f}s -> {answers_file}")
    if skipped:
        print(skipped_summary(skipped), file=sys.stderr)
    return skipped


def _shown(key: tuple) -> object:
    """A key as warnings name it: the bare question id, or "id round r" for MMBench's (question_id, round_id)."""
    return key[0] if len(key) == 1 else f"{key[0]} round {key[1]}"
