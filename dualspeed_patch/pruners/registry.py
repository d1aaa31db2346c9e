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

from typing import Callable, Optional, Union

import torch

PrunerFn = Callable[..., torch.Tensor]
Keep = Union[int, torch.Tensor]

_REGISTRY: dict[str, PrunerFn] = {}


def _normalise_name(name: str, kind: str = "pruner") -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def _same_function(a: PrunerFn, b: PrunerFn) -> bool:
    """Same object, or the same definition re-created by a module reload."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return a is b or key(a) == key(b)


def registrar(table: dict, kind: str, name: str, fn: Optional[Callable], overwrite: bool,
              reserved: Optional[Callable[[str], bool]] = None):
    """Register `fn` in `table` under `name` (case-insensitive), or return the decorator that does; shared by the
    pruner and compressor registries. A name `reserved` by the other registry, or held by a different function
    (unless `overwrite`), raises."""
    key = _normalise_name(name, kind)

    def decorate(f: Callable) -> Callable:
        if not callable(f):
            raise TypeError(f"{kind} {name!r} must be callable, got {f!r}")
        if reserved is not None and reserved(key):
            raise ValueError(f"{key!r} is already a registered pruner; choose another name for the {kind}")
        old = table.get(key)
        if old is not None and not overwrite and not _same_function(old, f):
            raise ValueError(f"{kind} {key!r} is already registered ({old!r}); pass overwrite=True to replace it")
        table[key] = f
        return f

    return decorate if fn is None else decorate(fn)


def register_pruner(name: str, fn: Optional[PrunerFn] = None, *, overwrite: bool = False):
    """Register `fn` as pruner `name` (case-insensitive) so `--vtp_method name` can select it.
    Use as `register_pruner("mine", fn)` or as the decorator `@register_pruner("mine")`.
    Registering a different function under a taken name raises unless `overwrite=True`."""
    return registrar(_REGISTRY, "pruner", name, fn, overwrite)


def has_pruner(name: str) -> bool:
    """Whether a pruner is registered under `name`."""
    return isinstance(name, str) and name.strip().lower() in _REGISTRY


def get_pruner(name: str) -> PrunerFn:
    """The pruner registered as `name`; a KeyError listing the known names otherwise."""
    key = _normalise_name(name)
    if key not in _REGISTRY:
        raise KeyError(f"unknown pruner {name!r}; known pruners: {', '.join(available_pruners()) or '(none)'}")
    return _REGISTRY[key]


def available_pruners() -> list[str]:
    """Sorted names of all registered pruners."""
    return sorted(_REGISTRY)


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
