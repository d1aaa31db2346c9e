"""DeepSpeed checkpoints that leave out frozen weights, and resuming from them.

In projector pretraining the LLM and the vision tower are frozen: saving them in every `checkpoint-*` (a 7B user
gets ~14 GB of unchanged weights per checkpoint) buys nothing, since a resumed run rebuilds them from
`--model_name_or_path` and `--vision_tower`. Transformers' Trainer leaves frozen weights out of DeepSpeed's
checkpoints for peft models only; these helpers do it for any model with frozen parameters (ZeRO stages 0-2) and
make resuming accept such a checkpoint while still requiring every trainable weight in it.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn


def has_frozen_parameters(model: nn.Module) -> bool:
    """Whether some parameters of `model` are not trained."""
    return any(not p.requires_grad for p in model.parameters())


def load_trainable(model: nn.Module) -> Callable:
    """A `custom_load_fn` for DeepSpeed's `load_checkpoint`: loads the checkpoint's weights into `model` and fails,
    naming them, when a trainable weight is missing (frozen ones may be, they were left out on purpose)."""

    def load(src: dict, dst: nn.Module) -> None:
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        missing = [name for name in trainable if name not in src]
        if missing:
            raise ValueError(f"checkpoint lacks trainable weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        _, unexpected = dst.load_state_dict(src, strict=False)
        if unexpected:
            raise ValueError(f"checkpoint holds weights the model does not have: {unexpected[:5]}")

    return load


def accept_frozen_free_checkpoints(engine: Any, model: nn.Module) -> None:
    """Make `engine.load_checkpoint` (as the Trainer calls it on resume) accept checkpoints without frozen weights."""
    original = engine.load_checkpoint

    def load_checkpoint(load_dir, tag=None, load_module_strict=True, **kwargs):
        kwargs.setdefault("custom_load_fn", load_trainable(model))
        return original(load_dir, tag=tag, load_module_strict=False, **kwargs)

    engine.load_checkpoint = load_checkpoint
