"""Run upstream LLaVA's own, unedited `llava.train.train.train()` with DualSpeed (the README's upstream recipe,
done from outside instead of by editing upstream's train.py).

    PYTHONPATH=<upstream LLaVA tree> torchrun --nproc_per_node N scripts/upstream_train.py <upstream's flags> \\
        --dualspeed True --pruning_ratio 0.9 ...

Upstream `llava` must be importable (PYTHONPATH or `pip install -e`); this repo is appended to sys.path after it,
only so that `dualspeed_patch` is found (its own `llava/` never shadows upstream's: checked). What it does, each
step visible here:
  1. `DualSpeedArguments` flags are parsed and removed from the command line; upstream parses the rest.
  2. `dualspeed_patch.apply()` patches upstream's model classes.
  3. upstream's train module gets a `LLaVATrainer` subclass whose `__init__` ends with the one setup call,
     `dualspeed_patch.upstream.setup(trainer, model_args, ds_args)` (the only change to upstream's flow).
  4. On a machine without a GPU: `--use_cpu True`, and for several processes `--ddp_backend gloo` and, with
     `--deepspeed`, DeepSpeed's gloo process group before upstream builds the model (ZeRO-3 partitions in
     `from_pretrained`) plus a shim for accelerate 0.21, which supports DeepSpeed on CUDA only.
  5. upstream's `train()` runs (attention: `--attn_implementation`, default flash_attention_2 on a GPU as upstream's
     train_mem.py, else sdpa); the process group is torn down after it on every rank.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_flags(argv: list) -> list:
    """argv plus the flags a GPU-less machine needs (the same ones this repo's `llava.train.distributed` adds)."""
    import torch

    if torch.cuda.is_available():
        return argv
    extra = [] if "--use_cpu" in argv else ["--use_cpu", "True"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if "--ddp_backend" not in argv:
            extra += ["--ddp_backend", "gloo"]
        if "--deepspeed" in argv:
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")
            _accelerate_deepspeed_on_cpu()
    return argv + extra


def _accelerate_deepspeed_on_cpu() -> None:
    """accelerate 0.21 (upstream's pin) runs DeepSpeed on CUDA only: on CPU its AcceleratorState keeps the multi-CPU
    type beside the DeepSpeed plugin and leaves `use_ipex` unset (AttributeError in `prepare`). Mark that state as
    DeepSpeed, as later accelerate versions do. GPU-less machines only (tests); a no-op where accelerate does it."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if getattr(self, "deepspeed_plugin", None) is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
        if not hasattr(self, "use_ipex"):
            self.use_ipex = False

    AcceleratorState.__init__ = __init__


def _pop_flag(argv: list, flag: str, default: str) -> tuple:
    if flag not in argv:
        return argv, default
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:], argv[i + 1]


def main() -> None:
    import llava.train.train as upstream

    if REPO in Path(upstream.__file__).resolve().parents:
        raise SystemExit(f"imported this repo's llava ({upstream.__file__}), not upstream's: put the upstream LLaVA "
                         "tree on PYTHONPATH (this script is for upstream LLaVA; this repo's entry is "
                         "dualspeed_patch/train_mem.py)")
    sys.path.append(str(REPO))
    import torch
    import transformers

    import dualspeed_patch
    import dualspeed_patch.upstream
    from dualspeed_patch import DualSpeedArguments

    argv, attn = _pop_flag(sys.argv[1:], "--attn_implementation",
                           "flash_attention_2" if torch.cuda.is_available() else "sdpa")
    parser = transformers.HfArgumentParser(DualSpeedArguments, allow_abbrev=False)
    ds_args, argv = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    model_args, _ = transformers.HfArgumentParser(upstream.ModelArguments, allow_abbrev=False) \
        .parse_args_into_dataclasses(args=argv, return_remaining_strings=True)  # read only: upstream parses again
    sys.argv[1:] = _cpu_flags(argv)
    dualspeed_patch.apply()

    class DualSpeedLLaVATrainer(upstream.LLaVATrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            dualspeed_patch.upstream.setup(self, model_args, ds_args)

    upstream.LLaVATrainer = DualSpeedLLaVATrainer
    upstream.train(attn_implementation=attn)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # gloo aborts at exit if torn down by the interpreter on a finished rank
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
