"""Small process-level helpers shared by training and evaluation."""
import contextlib
import os
from typing import Iterator

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


@contextlib.contextmanager
def torch_init_disabled() -> Iterator[None]:
    """`disable_torch_init` for the enclosed block only: library code (e.g. loading a model for evaluation inside
    a training or test process) must not leave every later `nn.Linear` uninitialised."""
    saved = torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters
    disable_torch_init()
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters = saved


def load_weights_only(path: str | os.PathLike) -> dict:
    """`torch.load(path, weights_only=True)` on the CPU; a file that holds more than tensors (arbitrary pickled
    objects, which weights-only loading refuses to run) is rejected with an error naming it."""
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise pickle.UnpicklingError(f"{path}: refused by weights-only loading (it holds pickled objects, not only "
                                     f"tensors; load only files you wrote): {first}") from None
