"""Answer a LLaVA question file with a trained model (upstream flags); one JSON answer per line.

Extras: `--batch-size` (left-padded batched generation, greedy answers equal to batch 1) and the flags of the
installed evaluation extensions (`llava.eval.extensions`). Other evaluation runners reuse `load_for_eval`, `answer_batch` (from
`llava.eval.generation`, importable from here too), `build_prompt` and `batches`.
"""
import argparse
import functools
import math
import os
import sys
from typing import List

from llava.eval.eval_io import read_jsonl
from llava.eval.generation import EvalSession, answer_batch, load_for_eval, load_image  # noqa: F401  (reusable API)
from llava.eval import extensions
from llava.eval.answer_loop import answer_items, batches, build_prompt, has_image  # noqa: F401  (reusable API)
from llava.eval.answers_file import answered_keys


def split_list(items: list, n: int) -> List[list]:
    size = math.ceil(len(items) / n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def get_chunk(items: list, n: int, k: int) -> list:
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


def read_questions(path: str) -> List[dict]:
    """Questions of a LLaVA question file; each line needs `question_id` and `text` (errors name file and line)."""
    return read_jsonl(path, required=("question_id", "text"))


def eval_model(args: argparse.Namespace) -> list:
    """Answer the question file (this chunk of it) into the answers file, one JSON line per question.

    Resumes: questions the answers file already holds are skipped (`--overwrite` starts over). A question whose image
    cannot be read is skipped with a warning naming it; returns the skipped (question_id, reason) pairs. The question
    file and the answers file are read before the model loads.
    """
    questions = get_chunk(read_questions(os.path.expanduser(args.question_file)), args.num_chunks, args.chunk_idx)
    answers_file = os.path.expanduser(args.answers_file)
    if not getattr(args, "overwrite", False):
        answered_keys(answers_file)  # a broken answers file fails now, not after loading the model
    items = [{"question_id": q["question_id"], "text": q["text"], "record": {},
              "image": functools.partial(load_image, args.image_folder, q["image"], q["question_id"])
              if has_image(q) else None} for q in questions]
    return answer_items(load_for_eval(args), items, args, answers_file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-folder", type=str, default="")
    p.add_argument("--question-file", type=str, default="tables/question.jsonl")
    p.add_argument("--answers-file", type=str, default="answer.jsonl")
    p.add_argument("--conv-mode", type=str, default="llava_v1")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--device", type=str, default="cuda", help="cuda (falls back to cpu when no GPU) or cpu")
    p.add_argument("--batch-size", type=int, default=1,
                   help="Questions per generate call (left-padded); greedy answers equal those of batch 1.")
    p.add_argument("--overwrite", action="store_true",
                   help="Start the answers file over (default: keep its answers and answer only the other questions).")
    extensions.add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(1 if eval_model(build_parser().parse_args()) else 0)
