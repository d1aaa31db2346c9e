"""Reading the chosen option letter out of a multiple-choice answer (ScienceQA, MMBench, SEED-Bench)."""
from __future__ import annotations

import re
from typing import Optional, Sequence

_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:[.):]|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-Z])\b")


def parse_choice(text: str, letters: Sequence[str], options: Sequence[str] = ()) -> Optional[str]:
    """The letter in `letters` the answer picks, or None when it picks none.

    Accepted: the bare letter ("B"), a leading letter with a mark ("B.", "(B)", "B) cat", "B. cat"; not "A cat",
    which reads as an article), "The answer is B.", or,
    when `options` (texts in letter order) are given, exactly one option's text ("cat", case and a final period
    ignored).
    """
    text = str(text).strip()
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        m = pattern.search(text)
        if m and m.group(1) in letters:
            return m.group(1)
    wanted = text.rstrip(".").strip().casefold()
    hits = [letter for letter, option in zip(letters, options) if str(option).strip().casefold() == wanted]
    return hits[0] if len(hits) == 1 else None
