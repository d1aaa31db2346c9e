"""DualSpeed counterpart of this repo's `llava/train/train_mem.py` (FlashAttention-2 when installed, else SDPA).

It runs THIS repo's `llava`; for upstream LLaVA use `scripts/upstream_train.py` or the README's upstream recipe.
"""
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualspeed_patch.train import train

if __name__ == "__main__":
    from llava.train.train_mem import main

    main(train)
