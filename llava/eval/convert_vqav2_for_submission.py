"""Turn merged LLaVA VQAv2 answers into the EvalAI upload file.

    python -m llava.eval.convert_vqav2_for_submission --split llava_vqav2_mscoco_test-dev2015 --ckpt CKPT \
        [--dir ./playground/data/eval/vqav2]

Reads `<dir>/answers/<split>/<ckpt>/merge.jsonl`; writes `<dir>/answers_upload/<split>/<ckpt>.json`, a JSON list of
{"question_id": int, "answer": normalised answer} over every question of `<dir>/llava_vqav2_mscoco_test2015.jsonl`
(the server wants the full test2015 list). Test2015 questions outside the answered split get "" and are counted;
questions of `<dir>/<split>.jsonl` (when present) without an answer are reported as missing.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Tuple

from llava.eval.eval_io import index_by, read_jsonl, report_missing, write_json
from llava.eval.vqa_normalize import normalize_answer

TEST_FILE = "llava_vqav2_mscoco_test2015.jsonl"


def build_upload(answers: Dict[str, dict], test_questions: List[dict]) -> Tuple[List[dict], List[str]]:
    """Upload records for all test questions and the ids that got an empty answer."""
    unknown = set(answers) - {str(q["question_id"]) for q in test_questions}
    if unknown:
        raise ValueError(f"{len(unknown)} answers to questions not in {TEST_FILE}, e.g. {min(unknown)}")
    upload, empty = [], []
    for q in test_questions:
        qid = str(q["question_id"])
        if qid in answers:
            answer = normalize_answer(answers[qid]["text"])
        else:
            answer = ""
            empty.append(qid)
        upload.append({"question_id": int(q["question_id"]), "answer": answer})
    return upload, empty


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="./playground/data/eval/vqav2")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--split", required=True)
    a = p.parse_args()
    src = os.path.join(a.dir, "answers", a.split, a.ckpt, "merge.jsonl")
    dst = os.path.join(a.dir, "answers_upload", a.split, f"{a.ckpt}.json")
    answers = index_by(read_jsonl(src, required=("question_id", "text")), "question_id", src)
    test_questions = read_jsonl(os.path.join(a.dir, TEST_FILE), required=("question_id",))
    split_file = os.path.join(a.dir, f"{a.split}.jsonl")
    if os.path.exists(split_file):
        split_ids = [str(q["question_id"]) for q in read_jsonl(split_file, required=("question_id",))]
        report_missing(f"{a.split} questions", [i for i in split_ids if i not in answers], len(split_ids),
                       consequence="uploaded as empty answers")
    upload, empty = build_upload(answers, test_questions)
    write_json(dst, upload)
    print(f"answers: {len(answers)}, test2015 questions: {len(test_questions)}, uploaded empty (not in the answered "
          f"split): {len(empty)}\nwrote {dst}")


if __name__ == "__main__":
    main()
