"""Visual-token compressors, their registry, and one dispatcher that serves selectors and compressors alike.

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

Compressors live in their own registry so that everything written against the selector contract
(`prune_indices`, `available_pruners()`, benchmarks iterating over selectors) keeps seeing index selectors only.
`--vtp_method` accepts a name from either registry (`has_vtp_method`); a compressor cannot take a pruner's name.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .registry import (Keep, _normalise_name, available_pruners, gather_kept, get_pruner, has_pruner, prune_indices,
                       registrar)

CompressorFn = Callable[..., tuple]

_COMPRESSORS: dict[str, CompressorFn] = {}


def _key(name: str) -> str:
    return _normalise_name(name, "compressor")


def register_compressor(name: str, fn: Optional[CompressorFn] = None, *, overwrite: bool = False):
    """Register `fn` as compressor `name` (case-insensitive), usable as `--vtp_method name`; works as a decorator.

    Raises if `name` is a registered pruner, or a different compressor already holds it (unless `overwrite`)."""
    return registrar(_COMPRESSORS, "compressor", name, fn, overwrite, reserved=has_pruner)


def has_compressor(name: str) -> bool:
    """Whether a compressor is registered under `name`."""
    return isinstance(name, str) and name.strip().lower() in _COMPRESSORS


def available_compressors() -> list[str]:
    """Sorted names of all registered compressors."""
    return sorted(_COMPRESSORS)


def has_vtp_method(name: str) -> bool:
    """Whether `name` is a registered pruner or compressor (what `--vtp_method` accepts)."""
    return has_pruner(name) or has_compressor(name)


def available_vtp_methods() -> list[str]:
    """Sorted names of all pruners and compressors."""
    return sorted(set(_COMPRESSORS) | set(available_pruners()))


def get_vtp_method(name: str) -> Callable:
    """The pruner or compressor registered as `name` (pruners first); a KeyError listing every known name."""
    if has_pruner(name):
        return get_pruner(name)
    if has_compressor(name):
        return _COMPRESSORS[_key(name)]
    raise KeyError(f"unknown visual-token method {name!r}; known: {', '.join(available_vtp_methods()) or '(none)'}")


def reduce_tokens(
    method: Union[str, Callable],
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce each image's visual tokens with `method` (a registered name, or a pruner function):
    `(tokens [B, K, D], mask [B, K])`, mask marking each row's real entries.

    A pruner selects without gradient and the kept tokens are gathered (gradients reach them); a compressor's
    output is returned as is, after checking its shapes against its contract.
    """
    if not (isinstance(method, str) and has_compressor(method) and not has_pruner(method)):
        indices, mask = prune_indices(method, features, keep, valid, **context)
        return gather_kept(features, indices), mask
    out = _COMPRESSORS[_key(method)](features, keep, valid, **context)
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
