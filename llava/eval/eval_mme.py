"""MME scores from per-subtask result files (written by `convert_answer_to_mme`).

    python -m llava.eval.eval_mme --results-dir playground/data/eval/MME/eval_tool/answers/CKPT

Each `<subtask>.txt` has lines "image<TAB>question<TAB>truth<TAB>prediction". A prediction counts as "yes" / "no"
when it is that word, or failing that when its first four characters contain it (else it is wrong). Per subtask:
acc = correct questions / questions, acc+ = images with every question correct / images, score = 100 * (acc + acc+)
(at most 200). Perception (10 subtasks, at most 2000) and cognition (4, at most 800) are the sums of their scores.
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from llava.eval.eval_io import read_tsv

SUBTASKS = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}


def parse_yes_no(prediction: str) -> str:
    """'yes', 'no' or 'other' following MME's rule (exact word, else a yes / no within the first 4 characters)."""
    p = prediction.strip().lower()
    if p in ("yes", "no"):
        return p
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def subtask_score(rows: Sequence[Tuple[str, str, str, str]]) -> Dict[str, float]:
    """acc, acc+ (fractions) and score (100 * (acc + acc+)) of (image, question, truth, prediction) rows."""
    if not rows:
        raise ValueError("a subtask with no questions has no score")
    per_image: Dict[str, List[bool]] = defaultdict(list)
    for image, _question, truth, prediction in rows:
        per_image[image].append(parse_yes_no(prediction) == truth.strip().lower())
    acc = sum(sum(v) for v in per_image.values()) / len(rows)
    acc_plus = sum(all(v) for v in per_image.values()) / len(per_image)
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus), "questions": len(rows),
            "images": len(per_image)}


def read_rows(path: str) -> List[Tuple[str, str, str, str]]:
    """Rows of one result file; a line without exactly 4 tab-separated fields raises ValueError naming it."""
    return [tuple(row) for row in read_tsv(path, 4, "image, question, truth, prediction separated by tabs")]


def evaluate(results_dir: str) -> Dict[str, float]:
    """{"Perception": total, "Cognition": total, <subtask>: score}; prints a table, naming absent subtasks."""
    known = {t for tasks in SUBTASKS.values() for t in tasks}
    for name in sorted(os.listdir(results_dir)):
        if name.endswith(".txt") and name[:-4] not in known:
            print(f"WARNING: {name} is not an MME subtask; ignored")
    out = {}
    for group, tasks in SUBTASKS.items():
        total, absent = 0.0, []
        print(f"=========== {group} ===========")
        for task in tasks:
            path = os.path.join(results_dir, f"{task}.txt")
            if not os.path.exists(path):
                absent.append(task)
                continue
            s = subtask_score(read_rows(path))
            out[task] = s["score"]
            total += s["score"]
            print(f"{task:<24} score {s['score']:7.2f}  acc {100 * s['acc']:6.2f}  acc+ {100 * s['acc_plus']:6.2f}"
                  f"  ({s['questions']} questions, {s['images']} images)")
        out[group] = total
        note = f"  (WARNING: no results for {', '.join(absent)}; not included)" if absent else ""
        print(f"total {group} score: {total:.2f}{note}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", "--results_dir", dest="results_dir", required=True)
    evaluate(p.parse_args().results_dir)


if __name__ == "__main__":
    main()
