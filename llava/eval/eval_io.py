"""File reading shared by the benchmark scorers: JSON / JSON-lines with errors that name the file, line and field.

Scorers must never lose a question quietly, so indexing refuses duplicate ids and `report_missing` prints how many
questions had no prediction (they are scored as wrong).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Sequence


def read_json(path: str) -> Any:
    """Parse a whole JSON file; a ValueError names the file when it is not valid JSON."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: str, required: Sequence[str] = ()) -> List[dict]:
    """Objects of a JSON-lines file (blank lines skipped); each must hold the `required` fields."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {missing}")
            rows.append(row)
    return rows


def read_tsv(path: str, n_fields: int, layout: str) -> List[List[str]]:
    """Tab-separated rows of `path` (blank lines skipped); a row without exactly `n_fields` fields raises ValueError
    naming the file, line and the expected `layout` (e.g. "question<TAB>answer")."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != n_fields:
                raise ValueError(f"{path}:{line_no}: expected {layout}, got {line.strip()!r}")
            rows.append(parts)
    return rows


def index_by(rows: Iterable[dict], key: str, source: str) -> Dict[str, dict]:
    """Rows keyed by `str(row[key])`; a row without the key or a repeated key raises ValueError naming `source`."""
    indexed: Dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        if key not in row:
            raise ValueError(f"{source}: entry {i} has no {key!r} field")
        k = str(row[key])
        if k in indexed:
            raise ValueError(f"{source}: {key} {k!r} appears more than once (merged the same chunk twice?)")
        indexed[k] = row
    return indexed


def write_json(path: str, obj: Any) -> None:
    """Write `obj` as JSON, creating the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """Write one JSON object per line, creating the parent folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def report_missing(what: str, missing_ids: Sequence[str], total: int, consequence: str = "scored as wrong") -> None:
    """Print how many of `total` questions had no prediction (and the first few ids) so a gap is never silent."""
    if not missing_ids:
        return
    shown = ", ".join(str(m) for m in list(missing_ids)[:5])
    more = " ..." if len(missing_ids) > 5 else ""
    print(f"WARNING: {len(missing_ids)} of {total} {what} have no prediction ({consequence}): {shown}{more}")
