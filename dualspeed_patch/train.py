"""DualSpeed training entry: LLaVA's training with `DualSpeedArguments` parsed beside LLaVA's flags.

`python dualspeed_patch/train_mem.py <LLaVA flags> --dualspeed True --pruning_ratio 0.9 ...`
"""
import warnings
from typing import List

from .callback import DualSpeedCallback, DualSpeedMetrics
from .config import DualSpeedArguments
from .fitprune import is_fitprune, recipe_for
from .isolator import ISOLATOR_FILE, attach_isolator, locate_isolator_file
from .layer_skip import decoder_layers, num_skipped_layers
from .modes import ModeSchedule
from .patch import apply


def _rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap_llava(model):
    """The LLaVA causal LM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def setup_dualspeed(model, model_args, data_args, training_args, ds_args: DualSpeedArguments) -> List:
    """Attach the isolator, the mode schedule and the metrics to the model; record the settings in its config."""
    llava = unwrap_llava(model)
    llava.config.update(ds_args.to_config_dict())
    llava._dualspeed_args = ds_args
    if _rank0():
        print(f"DualSpeed: {ds_args}", flush=True)
    if not ds_args.dualspeed:
        return []
    source = locate_isolator_file(ds_args.mode_isolator_path, model_args.pretrain_mm_mlp_adapter)
    if source is not None and _rank0():
        print(f"DualSpeed: mode isolator loaded from {source}", flush=True)
    attach_isolator(llava, ds_args.mode_isolator_len, source, announce=_rank0())

    try:
        from llava.train.checkpoint import EXTRA_TRAINABLE_FILES
    except ImportError:  # upstream LLaVA: its trainer writes mm_projector.bin / non_lora_trainables.bin only
        warnings.warn(f"this llava package cannot save extra files: write {ISOLATOR_FILE} yourself "
                      "(non_lora_trainables.bin still holds the isolator in LoRA runs)")
    else:
        EXTRA_TRAINABLE_FILES[ISOLATOR_FILE] = ["mode_isolator"]
    if is_fitprune(ds_args.vtp_method):  # load and check the recipe now, not in the first fast step
        recipe = recipe_for(llava)
        if _rank0():
            print(f"DualSpeed: FitPrune recipe {ds_args.fitprune_recipe}: prunes after layers "
                  f"{sorted(recipe.pruning_layers())}, {recipe.visual_tokens} -> {recipe.remaining[-1]} visual tokens",
                  flush=True)
    else:
        attach_pruner_context(llava, data_args, ds_args)
    pretraining = bool(getattr(model_args, "tune_mm_mlp_adapter", False))
    slow_ratio = ds_args.slow_mode_ratio if (not pretraining or ds_args.slow_mode_in_pretraining) else 0.0
    schedule = ModeSchedule(training_args.seed, slow_ratio)
    metrics = DualSpeedMetrics()
    llava._dualspeed_schedule, llava._dualspeed_metrics = schedule, metrics
    skipping = float(ds_args.layer_skip_ratio) > 0.0
    if skipping:  # fail now, not in the first fast step, when the ratio asks for more layers than may be skipped
        num_layers = len(decoder_layers(llava.get_model()))
        n = num_skipped_layers(num_layers, ds_args.layer_skip_ratio)
        if _rank0():
            print(f"DualSpeed: fast steps skip {n} of {num_layers} decoder layers ({ds_args.layer_skip_schedule})",
                  flush=True)
    # Under ZeRO-3 a parameter that gets no gradient in a whole optimizer step is otherwise updated with a stale one:
    # skipped layers, and the mode isolator in a step whose micro-steps are all slow (the student never uses it).
    clear = skipping or slow_ratio > 0.0
    return [DualSpeedCallback(schedule, metrics, clear_zero3_grads=clear)]


def attach_pruner_context(llava, data_args, ds_args: DualSpeedArguments) -> None:
    """Give instruction-aware pruners what they read: the instruction text per sample and a CLIP text scorer."""
    from .pruners import get_vtp_method

    if "relevance" not in getattr(get_vtp_method(ds_args.vtp_method), "context_keys", ()):
        return
    from .vision_context import ClipTextScorer

    tower = llava.get_vision_tower()
    scorer = ClipTextScorer(tower.vision_tower_name).to(device=tower.device, dtype=tower.dtype)
    llava.__dict__["_dualspeed_text_scorer"] = scorer  # a plain attribute: outside the state dict, optimizer and ZeRO
    data_args.carry_instructions = True


def train(attn_implementation=None, argv=None):
    """Apply the patch, then run LLaVA's training with DualSpeed's arguments and setup."""
    apply()
    from llava.train.train import train as llava_train

    return llava_train(attn_implementation, argv=argv, extra_dataclasses=(DualSpeedArguments,),
                       setup_hooks=(setup_dualspeed,))


if __name__ == "__main__":
    from llava.train.train_mem import main

    main(train)
