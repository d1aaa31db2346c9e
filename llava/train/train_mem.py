"""Upstream's memory-efficient entry point: the same training, with FlashAttention-2 when it is installed.

A data problem (bad JSON, malformed sample, missing image, tokenization mismatch) ends the run with one line naming
the file and sample instead of a traceback; so does a bad flag value or a file a flag names that does not exist
(`error: ...`, exit status 2). Data files, images and such files are checked before the model loads.
"""
import sys
import warnings
from typing import Callable

from llava.train.arguments import ArgumentError
from llava.train.data import DataError
from llava.train.distributed import shutdown_process_group
from llava.train.train import train


def main(train_fn: Callable[[], object] = train) -> None:
    """Run one training stage as a launched process: a data error exits with one line, a finished run closes
    the process group (a method built on LLaVA passes its own `train`)."""
    # DeepSpeed's collectives use torch.distributed names torch deprecates: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    try:
        train_fn()
    except DataError as exc:
        sys.exit(f"data error: {str(exc).strip().splitlines()[-1]}")
    except ArgumentError as exc:
        print(f"error: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        sys.exit(2)
    shutdown_process_group()


if __name__ == "__main__":
    main()
