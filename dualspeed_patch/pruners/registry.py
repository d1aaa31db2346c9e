"""The visual-token-pruner contract, the registry of pruners by name, and the shared helpers pruners use.

A pruner is a function

    select(features: Tensor[B, N, D], keep: int | LongTensor[B], valid: BoolTensor[B, N] | None = None,
           **context) -> LongTensor[B, K]

that picks which visual tokens of each image to keep. Contract:
- `valid[b, n]` marks real tokens (ragged images are right-padded); invalid tokens are never chosen.
  `None` means all valid.
- Each row keeps k_b = min(keep_b, number of valid tokens of row b) tokens; K = max_b k_b.
- Row b's first k_b entries are its chosen indices, unique and ascending (original order). Rows with
  k_b < K are padded by repeating their last chosen index (0 when k_b == 0), so the indices stay
  in range and sorted and can be used with `gather` directly; `prune_indices` returns the mask of
  real entries next to them.
- Selection carries no gradient; callers gather with the indices so gradients reach the kept features.
- Unknown `context` keys are ignored, so a caller can pass the same context to every pruner.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

PrunerFn = Callable[..., torch.Tensor]
Keep = Union[int, torch.Tensor]

# The kinds of pruning method, by where they act and what they return.
SELECT = "select"  # before the LLM: indices of the visual tokens each image keeps (this module's contract)
COMPRESS = "compress"  # before the LLM: new tokens made from the visual tokens (`compressors.py`)
IN_LLM = "in_llm"  # inside the LLM: all visual tokens go in, some leave between decoder layers (e.g. FitPrune)
KINDS = (SELECT, COMPRESS, IN_LLM)


@dataclass(frozen=True)
class Method:
    """One entry of the registry: a pruning method `--vtp_method` can name.

    `context_keys`: what the method reads beside the features, computed for it on request (`cls_attention`,
    `relevance`, `grid_side`). `required_flags`: DualSpeed flags that must be set when it is selected.
    """

    name: str
    kind: str
    fn: Callable
    context_keys: tuple = ()
    required_flags: tuple = ()


_METHODS: dict[str, Method] = {}


def _normalise_name(name: str, kind: str = "pruner") -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def _same_function(a: Callable, b: Callable) -> bool:
    """Same object, or the same definition re-created by a module reload."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return a is b or key(a) == key(b)


_KIND_WORD = {SELECT: "pruner", COMPRESS: "compressor", IN_LLM: "in-LLM method"}


def register_method(name: str, fn: Optional[Callable] = None, *, kind: str = SELECT,
                    context_keys: Optional[tuple] = None, required_flags: tuple = (), overwrite: bool = False):
    """Register `fn` as pruning method `name` (case-insensitive) of `kind`, or return the decorator that does.

    `context_keys` defaults to the function's own `context_keys` attribute (else none). A name held by a method of another
    kind, or by a different function of the same kind (unless `overwrite`), raises.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    word = _KIND_WORD[kind]
    key = _normalise_name(name, word)

    def decorate(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"{word} {name!r} must be callable, got {f!r}")
        old = _METHODS.get(key)
        if old is not None and old.kind != kind:
            raise ValueError(f"{key!r} is already a registered {_KIND_WORD[old.kind]}; choose another name for the {word}")
        if old is not None and not overwrite and not _same_function(old.fn, f):
            raise ValueError(f"{word} {key!r} is already registered ({old.fn!r}); pass overwrite=True to replace it")
        keys = tuple(context_keys if context_keys is not None else getattr(f, "context_keys", ()))
        _METHODS[key] = Method(key, kind, f, keys, tuple(required_flags))
        return f

    return decorate if fn is None else decorate(fn)


def has_method(name: str, kind: Optional[str] = None) -> bool:
    """Whether a method (of `kind`, when given) is registered under `name`."""
    entry = _METHODS.get(name.strip().lower()) if isinstance(name, str) else None
    return entry is not None and (kind is None or entry.kind == kind)


def get_method(name: str) -> Method:
    """The registry entry of `name`; a KeyError listing every known method otherwise."""
    key = _normalise_name(name, "method")
    if key not in _METHODS:
        raise KeyError(f"unknown visual-token method {name!r}; known: {', '.join(available_methods()) or '(none)'}")
    return _METHODS[key]


def available_methods(kind: Optional[str] = None) -> list[str]:
    """Sorted names of the registered methods (of `kind`, when given)."""
    return sorted(k for k, m in _METHODS.items() if kind is None or m.kind == kind)


def register_pruner(name: str, fn: Optional[PrunerFn] = None, *, context_keys: Optional[tuple] = None,
                    overwrite: bool = False):
    """Register `fn` as (selection) pruner `name` (case-insensitive) so `--vtp_method name` can select it.
    Use as `register_pruner("mine", fn)` or as the decorator `@register_pruner("mine")`.
    Registering a different function under a taken name raises unless `overwrite=True`."""
    return register_method(name, fn, kind=SELECT, context_keys=context_keys, overwrite=overwrite)


def has_pruner(name: str) -> bool:
    """Whether a selection pruner is registered under `name`."""
    return has_method(name, SELECT)


def get_pruner(name: str) -> PrunerFn:
    """The selection pruner registered as `name`; a KeyError listing the known pruners otherwise."""
    key = _normalise_name(name)
    if not has_pruner(key):
        raise KeyError(f"unknown pruner {name!r}; known pruners: {', '.join(available_pruners()) or '(none)'}")
    return _METHODS[key].fn


def available_pruners() -> list[str]:
    """Sorted names of all registered selection pruners."""
    return available_methods(SELECT)


# ---------------------------------------------------------------- helpers shared by pruner implementations


def check_inputs(features: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Validate `features` [B, N, D] and return the validity mask [B, N] (all True when `valid` is None)."""
    if features.dim() != 3:
        raise ValueError(f"features must be [batch, tokens, dim], got shape {tuple(features.shape)}")
    b, n, _ = features.shape
    if valid is None:
        return torch.ones(b, n, dtype=torch.bool, device=features.device)
    if valid.shape != (b, n):
        raise ValueError(f"valid must be [batch, tokens] = {(b, n)}, got shape {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got dtype {valid.dtype}")
    return valid.to(features.device)


