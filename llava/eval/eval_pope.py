"""Score POPE answers per category (adversarial / popular / random) and on average.

    python -m llava.eval.eval_pope --annotation-dir pope/coco --question-file pope/llava_pope_test.jsonl \
        --result-file pope/answers/CKPT.jsonl

`--annotation-dir` holds POPE's `coco_pope_<category>.json` (JSON lines with "label"); the i-th label of a file
belongs to the i-th question of that category in the question file (the layout of LLaVA's eval files), which is
checked on the image names where both files carry them. Prints per category TP/FP/TN/FN, accuracy, precision,
recall, F1 and yes-ratio, then their mean over the categories. Unanswered questions are reported and scored wrong.
"""
from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict
from typing import Dict, List

from llava.eval.eval_io import index_by, read_jsonl, report_missing
from llava.eval.pope_metrics import count_predictions, parse_yes_no, pope_metrics

METRICS = ("f1", "accuracy", "precision", "recall", "yes_ratio")


def load_labels(annotation_dir: str) -> Dict[str, List[dict]]:
    """{category: rows of coco_pope_<category>.json}; an empty or absent folder raises FileNotFoundError."""
    files = sorted(glob.glob(os.path.join(annotation_dir, "coco_pope_*.json")))
    if not files:
        raise FileNotFoundError(f"{annotation_dir}: no coco_pope_<category>.json files (download POPE's output/coco)")
    return {os.path.basename(f)[len("coco_pope_"):-len(".json")]: read_jsonl(f, required=("label",)) for f in files}


def evaluate(annotation_dir: str, question_file: str, result_file: str) -> Dict[str, Dict[str, float]]:
    """Metrics per category (and "average"); prints the tables as it goes."""
    labels = load_labels(annotation_dir)
    questions = read_jsonl(question_file, required=("question_id", "category"))
    answers = index_by(read_jsonl(result_file, required=("question_id", "text")), "question_id", result_file)
    by_category = defaultdict(list)
    for q in questions:
        by_category[q["category"]].append(q)
    unknown = set(answers) - {str(q["question_id"]) for q in questions}
    if unknown:
        raise ValueError(f"{result_file}: {len(unknown)} answers to questions not in {question_file}, "
                         f"e.g. {min(unknown)}")
    results = {}
    for category, rows in labels.items():
        qs = by_category.pop(category, [])
        if len(qs) != len(rows):
            raise ValueError(f"category {category!r}: {len(qs)} questions in {question_file} but {len(rows)} labels "
                             f"in {annotation_dir}/coco_pope_{category}.json")
        for i, (q, row) in enumerate(zip(qs, rows)):
            if "image" in q and "image" in row and q["image"] != row["image"]:
                raise ValueError(f"category {category!r}, question {i}: image {q['image']} in the question file but "
                                 f"{row['image']} in the annotation; the files do not belong together")
        preds = [parse_yes_no(answers[str(q["question_id"])]["text"]) if str(q["question_id"]) in answers else None
                 for q in qs]
        report_missing(f"{category} questions", [q["question_id"] for q, p in zip(qs, preds) if p is None], len(qs))
        counts = count_predictions(preds, [str(r["label"]).strip().lower() for r in rows])
        results[category] = pope_metrics(counts)
        print(f"Category: {category}, # samples: {counts.total}")
        print(f"TP\tFP\tTN\tFN\n{counts.tp}\t{counts.fp}\t{counts.tn}\t{counts.fn}")
        print("  ".join(f"{m}: {results[category][m]:.4f}" for m in METRICS))
    if by_category:
        raise ValueError(f"{question_file}: categories {sorted(by_category)} have no coco_pope_<category>.json "
                         f"in {annotation_dir}")
    results["average"] = {m: sum(r[m] for r in results.values()) / len(results) for m in METRICS}
    print("Average over categories: " + "  ".join(f"{m}: {results['average'][m]:.4f}" for m in METRICS))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-dir", required=True)
    p.add_argument("--question-file", required=True)
    p.add_argument("--result-file", required=True)
    a = p.parse_args()
    evaluate(a.annotation_dir, a.question_file, a.result_file)


if __name__ == "__main__":
    main()
