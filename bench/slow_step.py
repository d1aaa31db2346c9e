"""Slow-step overhead: one DualSpeed slow step vs (baseline step + one pruned forward without gradient).

The slow step must cost no more than what it fundamentally is: the student's training step on full tokens plus
the teacher's forward on the pruned input. Builds a LLaVA-shaped model in memory (random CLIP giving N visual tokens,
a LLaMA big enough to dominate), fp32 on CPU, and times the three interleaved, reporting medians and the ratio.

    python bench/slow_step.py [--visual 576] [--text 96] [--batch 2] [--hidden 512] [--layers 8] [--repeats 5]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model  # noqa: E402

import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch import DualSpeedArguments  # noqa: E402
from dualspeed_patch.state import attach, state_of  # noqa: E402
from dualspeed_patch import step as ds_step  # noqa: E402
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--visual", type=int, default=576, help="visual tokens per image (a square number)")
    p.add_argument("--text", type=int, default=96)
    p.add_argument("--answer", type=int, default=32, help="supervised answer tokens per sample")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    model, image = build_model(int(a.visual ** 0.5), a.hidden, a.layers, seed=0)
    patch.apply()
    attach(model, DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=1.0), seed=0, announce=False)
    model.train()

    ids = torch.randint(3, 4000, (a.batch, a.text))
    ids[:, 8] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : a.text - a.answer] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    images = torch.randn(a.batch, 3, image, image)

    def baseline():
        with patch.visual_mode(model, patch.FULL):
            model.zero_grad(set_to_none=True)
            orig = type(model).forward.__wrapped__
            orig(model, input_ids=ids, attention_mask=mask, labels=labels, images=images).loss.backward()

    def pruned_forward():
        with torch.no_grad(), patch.visual_mode(model, patch.FAST):
            type(model).forward.__wrapped__(model, input_ids=ids, attention_mask=mask, labels=labels, images=images)

    def slow():
        model.zero_grad(set_to_none=True)
        loss, _ = ds_step.slow_step(model, state_of(model), ids, mask, labels, images)
        loss.backward()

    times = {"baseline": [], "pruned_forward": [], "slow": []}
    for fn in (baseline, pruned_forward, slow):  # warm-up
        fn()
    for _ in range(a.repeats):
        for name, fn in (("baseline", baseline), ("pruned_forward", pruned_forward), ("slow", slow)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"visual={a.visual} text={a.text} batch={a.batch} hidden={a.hidden} layers={a.layers} repeats={a.repeats}")
    for k, v in times.items():
        print(f"{k:15s} median {med[k] * 1000:8.1f} ms  (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f})")
    ratio = med["slow"] / (med["baseline"] + med["pruned_forward"])
    print(f"slow / (baseline + pruned forward) = {ratio:.3f}")


if __name__ == "__main__":
    main()
