"""Every pruning method `--vtp_method` can name, one registry by kind (`pruners.registry`): the built-in selectors
and compressors that act before the LLM (`dualspeed_patch.pruners`) and FitPrune, which prunes inside it
(`dualspeed_patch.fitprune`). Importing this module registers them all."""
from __future__ import annotations

from typing import Any

from . import fitprune  # noqa: F401  (registers "fitprune", kind in_llm)
from .pruners import registry
from .pruners.registry import COMPRESS, IN_LLM, SELECT, Method, available_methods, get_method, has_method

__all__ = ["COMPRESS", "IN_LLM", "SELECT", "Method", "available_methods", "check_method", "get_method"]


def check_method(args: Any) -> Method:
    """The registry entry `args.vtp_method` names, checked against the other flags; a ValueError naming the field.

    A method's `required_flags` must be set, and an in-LLM method cannot be combined with layer skipping (both
    change which decoder layers see which tokens).
    """
    name = getattr(args, "vtp_method", None)
    if not isinstance(name, str) or not has_method(name):
        by_kind = "; ".join(f"{', '.join(available_methods(kind))} ({kind})" for kind in registry.KINDS
                            if available_methods(kind))
        raise ValueError(f"DualSpeedArguments.vtp_method={name!r} is not a registered method; known: {by_kind}")
    method = get_method(name)
    for flag in method.required_flags:
        if not getattr(args, flag, None):
            raise ValueError(f"DualSpeedArguments.vtp_method={method.name!r} needs {flag}=<value>")
    if method.kind == IN_LLM and float(getattr(args, "layer_skip_ratio", 0.0) or 0.0) > 0.0:
        raise ValueError(f"DualSpeedArguments.vtp_method={method.name!r} prunes inside the LLM and cannot be combined "
                         "with layer_skip_ratio > 0")
    return method
