"""Score LLaVA SEED-Bench answers per question type and write the leaderboard upload file.

    python -m llava.eval.convert_seed_for_submission --annotation-file SEED-Bench.json \
        --result-file answers/CKPT/merge.jsonl --result-upload-file answers_upload/CKPT.jsonl

The annotation is SEED-Bench.json ({"question_type": {name: id}, "questions": [{"question_id", "answer",
"data_type": "image"|"video", "question_type_id"}]}). An answer is read as an option letter A-D
(`choice_parse.parse_choice`). Prints the accuracy per question type, then overall, image-only and video-only.
Questions without an answer score wrong and are reported. The upload file has one {"question_id", "prediction"}
line per annotated question: the parsed letter, else the raw text, "" when unanswered.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Dict, List, Optional

from llava.eval.choice_parse import parse_choice
from llava.eval.eval_io import index_by, read_json, read_jsonl, report_missing, write_jsonl

LETTERS = "ABCD"


def accuracies(questions: List[dict], answers: Dict[str, dict], data_type: Optional[str] = None) -> Dict[str, float]:
    """{question_type_id (str): accuracy, "total": accuracy} over questions of `data_type` (all when None)."""
    hits, counts = defaultdict(int), defaultdict(int)
    for q in questions:
        if data_type is not None and q.get("data_type") != data_type:
            continue
        answer = answers.get(str(q["question_id"]))
        hit = answer is not None and parse_choice(answer["text"], LETTERS) == q["answer"]
        for key in (str(q["question_type_id"]), "total"):
            hits[key] += hit
            counts[key] += 1
    return {k: hits[k] / counts[k] for k in counts}


def upload_records(questions: List[dict], answers: Dict[str, dict]) -> List[dict]:
    """One {"question_id", "prediction"} per annotated question, in annotation order."""
    records = []
    for q in questions:
        answer = answers.get(str(q["question_id"]))
        text = "" if answer is None else str(answer["text"])
        records.append({"question_id": q["question_id"], "prediction": parse_choice(text, LETTERS) or text})
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    p.add_argument("--result-upload-file", required=True)
    a = p.parse_args()
    data = read_json(a.annotation_file)
    questions = data["questions"]
    names = {str(i): name for name, i in data["question_type"].items()}
    answers = index_by(read_jsonl(a.result_file, required=("question_id", "text")), "question_id", a.result_file)
    unknown = set(answers) - {str(q["question_id"]) for q in questions}
    if unknown:
        raise ValueError(f"{a.result_file}: {len(unknown)} answers to questions not in {a.annotation_file}")
    report_missing("SEED-Bench questions", [q["question_id"] for q in questions
                                            if str(q["question_id"]) not in answers], len(questions))
    overall = accuracies(questions, answers)
    for key in sorted((k for k in overall if k != "total"), key=int):
        print(f"{names.get(key, key)}: {100 * overall[key]:.2f}%")
    print(f"Total accuracy: {100 * overall['total']:.2f}%")
    for data_type in ("image", "video"):
        acc = accuracies(questions, answers, data_type)
        if acc:
            print(f"{data_type} accuracy: {100 * acc['total']:.2f}%")
    write_jsonl(a.result_upload_file, upload_records(questions, answers))
    print(f"wrote {a.result_upload_file}")


if __name__ == "__main__":
    main()
