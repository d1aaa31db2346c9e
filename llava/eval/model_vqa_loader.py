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
import time
import uuid
from typing import Iterator, List

from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.eval.eval_io import read_jsonl
from llava.eval.generation import EvalSession, answer_batch, load_for_eval, load_image  # noqa: F401  (reusable API)
from llava.eval import extensions
from llava.eval.answers_file import load_or_skip, open_answers, resume_notice, skipped_summary, write_answer


def split_list(items: list, n: int) -> List[list]:
    size = math.ceil(len(items) / n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def get_chunk(items: list, n: int, k: int) -> list:
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


def read_questions(path: str) -> List[dict]:
    """Questions of a LLaVA question file; each line needs `question_id` and `text` (errors name file and line)."""
    return read_jsonl(path, required=("question_id", "text"))


def build_prompt(question: str, conv_mode: str, use_im_start_end: bool, has_image: bool) -> str:
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


def eval_model(args: argparse.Namespace) -> list:
    """Answer the question file (this chunk of it) into the answers file, one JSON line per question.

    Resumes: questions the answers file already holds are skipped (`--overwrite` starts over). A question whose image
    cannot be read is skipped with a warning naming it; returns the skipped (question_id, reason) pairs.
    """
    questions = get_chunk(read_questions(os.path.expanduser(args.question_file)), args.num_chunks, args.chunk_idx)
    answers_file = os.path.expanduser(args.answers_file)
    out, done = open_answers(answers_file, getattr(args, "overwrite", False))
    pending = [q for q in questions if (q["question_id"],) not in done]
    if done:
        print(resume_notice(len(questions) - len(pending), len(questions), answers_file))
    session = load_for_eval(args)
    use_im_start_end = getattr(session.model.config, "mm_use_im_start_end", False)
    start, answered, skipped = time.time(), 0, []
    with out, tqdm(total=len(pending), desc="answering") as progress:
        for group in batches(pending, args.batch_size):
            size, with_image = len(group), has_image(group[0])
            images = None
            if with_image:  # an unreadable image drops only its own question from the batch
                loaded = [(q, load_or_skip(functools.partial(load_image, args.image_folder, q["image"],
                                                             q["question_id"]), q["question_id"], skipped))
                          for q in group]
                group = [q for q, image in loaded if image is not None]
                images = [image for _, image in loaded if image is not None]
            if group:
                prompts = [build_prompt(q["text"], args.conv_mode, use_im_start_end, with_image) for q in group]
                texts = answer_batch(session, prompts, images, instructions=[q["text"] for q in group])
                for q, text in zip(group, texts):
                    write_answer(out, {"question_id": q["question_id"], "prompt": q["text"], "text": text,
                                       "answer_id": uuid.uuid4().hex, "model_id": session.model_name, "metadata": {}})
            answered += len(group)
            progress.update(size)
    print(f"answered {answered} questions in {time.time() - start:.1f}s -> {answers_file}")
    if skipped:
        print(skipped_summary(skipped), file=sys.stderr)
    return skipped


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
