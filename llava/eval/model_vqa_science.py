"""Answer ScienceQA with a LLaVA model (upstream flags): one JSON answer line per problem of the question file.

    python -m llava.eval.model_vqa_science --model-path M [--model-base B] \
        --question-file scienceqa/llava_test_CQM-A.json --image-folder scienceqa/images/test \
        --answers-file answers/CKPT.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

The question file is LLaVA's ScienceQA conversion: a JSON list of {"id", "image" (optional), "conversations":
[{"from": "human", "value": question with choices}, ...]}. Also takes `model_vqa_loader`'s `--batch-size`,
`--device` and the evaluation extensions' flags.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import List

from llava.eval.answer_loop import answer_items
from llava.eval.eval_io import read_json
from llava.eval.generation import load_for_eval, load_image
from llava.eval.model_vqa_loader import build_parser as loader_parser
from llava.eval.model_vqa_loader import get_chunk

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def science_items(problems: List[dict], image_folder: str, single_pred_prompt: bool) -> List[dict]:
    """Runner items (see `answer_loop`) for ScienceQA problems in LLaVA's conversation format."""
    items = []
    for i, prob in enumerate(problems):
        try:
            question = prob["conversations"][0]["value"]
            qid = prob["id"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"problem {i}: needs 'id' and 'conversations'[0]['value']") from None
        text = question.replace("<image>", "").strip()
        if single_pred_prompt:
            text = text + "\n" + SINGLE_PRED_PROMPT
        image = prob.get("image")
        loader = functools.partial(load_image, image_folder, image, qid) if image else None
        items.append({"question_id": qid, "text": text, "image": loader,
                      "record": {"prompt": ("<image>\n" + text) if image else text}})
    return items


def build_parser() -> argparse.ArgumentParser:
    """`model_vqa_loader`'s flags plus `--single-pred-prompt`."""
    p = loader_parser()
    p.description = __doc__
    p.set_defaults(question_file="tables/question.json", conv_mode="llava_v0")
    p.add_argument("--single-pred-prompt", action="store_true",
                   help=f"Append {SINGLE_PRED_PROMPT!r} to each question.")
    return p


def main(args: argparse.Namespace) -> list:
    """Answer the question file (this chunk) into the answers file, resuming it unless `--overwrite`; returns the
    questions skipped for an unreadable image (the command then exits with status 1)."""
    problems = read_json(os.path.expanduser(args.question_file))
    if not isinstance(problems, list):
        raise ValueError(f"{args.question_file}: expected a JSON list of problems")
    items = get_chunk(science_items(problems, args.image_folder, args.single_pred_prompt), args.num_chunks,
                      args.chunk_idx)
    return answer_items(load_for_eval(args), items, args, os.path.expanduser(args.answers_file))


if __name__ == "__main__":
    sys.exit(1 if main(build_parser().parse_args()) else 0)
