"""Multi-process training on machines without a GPU (gloo), with the same launch commands as on GPUs.

On a GPU-less machine accelerate only forms a multi-process world (and transformers only accepts bf16) when
`use_cpu` is set, and the process group must use gloo. Both flags are added here, only when no GPU is present,
so GPU runs are untouched and users never edit library code.
"""
import os
from typing import List

import torch


def cpu_training_argv(argv: List[str]) -> List[str]:
    """argv plus `--use_cpu True` (and `--ddp_backend gloo` for several processes) when no GPU is present."""
    if torch.cuda.is_available():
        return list(argv)
    extra = []
    if "--use_cpu" not in argv:
        extra += ["--use_cpu", "True"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if "--ddp_backend" not in argv:
            extra += ["--ddp_backend", "gloo"]
    return list(argv) + extra


def init_cpu_deepspeed_comm(training_args) -> None:
    """On a GPU-less machine, hand the gloo process group to DeepSpeed before ZeRO-3 partitions the model.

    accelerate's CPU path forms the torch process group but never initialises DeepSpeed's communication layer,
    which `deepspeed.zero.Init` (used by `from_pretrained` under ZeRO-3) reads the world size from.
    """
    if torch.cuda.is_available() or not training_args.deepspeed or training_args.world_size <= 1:
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")


def shutdown_process_group() -> None:
    """Tear the process group down once a run has finished on every rank.

    Left to interpreter exit, gloo's background threads can be destroyed while still joinable, and a rank that
    has already saved everything aborts with `terminate called without an active exception` (SIGABRT), which
    the launcher reports as a failed run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
