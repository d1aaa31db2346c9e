"""Turn LLaVA answers into GQA's prediction file (input of GQA's eval.py and of `llava.eval.eval_gqa`).

    python -m llava.eval.convert_gqa_for_eval --src answers/merge.jsonl --dst gqa/data/testdev_balanced_predictions.json

Writes a JSON list of {"questionId", "prediction"}, the prediction lower-cased without a final period.
"""
from __future__ import annotations

import argparse
from typing import List

from llava.eval.eval_io import index_by, read_jsonl, write_json


def to_predictions(answers: List[dict], source: str = "answers") -> List[dict]:
    """GQA prediction records for LLaVA answer records (duplicate question ids raise ValueError)."""
    index_by(answers, "question_id", source)
    return [{"questionId": str(a["question_id"]), "prediction": str(a["text"]).strip().rstrip(".").lower()}
            for a in answers]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="LLaVA answers (JSON lines)")
    p.add_argument("--dst", required=True, help="GQA predictions (JSON)")
    a = p.parse_args()
    predictions = to_predictions(read_jsonl(a.src, required=("question_id", "text")), a.src)
    write_json(a.dst, predictions)
    print(f"{len(predictions)} predictions written to {a.dst}")


if __name__ == "__main__":
    main()
