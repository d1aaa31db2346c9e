"""DualSpeed counterpart of `llava/train/train_mem.py` (FlashAttention-2 when installed, else SDPA)."""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_patch.train import train

if __name__ == "__main__":
    from llava.train.train_mem import main

    main(train)