def effective_keep(keep: Keep, valid: torch.Tensor) -> torch.Tensor:
    """Per-row number of tokens actually kept, LongTensor [B]: min(keep_b, valid tokens of row b)."""
    b = valid.shape[0]
    if isinstance(keep, torch.Tensor):
        if keep.dtype.is_floating_point or keep.dtype == torch.bool or keep.shape not in ((), (b,)):
            raise ValueError(f"keep must be an int or an integer tensor of shape [{b}], got {keep.dtype} {tuple(keep.shape)}")
        k = keep.to(device=valid.device, dtype=torch.long).expand(b)
    else:
        if isinstance(keep, bool) or int(keep) != keep:
            raise ValueError(f"keep must be an int or an integer tensor of shape [{b}], got {keep!r}")
        k = torch.full((b,), int(keep), dtype=torch.long, device=valid.device)
    if bool((k < 0).any()):
        raise ValueError(f"keep must be >= 0, got {keep!r}")
    return torch.minimum(k, valid.sum(dim=1))


def mask_to_indices(selected: torch.Tensor) -> torch.Tensor:
    """Turn a [B, N] selection mask into ascending indices [B, K] (K = most selected in a row), padding
    short rows with their last selected index (0 for empty rows) as the contract describes."""
    b, n = selected.shape
    k = int(selected.sum(dim=1).max()) if b > 0 else 0
    if k == 0:
        return torch.zeros(b, 0, dtype=torch.long, device=selected.device)
    positions = torch.arange(n, device=selected.device).expand(b, n)
    # Unselected tokens sort after every selected one (key n), selected ones stay in original order.
    ordered = torch.where(selected, positions, n).sort(dim=1).values[:, :k]
    real = ordered < n
    last = torch.where(real, ordered, -1).amax(dim=1, keepdim=True).clamp(min=0)
    return torch.where(real, ordered, last)


def gather_kept(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """features[b, indices[b]] -> [B, K, D]; differentiable with respect to the kept features."""
    return torch.gather(features, 1, indices.unsqueeze(-1).expand(-1, -1, features.shape[-1]))


def prune_indices(
    method: Union[str, PrunerFn],
    features: torch.Tensor,
    keep: Keep,
    valid: Optional[torch.Tensor] = None,
    **context,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a pruner (by name or function) without gradient and return `(indices [B, K], kept_mask [B, K])`,
    where kept_mask marks the real (non-padding) entries; checks the pruner kept its contract's shape."""
    fn = get_pruner(method) if isinstance(method, str) else method
    valid_mask = check_inputs(features, valid)
    k = effective_keep(keep, valid_mask)
    with torch.no_grad():
        indices = fn(features, keep, valid, **context)
    width = int(k.max()) if k.numel() else 0
    if indices.dtype != torch.long or indices.shape != (features.shape[0], width):
        raise ValueError(
            f"pruner {method!r} returned {indices.dtype} {tuple(indices.shape)}, expected torch.int64 "
            f"{(features.shape[0], width)}"
        )
    kept_mask = torch.arange(width, device=indices.device) < k.to(indices.device).unsqueeze(1)
    return indices, kept_mask
