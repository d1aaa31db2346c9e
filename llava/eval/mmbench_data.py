"""Reading MMBench / MMBench-CN question files (.tsv: index, question, hint, A..D, answer, category, image (base64),
...). Shared by the MMBench runner, its converter and its local scorer.

The official files hold circular copies of each question (choices rotated) as further rows whose index is the
original's plus a multiple of 1,000,000; `circular_group` maps a row to its original question.
"""
from __future__ import annotations

import base64
import csv
import io
import math
from typing import List

OPTION_COLUMNS = ("A", "B", "C", "D", "E", "F", "G", "H", "I")
CIRCULAR_OFFSET = 1_000_000


def is_blank(value: object) -> bool:
    """True for an empty cell: None, NaN, "" or "nan" (how pandas-written files mark a missing option or hint)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip() == "" or str(value).strip().lower() == "nan"


def read_tsv(path: str) -> List[dict]:
    """Rows of an MMBench .tsv as dicts of strings; the header must have "index", "question" and option "A"."""
    csv.field_size_limit(2**31 - 1)  # images are base64 strings of hundreds of kB
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in ("index", "question", "A") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing} (is it an MMBench .tsv?)")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no question rows")
    for i, row in enumerate(rows, 2):
        if None in row:
            raise ValueError(f"{path}:{i}: more cells than header columns")
    return rows


def row_options(row: dict) -> List[str]:
    """The row's option texts in letter order, up to the first empty option column."""
    options = []
    for col in OPTION_COLUMNS:
        if col not in row or is_blank(row[col]):
            break
        options.append(str(row[col]))
    return options


def circular_group(index: object) -> int:
    """The original question a (possibly circular-copy) row index belongs to."""
    return int(float(index)) % CIRCULAR_OFFSET


def decode_image(b64: str):
    """The row's image (base64 cell) as an RGB PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
