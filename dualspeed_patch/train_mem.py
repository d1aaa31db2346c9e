"""DualSpeed counterpart of `llava/train/train_mem.py` (FlashAttention-2 when installed, else SDPA)."""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_patch.train import train

if __name__ == "__main__":
    from llava.train.data import DataError
    from llava.train.distributed import shutdown_process_group

    try:
        train()
        shutdown_process_group()
    except DataError as exc:
        sys.exit(f"data error: {str(exc).strip().splitlines()[-1]}")
