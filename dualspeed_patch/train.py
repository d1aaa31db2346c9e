"""DualSpeed training entry for this repo's `llava`: its training with `DualSpeedArguments` parsed beside LLaVA's
flags, `python dualspeed_patch/train_mem.py <LLaVA flags> --dualspeed True --pruning_ratio 0.9 ...`.

Upstream LLaVA (haotian-liu/LLaVA) has no setup hooks: use `dualspeed_patch.upstream` there.
"""
import warnings
from typing import List

from .callback import DualSpeedCallback
from .config import DualSpeedArguments
from .isolator import ISOLATOR_FILE, locate_isolator_file
from .layer_skip import decoder_layers, num_skipped_layers
from .patch import apply
from .state import attach, unwrap_llava


def _rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def prepare(model, model_args, training_args, ds_args: DualSpeedArguments):
    """Attach DualSpeed to `model` (`state.attach`) the way both training entries do: print the settings, load the
    isolator from `--mode_isolator_path` or beside `--pretrain_mm_mlp_adapter`, check the layer-skip ratio. Returns
    the model's state and whether ZeRO-3 gradient buffers must be cleared each step (see `DualSpeedCallback`)."""
    if _rank0():
        print(f"DualSpeed: {ds_args}", flush=True)
    source = locate_isolator_file(ds_args.mode_isolator_path, model_args.pretrain_mm_mlp_adapter) \
        if ds_args.dualspeed else None
    if source is not None and _rank0():
        print(f"DualSpeed: mode isolator loaded from {source}", flush=True)
    pretraining = bool(getattr(model_args, "tune_mm_mlp_adapter", False))
    # A fresh isolator is the plan in pretraining; in fine-tuning it means the pretrained one was not found.
    state = attach(model, ds_args, seed=training_args.seed, isolator_source=source,
                   announce=_rank0() and not pretraining, pretraining=pretraining)
    if not ds_args.dualspeed:
        return state, False
    if state.recipe is not None and _rank0():
        print(f"DualSpeed: FitPrune recipe {ds_args.fitprune_recipe}: prunes after layers "
              f"{sorted(state.recipe.pruning_layers())}, {state.recipe.visual_tokens} -> {state.recipe.remaining[-1]} "
              "visual tokens", flush=True)
    skipping = float(ds_args.layer_skip_ratio) > 0.0
    if skipping:  # fail now, not in the first fast step, when the ratio asks for more layers than may be skipped
        num_layers = len(decoder_layers(unwrap_llava(model).get_model()))
        n = num_skipped_layers(num_layers, ds_args.layer_skip_ratio)
        if _rank0():
            print(f"DualSpeed: fast steps skip {n} of {num_layers} decoder layers ({ds_args.layer_skip_schedule})",
                  flush=True)
    # Under ZeRO-3 a parameter that gets no gradient in a whole optimizer step is otherwise updated with a stale one:
    # skipped layers, and the mode isolator in a step whose micro-steps are all slow (the student never uses it).
    return state, skipping or state.schedule.slow_ratio > 0.0


def setup_dualspeed(model, model_args, data_args, training_args, ds_args: DualSpeedArguments) -> List:
    """This repo's `llava.train.train` setup hook (its `setup_hooks` protocol: returns the callbacks to add). Its
    trainer saves `mode_isolator.bin` (`register_isolator_file`) and logs the metrics (`pop_metrics`). For
    upstream LLaVA's trainer use `dualspeed_patch.upstream.setup` instead."""
    state, clear = prepare(model, model_args, training_args, ds_args)
    if not ds_args.dualspeed:
        return []
    register_isolator_file()
    if state.text_scorer is not None:
        data_args.carry_instructions = True  # the dataset then hands each sample's instruction to the pruner
    return [DualSpeedCallback(state.schedule, state.metrics, clear_zero3_grads=clear)]


def register_isolator_file() -> None:
    """Have LLaVA's trainer save the isolator as `mode_isolator.bin` wherever it saves the projector (and train it at
    `--mm_projector_lr`, like the projector)."""
    try:
        from llava.train.checkpoint import EXTRA_TRAINABLE_FILES
    except ImportError:  # upstream LLaVA: its trainer writes mm_projector.bin / non_lora_trainables.bin only
        warnings.warn(f"this llava package cannot save extra files, so {ISOLATOR_FILE} is not written: with upstream "
                      "LLaVA use dualspeed_patch.upstream.setup(trainer, model_args, ds_args) (see the README)")
    else:
        EXTRA_TRAINABLE_FILES[ISOLATOR_FILE] = ["mode_isolator"]


def train(attn_implementation=None, argv=None):
    """Apply the patch, then run LLaVA's training with DualSpeed's arguments and setup."""
    apply()
    from llava.train.train import train as llava_train

    return llava_train(attn_implementation, argv=argv, extra_dataclasses=(DualSpeedArguments,),
                       setup_hooks=(setup_dualspeed,))


if __name__ == "__main__":
    from llava.train.train_mem import main

    main(train)
