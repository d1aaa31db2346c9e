"""Pruned inference as an evaluation option (the paper's "pruned inference", with or without the mode isolator).

Off by default: without `--pruning-ratio` evaluation is plain LLaVA (full visual tokens, no isolator) and the
DualSpeed patch is not even applied. With it, each image's visual tokens are pruned to
`K = kept_tokens(N, p)` by the chosen plug-in ("pruned" visual mode); `--use-mode-isolator` also prefixes the
checkpoint's trained mode isolator ("fast" visual mode, the input DualSpeed's fast mode trains on).
"""
import argparse
import contextlib
import dataclasses
from typing import Optional

import torch

ISOLATOR_WEIGHT = "model.mode_isolator.weight"


def add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--pruning-ratio`, `--vtp-method` and `--use-mode-isolator` to an evaluation parser."""
    from dualspeed_patch.pruners import available_pruners

    group = parser.add_argument_group("pruned inference (DualSpeed)")
    group.add_argument("--pruning-ratio", type=float, default=None,
                       help="Drop this fraction of each image's visual tokens, in [0, 1) (default: off, plain LLaVA).")
    group.add_argument("--vtp-method", type=_pruner_name, default="divprune",
                       help=f"Visual-token pruner for --pruning-ratio; one of: {', '.join(available_pruners())}.")
    group.add_argument("--use-mode-isolator", action="store_true",
                       help="Prefix the checkpoint's trained mode isolator to the kept tokens (needs --pruning-ratio).")


def _pruner_name(value: str) -> str:
    """argparse type of --vtp-method: a name registered in `dualspeed_patch.pruners` (checked at parse time)."""
    from dualspeed_patch.pruners import available_pruners, has_pruner

    if not has_pruner(value):
        raise argparse.ArgumentTypeError(f"unknown pruner {value!r}; known: {', '.join(available_pruners())}")
    return value.strip().lower()


def setup_pruned_inference(model, args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Prepare `model` for the evaluation mode `args` asks for and return the context to run generation in.

    Pruning off: `contextlib.nullcontext()`, nothing touched. Pruning on: applies the DualSpeed patch, stores the
    ratio and pruner in the model's DualSpeed settings, attaches the trained isolator if asked (read from
    `args.model_path`; a clear error when the checkpoint has none) and returns `visual_mode(model, PRUNED | FAST)`.
    """
    ratio: Optional[float] = getattr(args, "pruning_ratio", None)
    use_isolator = bool(getattr(args, "use_mode_isolator", False))
    if ratio is None:
        if use_isolator:
            raise ValueError("--use-mode-isolator needs --pruning-ratio (the isolator prefixes pruned tokens only)")
        return contextlib.nullcontext()
    import dualspeed_patch
    from dualspeed_patch.patch import FAST, PRUNED, settings, visual_mode

    dualspeed_patch.apply()
    method = _pruner_name(getattr(args, "vtp_method", "divprune"))
    model._dualspeed_args = dataclasses.replace(settings(model), pruning_ratio=float(ratio), vtp_method=method)
    if use_isolator:
        attach_trained_isolator(model, getattr(args, "model_path", None))
    _attach_instruction_scorer(model, method)
    return visual_mode(model, FAST if use_isolator else PRUNED)


def attach_trained_isolator(model, model_path: Optional[str]) -> torch.Tensor:
    """Give `model` the mode isolator trained with its checkpoint (`mode_isolator.bin`, `non_lora_trainables.bin`
    or the merged / full model's safetensors at `model_path`). Returns the [l, hidden] weights.

    An isolator already attached (e.g. by the caller) is kept as is. Raises ValueError naming the checkpoint when
    it holds no isolator (a plain LLaVA or baseline run), or when its shape does not fit the model.
    """
    from dualspeed_patch.isolator import attach_isolator, get_isolator
    from llava.model.builder import read_training_only_weights

    existing = get_isolator(model)
    if existing is not None:
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
    print(f"pruned inference: mode isolator ({weights.shape[0]} vectors) loaded from {source}")
    return isolator.weight.detach()


def _attach_instruction_scorer(model, method: str) -> None:
    """Instruction-aware pruners (CDPruner) score tokens against the question with CLIP's text tower."""
    from dualspeed_patch.pruners import get_pruner

    if "relevance" not in getattr(get_pruner(method), "context_keys", ()) or "_dualspeed_text_scorer" in model.__dict__:
        return
    from dualspeed_patch.patch import settings
    from dualspeed_patch.train import attach_pruner_context

    attach_pruner_context(model, argparse.Namespace(), settings(model))
