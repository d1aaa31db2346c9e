"""Small training utilities shared by the tiny LLaMA and tiny CLIP builders.

A plain AdamW loop with warm-up + cosine learning rate, right-padding of (input_ids, labels) documents, a
progress bar and a context manager for torch's intra-op thread count (one thread keeps the weights
bit-reproducible).
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, restoring the caller's setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def progress(iterable: Iterable[T], desc: str) -> Iterable[T]:
    """tqdm progress bar on stderr (plain iteration if tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return iterable
    return tqdm(iterable, desc=desc, mininterval=1.0, leave=True, file=sys.stderr)


def pad_batch(docs: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / labels / attention_mask of (input_ids, labels) pairs."""
    import torch

    longest = max(len(ids) for ids, _ in docs)
    input_ids = torch.full((len(docs), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(docs), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(docs), longest), dtype=torch.long)
    for row, (ids, lab) in enumerate(docs):
        input_ids[row, : len(ids)], labels[row, : len(ids)], mask[row, : len(ids)] = ids, lab, 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_loop(model: torch.nn.Module, batches: Iterator[dict], steps: int, lr: float, desc: str) -> list[float]:
    """AdamW training for ``steps`` steps on ``model(**batch).loss``; returns the loss curve."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    losses = []
    bar = progress(range(steps), desc)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses
