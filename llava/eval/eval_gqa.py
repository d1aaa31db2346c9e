"""GQA accuracy: exact match of prediction and answer after VQA answer normalisation, overall and per question
structure (verify / query / choose / logical / compare).

    python -m llava.eval.eval_gqa --tier testdev_balanced --gqa-dir playground/data/eval/gqa/data

Reads `<gqa-dir>/<tier>_questions.json` (GQA's {questionId: {"answer", "types": {"structural"}}}) and
`<gqa-dir>/<tier>_predictions.json` (from `convert_gqa_for_eval`); `--questions` / `--predictions` override the
paths. Our own scorer, not GQA's eval.py (which also reports consistency, plausibility, validity and distribution);
its accuracy is the same measure. Questions without a prediction are reported and scored wrong.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Dict

from llava.eval.eval_io import index_by, read_json, report_missing
from llava.eval.vqa_normalize import normalize_answer


def gqa_accuracy(questions: Dict[str, dict], predictions: Dict[str, str]) -> Dict[str, float]:
    """{"overall": acc, <structural type>: acc, ...} in [0, 1]; a question without a prediction scores 0."""
    hits, counts = defaultdict(int), defaultdict(int)
    for qid, q in questions.items():
        if "answer" not in q:
            raise ValueError(f"question {qid} has no 'answer' field (a test split without answers?)")
        pred = predictions.get(qid)
        hit = pred is not None and normalize_answer(pred) == normalize_answer(q["answer"])
        for group in ("overall", (q.get("types") or {}).get("structural")):
            if group:
                hits[group] += hit
                counts[group] += 1
    return {g: hits[g] / counts[g] for g in counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", default="testdev_balanced")
    p.add_argument("--gqa-dir", default="./playground/data/eval/gqa/data")
    p.add_argument("--questions", default=None)
    p.add_argument("--predictions", default=None)
    a = p.parse_args()
    q_path = a.questions or os.path.join(a.gqa_dir, f"{a.tier}_questions.json")
    p_path = a.predictions or os.path.join(a.gqa_dir, f"{a.tier}_predictions.json")
    questions = {str(k): v for k, v in read_json(q_path).items()}
    preds = {k: v["prediction"] for k, v in index_by(read_json(p_path), "questionId", p_path).items()}
    unknown = set(preds) - set(questions)
    if unknown:
        raise ValueError(f"{p_path}: {len(unknown)} predictions for questions not in {q_path}, e.g. {min(unknown)}")
    report_missing("GQA questions", sorted(set(questions) - set(preds)), len(questions))
    acc = gqa_accuracy(questions, preds)
    print(f"Questions: {len(questions)}\nAccuracy: {100 * acc.pop('overall'):.2f}%")
    for group in sorted(acc):
        print(f"  {group}: {100 * acc[group]:.2f}%")


if __name__ == "__main__":
    main()
