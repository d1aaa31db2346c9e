"""POPE scoring: reading a yes/no out of a free-form answer, and the binary metrics POPE reports.

"yes" is the positive class. A question without a prediction is counted as answered wrongly: it is in every
denominator (accuracy, yes-ratio), a missing answer to a "yes" question is a false negative, and it never counts
as a "yes".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence


def parse_yes_no(text: str) -> str:
    """'no' when the first sentence has the word no / not (commas ignored), else 'yes' (LLaVA's POPE rule)."""
    first_sentence = str(text).split(".")[0].replace(",", "")
    words = {w.lower() for w in first_sentence.split()}
    return "no" if words & {"no", "not"} else "yes"


@dataclass
class PopeCounts:
    """Confusion counts over one POPE split (positive = label 'yes'); `missing_yes/no` have no prediction."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    missing_yes: int = 0
    missing_no: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.missing_yes + self.missing_no


def count_predictions(predictions: Sequence[Optional[str]], labels: Sequence[str]) -> PopeCounts:
    """Confusion counts of parsed predictions ('yes' / 'no' / None for missing) against labels ('yes' / 'no')."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    c = PopeCounts()
    for i, (pred, label) in enumerate(zip(predictions, labels)):
        if label not in ("yes", "no"):
            raise ValueError(f"label {i} is {label!r}; POPE labels are 'yes' or 'no'")
        if pred is None:
            c.missing_yes += label == "yes"
            c.missing_no += label == "no"
        elif pred not in ("yes", "no"):
            raise ValueError(f"prediction {i} is {pred!r}; parse it with parse_yes_no first")
        elif pred == "yes":
            c.tp += label == "yes"
            c.fp += label == "no"
        else:
            c.tn += label == "no"
            c.fn += label == "yes"
    return c


def pope_metrics(c: PopeCounts) -> Dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (fractions in [0, 1]; 0 where a denominator is 0)."""
    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision = ratio(c.tp, c.tp + c.fp)
    recall = ratio(c.tp, c.tp + c.fn + c.missing_yes)
    return {
        "accuracy": ratio(c.tp + c.tn, c.total),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(c.tp + c.fp, c.total),
    }
