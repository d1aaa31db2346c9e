"""Visual-token pruners: the registry and the built-in selectors (importing this registers them)."""
from . import baselines, divprune  # noqa: F401  (registration side effect)
from .baselines import random_select, uniform_select
from .divprune import cosine_distance, divprune_select
from .registry import (
    available_pruners,
    check_inputs,
    effective_keep,
    gather_kept,
    get_pruner,
    has_pruner,
    mask_to_indices,
    prune_indices,
    register_pruner,
)

__all__ = [
    "available_pruners",
    "check_inputs",
    "cosine_distance",
    "divprune_select",
    "effective_keep",
    "gather_kept",
    "get_pruner",
    "has_pruner",
    "mask_to_indices",
    "prune_indices",
    "random_select",
    "register_pruner",
    "uniform_select",
]
