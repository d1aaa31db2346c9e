"""Upstream's memory-efficient entry point: the same training, with FlashAttention-2 when it is installed.

A data problem (bad JSON, malformed sample, missing image, tokenization mismatch) ends the run with one line naming
the file and sample instead of a traceback.
"""
import sys

from llava.train.data import DataError
from llava.train.distributed import shutdown_process_group
from llava.train.train import train

if __name__ == "__main__":
    try:
        train()
        shutdown_process_group()
    except DataError as exc:
        sys.exit(f"data error: {str(exc).strip().splitlines()[-1]}")
