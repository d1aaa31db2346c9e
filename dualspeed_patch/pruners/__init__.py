"""Visual-token pruners: the registry and the built-in selectors (importing this registers them)."""
from . import baselines, cdpruner, divprune, fastervlm  # noqa: F401  (registration side effect)
from .baselines import random_select, uniform_select
from .cdpruner import cdpruner_select, cosine_similarity, greedy_dpp_map
from .divprune import cosine_distance, divprune_select
from .fastervlm import fastervlm_select
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
    "cdpruner_select",
    "check_inputs",
    "cosine_distance",
    "cosine_similarity",
    "divprune_select",
    "effective_keep",
    "fastervlm_select",
    "gather_kept",
    "get_pruner",
    "greedy_dpp_map",
    "has_pruner",
    "mask_to_indices",
    "prune_indices",
    "random_select",
    "register_pruner",
    "uniform_select",
]
