"""Evaluation extensions: options that packages built on LLaVA add to its evaluation scripts without llava knowing
them (for example another way of feeding an image's visual tokens to the LLM).

An extension is any object (usually a module) with

    add_arguments(parser)                 -> None   its command-line flags
    prepare(model, args)                  -> None   after loading: check its flags, set the model up (fail early)
    context(model, args)                  -> a context manager that generation / scoring runs in
    on_batch(model, args, instructions)   -> None   before each batch: the batch's bare questions

Installed packages declare theirs in the `llava.eval_extensions` entry-point group; `register` adds one at run time.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
from importlib.metadata import entry_points
from typing import Any, Iterator, Optional, Sequence

ENTRY_POINT_GROUP = "llava.eval_extensions"
_REGISTERED: dict[str, Any] = {}


@functools.lru_cache(maxsize=1)
def _installed() -> tuple:
    """(name, extension) of every installed entry point of the group, loaded once."""
    return tuple((ep.name, ep.load()) for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def register(name: str, extension: Any) -> None:
    """Add an extension under `name` (replacing an installed one of the same name)."""
    _REGISTERED[name] = extension


def extensions() -> list:
    """Every extension: the installed ones, then those registered at run time."""
    found = dict(_installed())
    found.update(_REGISTERED)
    return list(found.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every extension's flags to an evaluation parser."""
    for extension in extensions():
        extension.add_arguments(parser)


def prepare(model, args: argparse.Namespace) -> None:
    """Let every extension check its flags and set the loaded model up."""
    for extension in extensions():
        extension.prepare(model, args)


@contextlib.contextmanager
def context(model, args: argparse.Namespace) -> Iterator[None]:
    """The extensions' contexts, entered together, for a generation or scoring run."""
    with contextlib.ExitStack() as stack:
        for extension in extensions():
            stack.enter_context(extension.context(model, args))
        yield


def on_batch(model, args: argparse.Namespace, instructions: Optional[Sequence[str]]) -> None:
    """Hand a batch's bare questions to the extensions that read them."""
    for extension in extensions():
        extension.on_batch(model, args, None if instructions is None else list(instructions))
