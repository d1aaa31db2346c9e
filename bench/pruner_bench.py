"""Time every registered pruner's selection, batched vs. a per-image loop, at LLaVA-1.5 / LLaVA-NeXT token counts.

For each token count N (576 = LLaVA-1.5's 24x24 patches, 2880 ~ LLaVA-NeXT anyres), batch size B and pruner,
times the batched call on [B, N, D] features and a straightforward per-image implementation of the same method
(a Python loop calling it on one image at a time), keeping K = kept_tokens(N, pruning_ratio) tokens. Only the
selection is timed: the context (CDPruner's relevance, FasterVLM's [CLS] attention) is made up front from
random numbers. One warm-up, then the median of --repeats runs. Prints a Markdown table, writes JSON, and
checks the loop picks the same tokens (not for `random`, whose draw depends on the batch).

    python bench/pruner_bench.py                       # defaults: D=512, 1 thread, about 2 minutes on 2 cores
    python bench/pruner_bench.py --dim 4096 --device cuda --threads 0

Not a test: the numbers depend on the machine. On a shared CPU keep --threads 1: with more threads than free
cores every small op in the greedy loops waits on the busy core (milliseconds per op).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dualspeed_patch.config import kept_tokens  # noqa: E402
from dualspeed_patch.pruners import available_pruners, get_pruner  # noqa: E402


def make_context(b: int, n: int, device: str, gen: torch.Generator) -> dict:
    """Stand-ins for every built-in's context: relevance in [0, 1], a softmax row for [CLS] attention, a seed."""
    relevance = torch.rand(b, n, generator=gen).to(device)
    cls_attention = torch.randn(b, n, generator=gen).softmax(dim=1).to(device)
    return {"relevance": relevance, "cls_attention": cls_attention, "seed": 1234}


def per_image(fn: Callable, features: torch.Tensor, keep: int, context: dict) -> torch.Tensor:
    """The straightforward implementation: select on each image alone, then stack the rows."""
    rows = []
    for i in range(features.shape[0]):
        ctx = {key: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for key, v in context.items()}
        rows.append(fn(features[i : i + 1], keep, None, **ctx))
    return torch.cat(rows)


def median_ms(call: Callable[[], torch.Tensor], device: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time in ms of `repeats` calls after one warm-up, and the last result."""
    result = call()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="feature size D (post-projector = LLM hidden size, 4096 for 7B)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[576, 2880])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=None, help="pruner names (default: all registered)")
    parser.add_argument("--pruning-ratio", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave torch's default)")
    parser.add_argument("--json", type=Path, default=Path("outputs/pruner_bench.json"))
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    methods = args.methods or available_pruners()

    header = f"device={args.device} threads={torch.get_num_threads()} D={args.dim} pruning_ratio={args.pruning_ratio}"
    print(header, flush=True)
    lines = [
        "| N | K | B | method | batched ms | per-image ms | per-image / batched | same tokens |",
        "|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    records = []
    gen = torch.Generator().manual_seed(0)
    for n in args.tokens:
        keep = kept_tokens(n, args.pruning_ratio)
        for b in args.batches:
            features = torch.randn(b, n, args.dim, generator=gen).to(args.device)
            context = make_context(b, n, args.device, gen)
            for name in methods:
                fn = get_pruner(name)
                batched_ms, batched = median_ms(lambda: fn(features, keep, None, **context), args.device, args.repeats)
                loop_ms, looped = median_ms(lambda: per_image(fn, features, keep, context), args.device, args.repeats)
                same = "n/a" if name == "random" else ("yes" if torch.equal(batched, looped) else "NO")
                record = dict(n=n, k=keep, b=b, method=name, batched_ms=batched_ms, per_image_ms=loop_ms,
                              speedup=loop_ms / batched_ms, same_selection=same)
                records.append(record)
                line = (f"| {n} | {keep} | {b} | {name} | {batched_ms:.1f} | {loop_ms:.1f} | "
                        f"{loop_ms / batched_ms:.2f}x | {same} |")
                lines.append(line)
                print(line, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"setup": header, "results": records}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
