"""Score LLaVA answers on the tiny world's held-out questions (playground.build_tiny_world).

    python -m llava.eval.eval_tiny_world --answers-file A.jsonl --key-file K.jsonl [--json-out F]

Answers are LLaVA's answer JSONL (``{"question_id", "prompt", "text", "answer_id", "model_id"}``);
the key is ``eval/answers_key.jsonl`` (``{"question_id", "answer", "category", "choices"}``).
Matching is exact after normalisation (lower case, punctuation, articles and extra spaces
removed, number words mapped to digits). Questions without an answer count as wrong and are
listed. Chance level = mean of 1/len(choices) (color 1/6, count 1/4, shape 1/3).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from llava.eval.eval_io import read_jsonl

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
# Used only when a key row carries no "choices" list.
DEFAULT_CHANCE = {"color": 1 / 6, "count": 1 / 4, "shape": 1 / 3, "presence": 1 / 2, "position": 1 / 9}
_PUNCT = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Canonical form of a short answer: 'The Top-Left.' -> 'top left', 'Three' -> '3'."""
    words = _PUNCT.sub(" ", str(text).lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def _index(rows: list[dict], what: str, field: str) -> dict[str, dict]:
    """Rows keyed by str(question_id); duplicates and rows without the fields raise ValueError."""
    indexed: dict[str, dict] = {}
    for i, row in enumerate(rows):
        for name in ("question_id", field):
            if name not in row:
                raise ValueError(f"{what} row {i} has no {name!r} field: {row}")
        qid = str(row["question_id"])
        if qid in indexed:
            raise ValueError(f"duplicate question_id {row['question_id']!r} in {what} (row {i})")
        indexed[qid] = row
    return indexed


def _chance(row: dict) -> float | None:
    """Chance of a uniform guess over the question's answer choices."""
    choices = row.get("choices")
    if choices:
        return 1.0 / len(choices)
    return DEFAULT_CHANCE.get(row.get("category"))


def _summary(correct: int, total: int, chances: list[float | None]) -> dict[str, Any]:
    known = [c for c in chances if c is not None]
    return {"correct": correct, "total": total,
            "accuracy": correct / total if total else 0.0,
            "chance": math.fsum(known) / len(known) if known and len(known) == len(chances) else None}


def score(answers: list[dict], key: list[dict]) -> dict:
    """Accuracy per category and overall (with chance levels) of ``answers`` against ``key``.

    Answers for question ids missing from the key, or duplicated ids, raise ValueError; key
    questions with no answer count as wrong and are listed under "missing".
    """
    predicted = _index(answers, "answers", "text")
    truth = _index(key, "key", "answer")
    unknown = [predicted[q]["question_id"] for q in predicted if q not in truth]
    if unknown:
        raise ValueError(f"{len(unknown)} answer(s) for question ids not in the key, e.g. {unknown[:5]}")
    per_cat: dict[str, dict[str, Any]] = {}
    missing, correct_total, chances = [], 0, []
    for qid, row in truth.items():
        cat = row.get("category", "all")
        bucket = per_cat.setdefault(cat, {"correct": 0, "total": 0, "chances": []})
        bucket["total"] += 1
        bucket["chances"].append(_chance(row))
        chances.append(_chance(row))
        if qid not in predicted:
            missing.append(row["question_id"])
            continue
        if normalize(predicted[qid]["text"]) == normalize(row["answer"]):
            bucket["correct"] += 1
            correct_total += 1
    return {
        "overall": _summary(correct_total, len(truth), chances),
        "per_category": {c: _summary(b["correct"], b["total"], b["chances"]) for c, b in sorted(per_cat.items())},
        "missing": missing,
        "n_missing": len(missing),
    }


def format_table(result: dict) -> str:
    """Plain-text table: category, accuracy, correct/total, chance."""
    def line(name: str, s: dict) -> str:
        chance = f"{100 * s['chance']:6.1f}%" if s["chance"] is not None else "    n/a"
        return f"{name:<10} {100 * s['accuracy']:7.2f}% {s['correct']:>5}/{s['total']:<5} {chance}"

    rows = [f"{'category':<10} {'accuracy':>8} {'correct':>11} {'chance':>7}"]
    rows += [line(cat, s) for cat, s in result["per_category"].items()]
    rows.append(line("overall", result["overall"]))
    if result["n_missing"]:
        shown = ", ".join(map(str, result["missing"][:10]))
        rows.append(f"missing answers (counted wrong): {result['n_missing']} [{shown}"
                    f"{', ...' if result['n_missing'] > 10 else ''}]")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: print the table, optionally write the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers-file", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        result = score(read_jsonl(args.answers_file), read_jsonl(args.key_file))
    except ValueError as err:
        sys.exit(f"error scoring {args.answers_file} against {args.key_file}: {err}")
    print(format_table(result))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
