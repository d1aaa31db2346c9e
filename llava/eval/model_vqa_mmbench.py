"""Answer MMBench / MMBench-CN with a LLaVA model (upstream flags): one JSON answer line per .tsv row and round.

    python -m llava.eval.model_vqa_mmbench --model-path M [--model-base B] --question-file mmbench_dev_20230712.tsv \
        --answers-file answers/mmbench_dev_20230712/CKPT.jsonl --single-pred-prompt [--all-rounds] [--lang cn] \
        --temperature 0 --conv-mode vicuna_v1

The prompt is the hint (when present), the question and "A. option" lines; `--single-pred-prompt` adds the
instruction to answer with a letter (in Chinese with `--lang cn`). `--all-rounds` asks each row once per option,
rotating the options over fixed letters (round r shows option (j + r) mod n at letter j). Answer lines carry
question_id (the row index), round_id, prompt, options (as shown) and option_char. Also takes `model_vqa_loader`'s
`--batch-size`, `--device` and the evaluation extensions' flags.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import List

from llava.eval.answer_loop import answer_items
from llava.eval.generation import load_for_eval
from llava.eval.mmbench_data import OPTION_COLUMNS, decode_image, is_blank, read_tsv, row_options
from llava.eval.model_vqa_loader import build_parser as loader_parser
from llava.eval.model_vqa_loader import get_chunk

SINGLE_PRED_PROMPT = {"en": "Answer with the option's letter from the given choices directly.",
                      "cn": "请直接回答选项字母。"}


def mmbench_items(rows: List[dict], all_rounds: bool, single_pred_prompt: bool, lang: str) -> List[dict]:
    """Runner items (see `answer_loop`) for MMBench rows, one per row and round."""
    if lang not in SINGLE_PRED_PROMPT:
        raise ValueError(f"--lang {lang!r}: expected one of {sorted(SINGLE_PRED_PROMPT)}")
    items = []
    for row in rows:
        options = row_options(row)
        if not options:
            raise ValueError(f"row {row.get('index')}: no options (columns A, B, ... are empty)")
        letters = list(OPTION_COLUMNS[: len(options)])
        question = row["question"] if is_blank(row.get("hint")) else row["hint"] + "\n" + row["question"]
        for round_id in range(len(options) if all_rounds else 1):
            shown = options[round_id:] + options[:round_id]
            text = question + "".join(f"\n{c}. {o}" for c, o in zip(letters, shown))
            prompt = text
            if single_pred_prompt:
                text = text + "\n" + SINGLE_PRED_PROMPT[lang]
            items.append({"question_id": int(float(row["index"])), "text": text,
                          "image": functools.partial(decode_image, row["image"]),
                          "record": {"round_id": round_id, "prompt": prompt, "options": shown,
                                     "option_char": letters[round_id:] + letters[:round_id]}})
    return items


def build_parser() -> argparse.ArgumentParser:
    """`model_vqa_loader`'s flags plus `--all-rounds`, `--single-pred-prompt` and `--lang`."""
    p = loader_parser()
    p.description = __doc__
    p.add_argument("--all-rounds", action="store_true", help="Ask each row once per option, rotating the options.")
    p.add_argument("--single-pred-prompt", action="store_true", help="Ask for the option's letter only.")
    p.add_argument("--lang", type=str, default="en", help="en or cn (language of --single-pred-prompt).")
    return p


def main(args: argparse.Namespace) -> list:
    """Answer the question file (this chunk) into the answers file, resuming it unless `--overwrite`; returns the
    questions skipped for an unreadable image (the command then exits with status 1)."""
    rows = get_chunk(read_tsv(os.path.expanduser(args.question_file)), args.num_chunks, args.chunk_idx)
    if rows and "image" not in rows[0]:
        raise ValueError(f"{args.question_file}: no 'image' column (base64 images)")
    items = mmbench_items(rows, args.all_rounds, args.single_pred_prompt, args.lang)
    return answer_items(load_for_eval(args), items, args, os.path.expanduser(args.answers_file),
                        key_fields=("question_id", "round_id"))


if __name__ == "__main__":
    sys.exit(1 if main(build_parser().parse_args()) else 0)
