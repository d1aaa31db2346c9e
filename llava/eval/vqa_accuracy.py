"""VQA soft accuracy (VQAv2, TextVQA): credit for an answer grows with the number of humans who gave it.

Against a set of n human answers (10 in both benchmarks), a prediction scores, for each of the n ways of leaving one
human out, min(#remaining humans who gave that answer / 3, 1); its accuracy is the mean over those n subsets.
Answers are compared after `normalize_answer`.
"""
from __future__ import annotations

from typing import Sequence

from llava.eval.vqa_normalize import normalize_answer


def soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one prediction; e.g. 2 of 10 humans agreeing -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6."""
    n = len(human_answers)
    if n < 2:
        raise ValueError(f"soft accuracy needs at least 2 human answers (leave-one-out), got {n}")
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == pred for a in human_answers)
    # Leaving out one of the matching humans leaves matches - 1 agreeing; leaving out any other leaves matches.
    left_out_match = matches * min((matches - 1) / 3, 1.0)
    left_out_other = (n - matches) * min(matches / 3, 1.0)
    return (left_out_match + left_out_other) / n
