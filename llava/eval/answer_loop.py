"""The answering loop shared by the ScienceQA and MMBench runners: batch questions, generate, write answer lines.

Each item is {"question_id", "text" (the question put after the image token), "image" (a zero-argument callable
returning the PIL image, or None for text-only), "record" (extra fields for the answer line, e.g. "prompt")}.
Images are loaded batch by batch, so a large benchmark is never held in memory at once.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import List

from tqdm import tqdm

from llava.eval.generation import EvalSession, answer_batch
from llava.eval.model_vqa_loader import batches, build_prompt


def answer_items(session: EvalSession, items: List[dict], args: argparse.Namespace, answers_file: str) -> int:
    """Answer every item into `answers_file` (JSON lines: question_id, prompt, text, answer_id, model_id, metadata
    and the item's record fields); returns the number answered."""
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    use_im_start_end = getattr(session.model.config, "mm_use_im_start_end", False)
    start, answered = time.time(), 0
    with open(answers_file, "w", encoding="utf-8") as out, tqdm(total=len(items), desc="answering") as progress:
        for group in batches(items, args.batch_size):
            with_image = group[0]["image"] is not None
            prompts = [build_prompt(it["text"], args.conv_mode, use_im_start_end, with_image) for it in group]
            images = [it["image"]() for it in group] if with_image else None
            texts = answer_batch(session, prompts, images, instructions=[it["text"] for it in group])
            for it, text in zip(group, texts):
                record = {"question_id": it["question_id"], "prompt": it["text"], **it.get("record", {}),
                          "text": text, "answer_id": uuid.uuid4().hex, "model_id": session.model_name,
                          "metadata": {}}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            answered += len(group)
            progress.update(len(group))
    print(f"answered {answered} questions in {time.time() - start:.1f}s -> {answers_file}")
    return answered
