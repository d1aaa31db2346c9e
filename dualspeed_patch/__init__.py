"""DualSpeed: fast/slow visual-token-pruned training for LLaVA. Importing this package does not import llava.

One public setup call attaches the method to a model: `attach(model, DualSpeedArguments(...)) -> DualSpeed` (its
state); `apply()` patches LLaVA's classes so that their training forward runs DualSpeed's fast and slow steps.
Hugging Face's own Llava / LlavaNext classes are reached through a host adapter instead: `dualspeed_patch.hf`
(`DualSpeedTrainer`, or `setup(trainer, ds_args)` on a built Trainer).
"""
from .config import DualSpeedArguments
from .distill import IGNORE_INDEX, answer_positions, distill_kl, gather_answer_hidden, gather_answer_targets, shifted_ce
from .k_rule import kept_tokens, kept_tokens_tensor
from .layer_skip import skipped_layers
from .modes import is_slow_step, step_seed, step_uniform
from .pruners import available_pruners, gather_kept, get_pruner, prune_indices, register_compressor, register_pruner
from .state import DualSpeed, attach, state_of, visual_mode


def apply(arch_module=None) -> None:
    """Patch LLaVA (default: the installed `llava` package) for DualSpeed; see `dualspeed_patch.patch`."""
    from .patch import apply as _apply

    _apply(arch_module)


__all__ = [
    "apply",
    "attach",
    "DualSpeed",
    "DualSpeedArguments",
    "IGNORE_INDEX",
    "answer_positions",
    "available_pruners",
    "distill_kl",
    "gather_answer_hidden",
    "gather_answer_targets",
    "gather_kept",
    "get_pruner",
    "is_slow_step",
    "kept_tokens",
    "kept_tokens_tensor",
    "prune_indices",
    "register_compressor",
    "register_pruner",
    "shifted_ce",
    "skipped_layers",
    "state_of",
    "step_seed",
    "step_uniform",
    "visual_mode",
]
