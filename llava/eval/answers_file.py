"""Answers files that survive an interrupted run: one JSON line per answer, appended and flushed as produced.

A re-run reads which questions the file already answers and asks only the others, so a run that stopped (a kill,
an unreadable image) continues where it was. A last line cut off by a kill is dropped, with a notice, and its
question answered again.
"""
from __future__ import annotations

import json
import os
from typing import IO, Iterable, Tuple


def answered_keys(path: str, key_fields: Tuple[str, ...] = ("question_id",)) -> set:
    """The keys (tuples of `key_fields`) of the answers already in `path` (empty when there is no file).

    A last line that is not valid JSON (a write cut off by a kill) is removed from the file; invalid JSON anywhere
    else is an error naming the file and line, since that file was not written by an evaluation run.
    """
    if not os.path.isfile(path):
        return set()
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    complete = lines[:-1] if lines[-1] == b"" else lines
    keys, valid_bytes = set(), 0
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
            keys.add(tuple(record[field] for field in key_fields))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            if number == len(complete):
                print(f"{path}: dropping its unfinished last line (an interrupted write); that question is answered "
                      "again")
                with open(path, "r+b") as handle:
                    handle.truncate(valid_bytes)
                break
            raise ValueError(f"{path}, line {number}: not an answer record with {list(key_fields)}; move the file "
                             "away or pass --overwrite") from None
        valid_bytes += len(line) + 1
    return keys


def open_answers(path: str, overwrite: bool, key_fields: Tuple[str, ...] = ("question_id",)) -> Tuple[IO, set]:
    """(the answers file opened for appending, keys already answered); `overwrite` starts an empty file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    done = set() if overwrite else answered_keys(path, key_fields)
    return open(path, "w" if overwrite else "a"), done


def write_answer(out: IO, record: dict) -> None:
    """Append one answer line (flushed by the caller after each batch)."""
    out.write(json.dumps(record) + "\n")


def skipped_summary(skipped: Iterable[Tuple[object, str]]) -> str:
    """One line naming the questions skipped for an unreadable input (empty when none)."""
    skipped = list(skipped)
    if not skipped:
        return ""
    ids = ", ".join(str(qid) for qid, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
    return (f"{len(skipped)} question(s) skipped (unreadable image): ids {ids}; their answers are missing from the "
            "file: fix the images and run again to answer only those")
