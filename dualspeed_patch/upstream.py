"""DualSpeed on upstream LLaVA (github.com/haotian-liu/LLaVA): one setup call on the built trainer.

Upstream's trainer knows nothing of DualSpeed: it saves only the projector (pretraining) or the LoRA adapter and
`non_lora_trainables.bin` (fine-tuning), and logs only its own values. `setup(trainer, model_args, ds_args)` attaches
DualSpeed to `trainer.model` and adds `UpstreamDualSpeedCallback`, which does the rest through the Trainer's
callback events: `mode_isolator.bin` in every `checkpoint-*` (`on_save`) and in `output_dir` (`on_train_end`), and
the `dualspeed/*` loss terms in the trainer's logs (`on_log`). In your copy of upstream's `llava/train/train.py`:

    import dualspeed_patch, dualspeed_patch.upstream
    from dualspeed_patch import DualSpeedArguments
    dualspeed_patch.apply()
    ...
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, DualSpeedArguments))
    model_args, data_args, training_args, ds_args = parser.parse_args_into_dataclasses()
    ...
    trainer = LLaVATrainer(model=model, tokenizer=tokenizer, args=training_args, **data_module)
    dualspeed_patch.upstream.setup(trainer, model_args, ds_args)
    trainer.train()  # ... and upstream's saving code as it is

Called on the trainer, i.e. after upstream's freezing (`model.requires_grad_(False)` in pretraining) and before
`trainer.train()` builds the optimizer (transformers builds it before any `on_train_begin`), so the isolator is
trainable and in the optimizer. `scripts/upstream_train.py` runs upstream's unedited `train()` this way.
"""
import os
import warnings
from contextlib import nullcontext
from typing import Dict, Optional

import torch

from .callback import DualSpeedCallback
from .config import DualSpeedArguments
from .isolator import ISOLATOR_FILE, ISOLATOR_KEY, ModeIsolator
from .metrics import DualSpeedMetrics
from .modes import ModeSchedule
from .train import prepare


class UpstreamDualSpeedCallback(DualSpeedCallback):
    """`DualSpeedCallback` plus what upstream's trainer does not do: save the isolator, log the loss terms, and
    refuse to train a frozen isolator. (This repo's trainer does the first two itself and gets the plain callback.)

    Saving is collective: every rank calls the events, a ZeRO-3 partitioned isolator is gathered on all of them,
    and the process that saves (`args.should_save`) writes the file."""

    def __init__(self, schedule: ModeSchedule, metrics: DualSpeedMetrics, isolator: Optional[ModeIsolator],
                 clear_zero3_grads: bool = False):
        super().__init__(schedule, metrics, clear_zero3_grads=clear_zero3_grads)
        self.isolator = isolator

    def on_train_begin(self, args, state, control, **kwargs):
        if self.isolator is not None and not self.isolator.weight.requires_grad:
            raise RuntimeError("the mode isolator was frozen after dualspeed_patch.upstream.setup(): it would not "
                               "train; call setup() on the built trainer, after any requires_grad_(False)")

    def on_save(self, args, state, control, **kwargs):
        self.save_isolator(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"), args)

    def on_train_end(self, args, state, control, **kwargs):
        self.save_isolator(args.output_dir, args)

    def on_log(self, args, state, control, logs: Optional[Dict[str, float]] = None, **kwargs):
        """Add the loss terms since the last log to `logs`, which every later callback (reporting integrations,
        printer) receives, and to the entry the Trainer has just appended to `state.log_history` (a copy of
        `logs` made before the callbacks run, hence updated here too)."""
        metrics = self.pop_metrics()
        if not metrics or logs is None:
            return
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def save_isolator(self, directory: str, args) -> None:
        """Write the isolator into `directory` (`write_isolator`) from the saving process; collective (gathers a
        ZeRO-3 partitioned isolator on every rank)."""
        if self.isolator is None:
            return
        weight = self.isolator.weight
        with gathered(weight):
            if args.should_save:
                self.write_isolator(weight, directory)

    def write_isolator(self, weight: torch.Tensor, directory: str) -> None:
        """`directory/mode_isolator.bin`: {"model.mode_isolator.weight": [l, hidden]}."""
        os.makedirs(directory, exist_ok=True)
        torch.save({ISOLATOR_KEY: weight.detach().cpu().clone()}, os.path.join(directory, ISOLATOR_FILE))


def gathered(weight: torch.Tensor):
    """The whole parameter on every rank while inside (ZeRO-3 partitions it; collective), else nothing to do."""
    if not hasattr(weight, "ds_id"):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)


def setup(trainer, model_args, ds_args: DualSpeedArguments) -> Optional[UpstreamDualSpeedCallback]:
    """Attach DualSpeed to `trainer.model` and add the callback that saves and logs it (first in the trainer's
    callback list, so reporting integrations see the `dualspeed/*` values). Returns the callback, or None when
    `--dualspeed` is off. Call it on the built trainer, before `trainer.train()`.

    `model_args` gives `pretrain_mm_mlp_adapter` (the isolator is loaded from `mode_isolator.bin` beside it, or from
    `ds_args.mode_isolator_path`) and `tune_mm_mlp_adapter` (pretraining: fast mode only)."""
    if not hasattr(trainer, "callback_handler"):
        raise TypeError(f"setup() takes the built transformers Trainer (got {type(trainer).__name__}): call it after "
                        "`trainer = LLaVATrainer(...)`, before `trainer.train()`")
    if getattr(trainer, "optimizer", None) is not None:
        raise RuntimeError("the trainer already has an optimizer, which would not include the mode isolator: "
                           "call setup() before trainer.train() and before creating an optimizer")
    state, clear = prepare(trainer.model, model_args, trainer.args, ds_args)
    if not ds_args.dualspeed:
        return None
    if state.text_scorer is not None:
        warnings.warn(f"--vtp_method {ds_args.vtp_method}: upstream's dataset does not pass each sample's "
                      "instruction to the pruner, so it scores without the instruction text")
    callback = UpstreamDualSpeedCallback(state.schedule, state.metrics, state.isolator, clear_zero3_grads=clear)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
