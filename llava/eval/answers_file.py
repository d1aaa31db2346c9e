"""Answers files that survive an interrupted run: one JSON line per answer, appended and flushed as produced.

A re-run reads which questions the file already answers and asks only the others, so a run that stopped (a kill,
an unreadable image) continues where it was. A last line cut off by a kill is dropped, with a notice, and its
question answered again.
"""
from __future__ import annotations

import json
import os
import sys
from typing import IO, Any, Callable, Iterable, List, Optional, Set, Tuple

from tqdm import tqdm


def answered_keys(path: str, key_fields: Tuple[str, ...] = ("question_id",)) -> Set[tuple]:
    """The keys (tuples of `key_fields`) of the answers already in `path` (empty when there is no file).

    A last line that is not valid JSON (a write cut off by a kill) is removed by rewriting the file without it, with
    a one-line notice; a complete last record missing only its newline gets one. Blank lines are ignored; invalid
    JSON anywhere else is an error naming the file and line, since that file was not written by an evaluation run.
    """
    if not os.path.isfile(path):
        return set()
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    complete = lines[:-1] if lines[-1] == b"" else lines
    keys: Set[tuple] = set()
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            keys.add(tuple(record[field] for field in key_fields))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            if number == len(complete):
                print(f"{path}: dropping its unfinished last line (an interrupted write); that question is answered "
                      "again")
                _rewrite(path, b"".join(kept + b"\n" for kept in complete[:-1]))
                return keys
            raise ValueError(f"{path}, line {number}: not an answer record with {list(key_fields)}; move the file "
                             "away or pass --overwrite") from None
    if data and not data.endswith(b"\n"):
        with open(path, "ab") as handle:  # the kill came between a record and its newline
            handle.write(b"\n")
    return keys


def _rewrite(path: str, data: bytes) -> None:
    """Replace the file's contents with `data` (through a temporary file, so a second kill cannot lose it)."""
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def open_answers(path: str, overwrite: bool, key_fields: Tuple[str, ...] = ("question_id",)
                 ) -> Tuple[IO, Set[tuple]]:
    """(the answers file opened for appending, keys already answered); `overwrite` starts an empty file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    done = set() if overwrite else answered_keys(path, key_fields)
    return open(path, "w" if overwrite else "a", encoding="utf-8"), done


def resume_notice(done_count: int, total: int, path: str) -> str:
    """The one line a resumed run prints: how many of its questions the answers file already holds."""
    return f"resuming: {done_count} of {total} questions already answered in {path}"


def write_answer(out: IO, record: dict) -> None:
    """Append one answer line and flush it, so a kill loses at most the line being written."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def skipped_summary(skipped: Iterable[Tuple[object, str]]) -> str:
    """One line counting and naming the questions skipped for an unreadable image (empty when none)."""
    pairs: List[Tuple[object, str]] = list(skipped)
    if not pairs:
        return ""
    ids = ", ".join(str(qid) for qid, _ in pairs[:10]) + (" ..." if len(pairs) > 10 else "")
    return (f"{len(pairs)} question(s) skipped (unreadable image): ids {ids}; their answers are missing from the "
            "file: fix the images and run again to answer only those")


def load_or_skip(load: Callable[[], Any], question_id: object, skipped: List[Tuple[object, str]]) -> Optional[Any]:
    """`load()` (a question's image), or None after a one-line warning naming the question and the file when the
    image is missing or unreadable; the skipped (question_id, reason) pair is appended to `skipped`."""
    try:
        return load()
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        if not reason.startswith(f"question {question_id}"):
            reason = f"question {question_id}: cannot read image: {reason}"
        tqdm.write(f"warning: skipped: {reason}", file=sys.stderr)  # on its own line, under a progress bar
        skipped.append((question_id, reason))
        return None
