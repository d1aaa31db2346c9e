"""Score MMBench / MMBench-CN answers locally on a split that has answers (dev), with circular evaluation.

    python -m llava.eval.eval_mmbench --annotation-file mmbench_dev_20230712.tsv --result-file answers/CKPT.jsonl

A question (a circular group: its row and the rows whose index differs by multiples of 1,000,000, which rotate its
choices) counts as solved only if every row of the group is answered correctly; runs with `--all-rounds` add the
rotations of each row as rounds, and then every round must be right too. Prints the circular accuracy overall and
per category, and the single-pass accuracy (original rows, round 0). Missing answers are reported and scored wrong.
The test split has no answers: submit it with `convert_mmbench_for_submission` instead.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Dict, List, Tuple

from llava.eval.choice_parse import parse_choice
from llava.eval.eval_io import report_missing
from llava.eval.mmbench_answers import read_mmbench_answers
from llava.eval.mmbench_data import OPTION_COLUMNS, circular_group, read_tsv, row_options


def round_correct(row: dict, answer: dict, round_id: int) -> bool:
    """Whether the answer picks the row's correct option when its choices were rotated by `round_id`."""
    options = row_options(row)
    n = len(options)
    letters = OPTION_COLUMNS[:n]
    if str(row["answer"]).strip() not in letters:
        raise ValueError(f"row {row['index']}: answer {row['answer']!r} is not one of its options {letters}")
    truth = letters.index(str(row["answer"]).strip())
    shown = options[round_id % n:] + options[:round_id % n]  # letter j shows options[(j + round_id) % n]
    return parse_choice(answer["text"], letters, shown) == letters[(truth - round_id) % n]


def score(rows: List[dict], answers: Dict[Tuple[int, int], dict]) -> dict:
    """{"circular", "single", "per_category": {cat: circular}, "missing": [(index, round)], "expected", "groups"}."""
    if "answer" not in rows[0]:
        raise ValueError("the annotation file has no 'answer' column (a test split): submit it to the server")
    all_rounds = any(r > 0 for _, r in answers)
    solved, single, category = defaultdict(lambda: True), {}, {}
    missing, expected = [], 0
    for row in rows:
        index = int(float(row["index"]))
        group = circular_group(index)
        category.setdefault(group, row.get("category", "all"))
        for round_id in range(len(row_options(row)) if all_rounds else 1):
            answer = answers.get((index, round_id))
            expected += 1
            ok = answer is not None and round_correct(row, answer, round_id)
            if answer is None:
                missing.append((index, round_id))
            solved[group] = solved[group] and ok
            if index == group and round_id == 0:
                single[group] = ok
    per_cat = defaultdict(list)
    for group, ok in solved.items():
        per_cat[category[group]].append(ok)
    return {"circular": sum(solved.values()) / len(solved), "single": sum(single.values()) / max(len(single), 1),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(per_cat.items())}, "missing": missing,
            "expected": expected, "groups": len(solved)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    a = p.parse_args()
    rows = read_tsv(a.annotation_file)
    answers = read_mmbench_answers(a.result_file)
    known = {int(float(r["index"])) for r in rows}
    unknown = {i for i, _ in answers} - known
    if unknown:
        raise ValueError(f"{a.result_file}: answers to indices not in {a.annotation_file}, e.g. {min(unknown)}")
    s = score(rows, answers)
    report_missing("MMBench (row, round) answers", s["missing"], s["expected"])
    print(f"Questions: {s['groups']}\nCircular accuracy: {100 * s['circular']:.2f}%\n"
          f"Single-pass accuracy: {100 * s['single']:.2f}%")
    for cat, acc in s["per_category"].items():
        print(f"  {cat}: {100 * acc:.2f}%")


if __name__ == "__main__":
    main()
