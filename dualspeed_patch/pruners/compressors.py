"""Visual-token compressors, and the one pre-LLM dispatcher that serves selectors and compressors alike.

A *pruner* (selector, `registry.py`) returns the indices of the tokens it keeps; a *compressor* creates new
tokens (e.g. averages of neighbouring ones), so it returns the tokens themselves:

    compress(features: Tensor[B, N, D], keep: int | LongTensor[B], valid: BoolTensor[B, N] | None = None,
             **context) -> (tokens Tensor[B, K, D], mask BoolTensor[B, K])

Contract:
- row b produces k_b tokens (a compressor documents how k_b relates to keep_b; it may differ, e.g. a square
  pooling grid), K = max_b k_b, `mask[b, j]` marks the first k_b entries as real; the rest are padding;
- `tokens` is differentiable with respect to `features` (it is computed *with* gradient, unlike a selection),
  same dtype and device as `features`; invalid (padding) input tokens never contribute;
- unknown `context` keys are ignored; a compressor may declare the context it needs in `context_keys`.

Compressors are entries of kind `compress` in the one method registry (`registry.py`), so everything written
against the selector contract (`prune_indices`, `available_pruners()`, benchmarks iterating over selectors) keeps
seeing index selectors only. A compressor cannot take a pruner's name.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .registry import (COMPRESS, IN_LLM, SELECT, Keep, available_methods, gather_kept, get_method, has_method,
                       prune_indices, register_method)

CompressorFn = Callable[..., tuple]


def register_compressor(name: str, fn: Optional[CompressorFn] = None, *, context_keys: Optional[tuple] = None,
                        overwrite: bool = False):
    """Register `fn` as compressor `name` (case-insensitive), usable as `--vtp_method name`; works as a decorator.

    Raises if `name` is a registered pruner, or a different compressor already holds it (unless `overwrite`)."""
    return register_method(name, fn, kind=COMPRESS, context_keys=context_keys, overwrite=overwrite)


def has_compressor(name: str) -> bool:
    """Whether a compressor is registered under `name`."""
    return has_method(name, COMPRESS)


def available_compressors() -> list[str]:
    """Sorted names of all registered compressors."""
    return available_methods(COMPRESS)


def has_vtp_method(name: str) -> bool:
    """Whether `name` is a registered method of any kind (what `--vtp_method` accepts)."""
    return has_method(name)


def available_vtp_methods() -> list[str]:
    """Sorted names of all registered methods (pruners, compressors, in-LLM methods)."""
    return available_methods()


def get_vtp_method(name: str) -> Callable:
    """The function registered as `name`; a KeyError listing every known name."""
    return get_method(name).fn


def reduce_tokens(
    method: Union[str, Callable],
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce each image's visual tokens with `method` (a registered name, or a pruner function) before the LLM:
    `(tokens [B, K, D], mask [B, K])`, mask marking each row's real entries.

    A pruner selects without gradient and the kept tokens are gathered (gradients reach them); a compressor's
    output is returned as is, after checking its shapes against its contract. An in-LLM method has no pre-LLM
    reduction: asking for one raises.
    """
    kind = get_method(method).kind if isinstance(method, str) else SELECT
    if kind == IN_LLM:
        raise ValueError(f"{method!r} prunes inside the LLM; it has no pre-LLM token reduction")
    if kind == SELECT:
        indices, mask = prune_indices(method, features, keep, valid, **context)
        return gather_kept(features, indices), mask
    out = get_method(method).fn(features, keep, valid, **context)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"compressor {method!r} must return (tokens, mask), got {type(out).__name__}")
    tokens, mask = out
    b, _, d = features.shape
    if tokens.dim() != 3 or tokens.shape[0] != b or tokens.shape[2] != d or mask.shape != tokens.shape[:2] \
            or mask.dtype != torch.bool:
        raise ValueError(
            f"compressor {method!r} returned tokens {tuple(tokens.shape)} and mask {mask.dtype} {tuple(mask.shape)}; "
            f"expected [{b}, K, {d}] and torch.bool [{b}, K]"
        )
    return tokens, mask
