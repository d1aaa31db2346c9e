"""Checks a training script runs once, before it launches any process: paths and hardware.

A missing data file, a model that is neither local nor reachable, or bf16 / tf32 asked of a machine without a GPU
otherwise surface in every rank, after minutes of loading (or after the hub client's retries). Each problem here
is one line; the exit status is 2 when there is any.

    python -m llava.train.preflight --model M --vision-tower V --data-path D --image-folder I \
        [--pretrain-dir P] [--bf16 True] [--tf32 True]
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Optional

HUB_HOST = ("huggingface.co", 443)


def _true(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def has_gpu() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (never, with HF_HUB_OFFLINE set)."""
    if _true(os.environ.get("HF_HUB_OFFLINE", "0")):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def in_hub_cache(repo_id: str) -> bool:
    """Whether `repo_id`'s config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def model_problem(variable: str, name: str, reachable: Optional[bool]) -> tuple[Optional[str], Optional[bool]]:
    """(a one-line problem or None, the hub's reachability once it has been probed) for a model path or hub id."""
    if os.path.isdir(name):
        return None, reachable
    if os.path.exists(name) or name.startswith((".", "/")) or name.count("/") != 1:
        return f"{variable}={name}: no such model directory", reachable
    if in_hub_cache(name):
        return None, reachable
    reachable = hub_reachable() if reachable is None else reachable
    if not reachable:
        return (f"{variable}={name} is not a local directory, not in the Hugging Face cache, and the hub cannot be "
                "reached: download it first or point the variable at a local copy"), reachable
    return None, reachable


def problems(args: argparse.Namespace, gpu: Optional[bool] = None) -> list[str]:
    """Every problem found, one line each."""
    found = []
    if not os.path.isfile(args.data_path):
        found.append(f"DATA_PATH={args.data_path}: no such file")
    if not os.path.isdir(args.image_folder):
        found.append(f"IMAGE_FOLDER={args.image_folder}: no such directory")
    if args.pretrain_dir is not None and not os.path.isfile(os.path.join(args.pretrain_dir, "mm_projector.bin")):
        found.append(f"PRETRAIN_DIR={args.pretrain_dir}: no mm_projector.bin there (run the pretraining stage first)")
    reachable = None
    for variable, name in (("MODEL", args.model), ("VISION_TOWER", args.vision_tower)):
        problem, reachable = model_problem(variable, name, reachable)
        if problem:
            found.append(problem)
    asked = [flag for flag, value in (("BF16", args.bf16), ("TF32", args.tf32)) if _true(value)]
    if asked and not (has_gpu() if gpu is None else gpu):
        found.append(f"{' and '.join(f + '=True' for f in asked)}: needs a CUDA GPU and this machine has none; set "
                     f"{' '.join(f + '=False' for f in asked)}")
    return found


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--vision-tower", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--image-folder", required=True)
    p.add_argument("--pretrain-dir", default=None)
    p.add_argument("--bf16", default="False")
    p.add_argument("--tf32", default="False")
    found = problems(p.parse_args(argv))
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
