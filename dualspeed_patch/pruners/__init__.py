"""Visual-token pruners and compressors: the method registry and the built-in methods (importing this registers them)."""
from . import avgpool, baselines, cdpruner, divprune, fastervlm  # noqa: F401  (registration side effect)
from .avgpool import avgpool_compress
from .baselines import random_select, uniform_select
from .cdpruner import cdpruner_select, cosine_similarity, greedy_dpp_map
from .compressors import (
    available_compressors,
    available_vtp_methods,
    get_vtp_method,
    has_compressor,
    has_vtp_method,
    reduce_tokens,
    register_compressor,
)
from .divprune import cosine_distance, divprune_select
from .fastervlm import fastervlm_select
from .registry import (
    COMPRESS,
    IN_LLM,
    KINDS,
    SELECT,
    Method,
    available_methods,
    available_pruners,
    get_method,
    has_method,
    register_method,
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
    "COMPRESS",
    "IN_LLM",
    "KINDS",
    "SELECT",
    "Method",
    "available_methods",
    "get_method",
    "has_method",
    "register_method",
    "available_compressors",
    "available_pruners",
    "available_vtp_methods",
    "avgpool_compress",
    "cdpruner_select",
    "check_inputs",
    "cosine_distance",
    "cosine_similarity",
    "divprune_select",
    "effective_keep",
    "fastervlm_select",
    "gather_kept",
    "get_pruner",
    "get_vtp_method",
    "greedy_dpp_map",
    "has_compressor",
    "has_pruner",
    "has_vtp_method",
    "mask_to_indices",
    "prune_indices",
    "random_select",
    "reduce_tokens",
    "register_compressor",
    "register_pruner",
    "uniform_select",
]
