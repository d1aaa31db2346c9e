"""Score TextVQA answers with VQA soft accuracy.

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers/CKPT.jsonl

Answers are matched to annotations by (image id, question): LLaVA's TextVQA question file uses the image id as
`question_id`, and the question is the prompt's line that is not the "Reference OCR token:" line. Prints the number
of samples and the accuracy over all annotated questions; unanswered ones are reported and score 0.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Dict, List, Tuple

from llava.eval.eval_io import read_json, read_jsonl, report_missing
from llava.eval.vqa_accuracy import soft_accuracy

OCR_PREFIX = "reference ocr token"
SHORT_ANSWER_PROMPT = "answer the question using a single word or phrase."


def question_of_prompt(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt (question / OCR-token line / instruction), lower-cased."""
    for line in prompt.split("\n"):
        line = line.strip()
        low = line.lower()
        if line and not low.startswith(OCR_PREFIX) and low != SHORT_ANSWER_PROMPT:
            return low
    raise ValueError(f"no question found in prompt {prompt!r}")


def evaluate(annotation_file: str, result_file: str) -> float:
    """Mean soft accuracy over all annotated questions (missing answers count 0); prints the summary."""
    data = read_json(annotation_file)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{annotation_file}: expected an object with a 'data' list (TextVQA annotation format)")
    pending: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
    for i, ann in enumerate(data["data"]):
        for field in ("image_id", "question", "answers"):
            if field not in ann:
                raise ValueError(f"{annotation_file}: data[{i}] has no {field!r} field")
        pending[(str(ann["image_id"]), ann["question"].strip().lower())].append(ann)
    scores = []
    for line_no, res in enumerate(read_jsonl(result_file, required=("question_id", "prompt", "text")), 1):
        key = (str(res["question_id"]), question_of_prompt(res["prompt"]))
        if not pending.get(key):
            raise ValueError(f"{result_file}: answer {line_no} ({key[0]!r}, {key[1]!r}) matches no unanswered "
                             f"question in {annotation_file}")
        ann = pending[key].pop(0)
        scores.append(soft_accuracy(res["text"], ann["answers"]))
    missing = [f"{img}: {q}" for (img, q), anns in pending.items() for _ in anns]
    total = len(scores) + len(missing)
    report_missing("TextVQA questions", missing, total, consequence="scored 0")
    accuracy = sum(scores) / total if total else 0.0
    print(f"Samples: {total}\nAccuracy: {100 * accuracy:.2f}%")
    return accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    a = p.parse_args()
    evaluate(a.annotation_file, a.result_file)


if __name__ == "__main__":
    main()
