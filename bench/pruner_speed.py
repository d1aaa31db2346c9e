"""Time batched DivPrune against per-image selection (LLaVA-1.5 shapes: N=576 tokens, keep 58).

Prints, per batch size, the cost of the N x N distance matrix alone, the batched call, a loop calling it one image at a time, and a naive per-image
greedy that recomputes each candidate's minimum over the whole chosen set every step (O(K^2 N)),
and checks all three choose the same tokens. Not a test: numbers depend on the machine.

    python bench/pruner_speed.py [--dim 4096] [--device cpu|cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dualspeed_patch.pruners.divprune import cosine_distance, divprune_select  # noqa: E402


def naive_per_image(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Per-image greedy without the running minimum, as a straightforward implementation would write it."""
    out = []
    for x in features:
        dist = cosine_distance(x.unsqueeze(0))[0]
        off_diag = dist.masked_fill(torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device), float("inf"))
        chosen = [int(off_diag.amin(dim=1).argmax())]
        for _ in range(keep - 1):
            score = dist[:, chosen].amin(dim=1)
            score[chosen] = float("-inf")
            chosen.append(int(score.argmax()))
        out.append(torch.tensor(sorted(chosen)))
    return torch.stack(out)


def timed(fn, device: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of `repeats` calls (after one warm-up) and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=4096, help="feature size (post-projector: LLM hidden size)")
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--keep", type=int, default=58)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"device={args.device} threads={torch.get_num_threads()} N={args.tokens} K={args.keep} D={args.dim}")
    print(f"{'B':>4} {'dist ms':>8} {'batched ms':>11} {'loop ms':>9} {'naive ms':>9} {'loop/batched':>13} {'naive/batched':>14}")
    gen = torch.Generator().manual_seed(0)
    for b in args.batches:
        feats = torch.randn(b, args.tokens, args.dim, generator=gen).to(args.device)
        t_dist, _ = timed(lambda: cosine_distance(feats), args.device, args.repeats)
        t_batched, batched = timed(lambda: divprune_select(feats, args.keep), args.device, args.repeats)
        t_loop, looped = timed(
            lambda: torch.cat([divprune_select(feats[i : i + 1], args.keep) for i in range(b)]), args.device, args.repeats
        )
        t_naive, naive = timed(lambda: naive_per_image(feats, args.keep), args.device, args.repeats)
        same = torch.equal(batched, looped) and torch.equal(batched.cpu(), naive)
        print(
            f"{b:>4} {t_dist * 1e3:>8.1f} {t_batched * 1e3:>11.1f} {t_loop * 1e3:>9.1f} {t_naive * 1e3:>9.1f} "
            f"{t_loop / t_batched:>13.2f} {t_naive / t_batched:>14.2f}" + ("" if same else "  SELECTIONS DIFFER")
        )


if __name__ == "__main__":
    main()
