"""Which checkpoint a run resumes from, and how a checkpoint says it was written completely.

A kill during a checkpoint save leaves a `checkpoint-<step>` folder with only some of its files. Every checkpoint
this trainer writes ends with a `COMPLETE` file, written once every process has finished its part; automatic
resume takes the newest checkpoint that has it and names the partial ones it passes over.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

logger = logging.getLogger(__name__)


def mark_complete(checkpoint_dir: str | Path) -> None:
    """Record that `checkpoint_dir` holds everything a resume needs (call after every process has saved)."""
    Path(checkpoint_dir, COMPLETE_MARKER).write_text("written completely\n")


def is_complete(checkpoint_dir: str | Path) -> bool:
    """Whether `checkpoint_dir` was written completely (its `COMPLETE` file exists)."""
    return Path(checkpoint_dir, COMPLETE_MARKER).is_file()


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The newest complete checkpoint of `output_dir`, or None; partial ones are passed over with a warning.

    Folders written before checkpoints carried the marker count as complete when they hold `trainer_state.json`
    and none of the run's checkpoints has a marker.
    """
    found = checkpoints(output_dir)
    marked = any(is_complete(p) for p in found)
    for path in reversed(found):
        if is_complete(path) or (not marked and (path / TRAINER_STATE_FILE).is_file()):
            return path
        logger.warning("not resuming from %s: it was not written completely (no %s); an interrupted save?",
                       path, COMPLETE_MARKER if marked else TRAINER_STATE_FILE)
    return None


def resume_target(output_dir: str | Path, requested: Optional[str | bool]) -> Optional[str]:
    """What to pass to `Trainer.train(resume_from_checkpoint=...)`.

    None (the flag not given): the newest complete checkpoint of `output_dir`, if any. An explicit folder must be
    complete; an explicit True means "the newest complete one" and fails when there is none.
    """
    if requested is None or requested is True or requested == "True":
        latest = latest_complete_checkpoint(output_dir)
        if latest is None and requested is not None:
            raise FileNotFoundError(f"--resume_from_checkpoint True: no complete checkpoint in {output_dir}")
        return None if latest is None else str(latest)
    if requested is False or requested == "False":
        return None
    path = Path(requested)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    if not (is_complete(path) or (path / TRAINER_STATE_FILE).is_file()):
        raise ValueError(f"--resume_from_checkpoint {path}: the checkpoint was not written completely (no "
                         f"{COMPLETE_MARKER}, no {TRAINER_STATE_FILE}); resume from an earlier one")
    return str(path)
