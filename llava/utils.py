"""Small process-level helpers shared by training and evaluation."""
import os

import torch


def is_rank0() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def rank0_print(*args) -> None:
    if is_rank0():
        print(*args, flush=True)


def disable_torch_init() -> None:
    """Skip the random init of Linear / LayerNorm when weights are loaded right after (faster model creation)."""
    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)
