"""Pruned inference as an evaluation option (the paper's "pruned inference", with or without the mode isolator).

An evaluation extension of `llava.eval` (entry point `llava.eval_extensions: dualspeed`), so every evaluation script
takes `--pruning-ratio`, `--vtp-method` and `--use-mode-isolator`. Off by default: without `--pruning-ratio`
evaluation is plain LLaVA (full visual tokens, no isolator) and the DualSpeed patch is not even applied. With it,
each image's visual tokens are pruned to `K = kept_tokens(N, p)` by the chosen plug-in ("pruned" visual mode);
`--use-mode-isolator` also prefixes the checkpoint's trained mode isolator ("fast" visual mode, the input
DualSpeed's fast mode trains on).
"""
import argparse
import contextlib
import dataclasses
from typing import Optional

import torch

from .isolator import ISOLATOR_KEY, attach_isolator, get_isolator
from .pruners import available_pruners, has_pruner

ISOLATOR_WEIGHT = ISOLATOR_KEY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--pruning-ratio`, `--vtp-method` and `--use-mode-isolator` to an evaluation parser."""
    group = parser.add_argument_group("pruned inference (DualSpeed)")
    group.add_argument("--pruning-ratio", type=float, default=None,
                       help="Drop this fraction of each image's visual tokens, in [0, 1) (default: off, plain LLaVA).")
    group.add_argument("--vtp-method", type=_pruner_name, default="divprune",
                       help=f"Visual-token pruner for --pruning-ratio; one of: {', '.join(available_pruners())}.")
    group.add_argument("--use-mode-isolator", action="store_true",
                       help="Prefix the checkpoint's trained mode isolator to the kept tokens (needs --pruning-ratio).")


add_pruning_arguments = add_arguments


def _pruner_name(value: str) -> str:
    """argparse type of --vtp-method: a name registered as a pruner (checked at parse time)."""
    if not has_pruner(value):
        raise argparse.ArgumentTypeError(f"unknown pruner {value!r}; known: {', '.join(available_pruners())}")
    return value.strip().lower()


def _ratio(args: argparse.Namespace) -> Optional[float]:
    ratio = getattr(args, "pruning_ratio", None)
    if ratio is None and getattr(args, "use_mode_isolator", False):
        raise ValueError("--use-mode-isolator needs --pruning-ratio (the isolator prefixes pruned tokens only)")
    return ratio


def prepare(model, args: argparse.Namespace) -> None:
    """Set `model` up for the evaluation mode `args` asks for (nothing when pruning is off).

    Applies the DualSpeed patch, stores the ratio and pruner in the model's DualSpeed state, attaches the trained
    isolator if asked (read from `args.model_path`; a clear error when the checkpoint has none) and CLIP's text
    tower for instruction-aware pruners. Idempotent.
    """
    ratio = _ratio(args)
    if ratio is None:
        return
    import dualspeed_patch
    from .state import state_of, text_scorer_for

    dualspeed_patch.apply()
    state = state_of(model)
    method = _pruner_name(getattr(args, "vtp_method", "divprune"))
    state.args = dataclasses.replace(state.args, pruning_ratio=float(ratio), vtp_method=method)
    if getattr(args, "use_mode_isolator", False):
        attach_trained_isolator(model, getattr(args, "model_path", None))
    if state.text_scorer is None:
        state.text_scorer = text_scorer_for(model, state.method)


def context(model, args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The context to run generation in: `visual_mode(model, PRUNED | FAST)` when pruning is on, else a no-op."""
    if _ratio(args) is None:
        return contextlib.nullcontext()
    from .state import FAST, PRUNED, visual_mode

    prepare(model, args)
    return visual_mode(model, FAST if getattr(args, "use_mode_isolator", False) else PRUNED)


def on_batch(model, args: argparse.Namespace, instructions: Optional[list]) -> None:
    """Hand the batch's bare questions to instruction-aware pruners."""
    if getattr(args, "pruning_ratio", None) is not None:
        from .state import state_of

        state_of(model).instructions = instructions


def setup_pruned_inference(model, args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """`prepare` then `context`: set the model up and return the context to run generation in."""
    prepare(model, args)
    return context(model, args)


def attach_trained_isolator(model, model_path: Optional[str]) -> torch.Tensor:
    """Give `model` the mode isolator trained with its checkpoint (`mode_isolator.bin`, `non_lora_trainables.bin`
    or the merged / full model's safetensors at `model_path`). Returns the [l, hidden] weights.

    An isolator already attached (e.g. by the caller) is kept as is. Raises ValueError naming the checkpoint when
    it holds no isolator (a plain LLaVA or baseline run), or when its shape does not fit the model.
    """
    from llava.model.builder import read_training_only_weights

    from .state import state_of

    state = state_of(model)
    existing = get_isolator(model)
    if existing is not None:
        state.isolator = existing
        return existing.weight.detach()
    found, source = read_training_only_weights(model_path) if model_path else ({}, None)
    weights = found.get(ISOLATOR_WEIGHT)
    if weights is None:
        raise ValueError(
            f"--use-mode-isolator: checkpoint {model_path!r} holds no trained mode isolator (looked for "
            f"{ISOLATOR_WEIGHT!r} in mode_isolator.bin, non_lora_trainables.bin and model safetensors); it was not "
            "trained with DualSpeed. Drop --use-mode-isolator for pruned inference without it."
        )
    hidden = model.config.hidden_size
    if weights.ndim != 2 or weights.shape[1] != hidden:
        raise ValueError(f"{source}: {ISOLATOR_WEIGHT} has shape {tuple(weights.shape)}, expected (l, {hidden})")
    isolator = attach_isolator(model, int(weights.shape[0]), source=None, announce=False)
    with torch.no_grad():
        isolator.weight.copy_(weights.to(isolator.weight.dtype))
    isolator.requires_grad_(False)
    state.isolator = isolator
    print(f"pruned inference: mode isolator ({weights.shape[0]} vectors) loaded from {source}")
    return isolator.weight.detach()
