"""Loading pretrained parts quietly, and saying only what calls for action.

LLaVA loads models in shapes their checkpoints were not saved in: CLIP's vision tower out of a full CLIP checkpoint
(the text tower's weights are not needed), a LLaMA checkpoint as a LLaVA model (the projector is created fresh, or
read from its own file right after). Transformers reports every such difference at length; here the expected ones
are checked and dropped, and anything else is named in one warning.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import transformers


@contextlib.contextmanager
def transformers_quiet() -> Iterator[None]:
    """Transformers' own logging at ERROR and no weight-loading progress bars, for the enclosed block."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _unexpected(keys: Sequence[str], expected: Sequence[str]) -> list:
    return sorted(k for k in keys if not any(fragment in k for fragment in expected))


def load_pretrained(cls, path: str, expected_missing: Sequence[str] = (), expected_unused: Sequence[str] = (),
                    **kwargs):
    """`cls.from_pretrained(path, **kwargs)` without transformers' load report. Missing weights whose names contain
    one of `expected_missing` (created here, or loaded by the caller next) and unused checkpoint weights containing
    one of `expected_unused` are fine; any other missing or unused weight is named in a warning."""
    with transformers_quiet():
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    missing = _unexpected(info.get("missing_keys", ()), expected_missing)
    unused = _unexpected(info.get("unexpected_keys", ()), expected_unused)
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unused or mismatched:
        warnings.warn(f"{path}: loading {cls.__name__}: weights newly initialised (not in the checkpoint): "
                      f"{missing[:8]}; checkpoint weights not used: {unused[:8]}; shape mismatches: {mismatched[:4]}",
                      stacklevel=2)
    return model
