"""Indexing MMBench answer files: one record per (question index, round); `--all-rounds` runs add rounds 1..n-1
(choices rotated by the round number)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from llava.eval.eval_io import read_jsonl


def read_mmbench_answers(path: str) -> Dict[Tuple[int, int], dict]:
    """{(question index, round): answer record}; a repeated pair raises ValueError naming the file."""
    indexed: Dict[Tuple[int, int], dict] = {}
    for row in read_jsonl(path, required=("question_id", "text")):
        key = (int(float(row["question_id"])), int(row.get("round_id", 0)))
        if key in indexed:
            raise ValueError(f"{path}: question {key[0]} round {key[1]} is answered more than once")
        indexed[key] = row
    return indexed


def rounds_of(answers: Dict[Tuple[int, int], dict], index: int) -> List[int]:
    """The rounds answered for one question index, ascending."""
    return sorted(r for (i, r) in answers if i == index)
