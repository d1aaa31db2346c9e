"""Answer and score the tiny world's held-out questions with a Hugging Face Llava + LoRA adapter.

    python scripts/hf/eval_tiny_world.py --model checkpoints/tiny-hf/hf-llava --adapter checkpoints/tiny-hf/hf-lora \
        [--world playground/tiny] [--mode full|pruned|fast] [--answers-file answers.jsonl]

Greedy short answers (left-padded batches built by the processor's chat template with the generation prompt),
written as LLaVA's answer JSONL and scored with `llava.eval.eval_tiny_world`. `--mode full` is plain Hugging Face
inference; `pruned` and `fast` give the model DualSpeed's saved isolator and settings (`load_dualspeed`) and
generate from the pruned visual tokens (`fast`: behind the isolator), as DualSpeed's pruned inference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
import warnings
from typing import Iterator, Optional

import torch
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.eval.eval_io import read_jsonl
from llava.eval.eval_tiny_world import format_table, score


def load(model_dir: str, adapter_dir: Optional[str], mode: str):
    """(model, processor): the base model with the adapter merged in, DualSpeed's isolator given unless `full`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(adapter_dir or model_dir)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir:
        from peft import PeftModel

        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if mode != "full":
        from dualspeed_patch.hf import load_dualspeed

        load_dualspeed(model, adapter_dir or model_dir)
    return model.eval(), processor


def batches(questions: list, size: int) -> Iterator[list]:
    """Consecutive questions in groups of `size`, a group never mixing questions with and without an image."""
    group: list = []
    for q in questions:
        if group and (len(group) == size or bool(group[0].get("image")) != bool(q.get("image"))):
            yield group
            group = []
        group.append(q)
    if group:
        yield group


def messages_of(question: dict, image_folder: str) -> list:
    """One user turn: the image first (as the tiny world's questions are asked), then the question."""
    parts = []
    if question.get("image"):
        image = Image.open(os.path.join(image_folder, question["image"])).convert("RGB")
        parts.append({"type": "image", "image": image})
    return [{"role": "user", "content": parts + [{"type": "text", "text": question["text"]}]}]


@torch.no_grad()
def answer(model, processor, group: list, image_folder: str, mode: str, max_new_tokens: int) -> list:
    """Greedy answers (decoded, stripped) to a group of questions."""
    inputs = processor.apply_chat_template([messages_of(q, image_folder) for q in group], tokenize=True,
                                           return_dict=True, add_generation_prompt=True, return_tensors="pt",
                                           processor_kwargs={"padding": True})
    tokenizer = processor.tokenizer
    options = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if mode == "full":
        new = model.generate(**inputs, **options)[:, inputs["input_ids"].shape[1]:]
    else:
        from dualspeed_patch.hf import generate

        new = generate(model, inputs, mode=mode, **options)
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def main(argv: Optional[list] = None) -> dict:
    """CLI: answer every question into the answers file, print the accuracy table, return the score."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="The base Hugging Face Llava (playground.world_hf).")
    parser.add_argument("--adapter", default=None, help="LoRA adapter dir (finetune_lora_dualspeed.py's output).")
    parser.add_argument("--world", default="playground/tiny", help="The tiny world (eval/ and images/ in it).")
    parser.add_argument("--mode", choices=("full", "pruned", "fast"), default="full")
    parser.add_argument("--answers-file", default=None, help="Default: ADAPTER/eval/answers_MODE.jsonl.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N questions (smoke runs).")
    args = parser.parse_args(argv)
    if args.mode != "full" and not args.adapter:
        parser.error(f"--mode {args.mode} needs --adapter (the run holding mode_isolator.safetensors)")
    questions = read_jsonl(os.path.join(args.world, "eval/questions.jsonl"))[:args.limit]
    key = read_jsonl(os.path.join(args.world, "eval/answers_key.jsonl"))
    if args.limit is not None:
        asked = {q["question_id"] for q in questions}
        key = [row for row in key if row["question_id"] in asked]
    answers_file = args.answers_file or os.path.join(args.adapter or args.model, "eval", f"answers_{args.mode}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
    model, processor = load(args.model, args.adapter, args.mode)
    model_id = f"{os.path.basename(os.path.normpath(args.adapter or args.model))}-{args.mode}"
    start, rows = time.time(), []
    groups = list(batches(questions, args.batch_size))
    for group in tqdm(groups, desc=f"answering ({args.mode})"):
        texts = answer(model, processor, group, os.path.join(args.world, "images"), args.mode, args.max_new_tokens)
        rows += [{"question_id": q["question_id"], "prompt": q["text"], "text": text, "answer_id": uuid.uuid4().hex,
                  "model_id": model_id, "metadata": {"mode": args.mode}} for q, text in zip(group, texts)]
    with open(answers_file, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"answered {len(rows)} questions in {time.time() - start:.1f}s ({args.mode} mode) -> {answers_file}")
    result = score(rows, key)
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
