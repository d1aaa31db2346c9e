"""DualSpeed step costs against the baseline and against the token-count limit (fp32, CPU).

A LLaVA-shaped model (random tiny CLIP giving N visual tokens, an LLM big enough to dominate) is timed per
training stage, the variants called round-robin in each round after a warm-up round:
- baseline: plain LLaVA training step (unpatched, full tokens, forward + backward);
- fast: DualSpeed fast step through the patched forward (DivPrune at p, isolator of l vectors);
- oracle: the same fast step with a zero-cost selector (the first K tokens): the token-count limit;
- plain_short: plain LLaVA whose encoder output is cut to K + l tokens: the same sequence length without any
  DualSpeed machinery (what isolator insertion, gathering and re-padding cost is oracle / plain_short);
- slow (SFT): DualSpeed slow step, against baseline + one pruned forward without gradient;
- select/<pruner>: the selection alone on the step's post-projector features;
- fast+layerskip (SFT): the fast step also skipping half the decoder layers (fixed "uniform" subset);
- fast+avgpool (pretraining): the fast step with the average-pooling compressor instead of DivPrune;
- fast+fitprune (SFT): the fast step with FitPrune's in-LLM pruning, its recipe fitted in-process on the timed
  batch for a budget of 0.5 of the LLM FLOPs (or the smallest reachable one if the text is too long for 0.5).
- with --hf, hf_baseline / hf_fast / hf_slow (SFT): plain, fast and slow steps on Hugging Face's
  LlavaForConditionalGeneration (LlavaNext at NeXT counts) holding the same weights, DualSpeed reached through its
  host adapter (dualspeed_patch.hf); reported as ratios to their LLaVA counterparts and to hf_baseline.
Times are CPU time of the process by default (one torch thread: the work done, nearly blind to other processes on
a shared machine); wall time is recorded too.
From these it predicts the end-to-end speed-up (pretraining: baseline/fast; SFT: baseline/((1-r) fast + r slow))
and checks it against short real LLaVATrainer runs of the same shapes, baseline and DualSpeed advancing in
lockstep (one optimizer step each in turn).

    python bench/step_costs.py --profile       # full run (~11 min, one thread) + one profiled step per variant
    python bench/step_costs.py --quick --hf    # one tiny iteration in seconds (the smoke test runs it)

Writes outputs/step_costs.json and outputs/step_costs.md (override with --out).
"""
from __future__ import annotations

# The pieces live next to this entry point: step_costs_rows (the timed variants), step_costs_cell (timing and
# profiling of one cell), step_costs_hf (the Hugging Face rows), step_costs_e2e (the lockstep training runs),
# step_costs_report (targets and tables).

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLOCKS, REPO, build_model, llm_parameters  # noqa: E402

import dualspeed_patch.patch as patch  # noqa: E402
from step_costs_cell import measure_cell  # noqa: E402
from step_costs_e2e import measure_e2e  # noqa: E402
from step_costs_report import TARGETS, markdown, verdicts  # noqa: E402


# ---------------------------------------------------------------- configuration


def count_settings(a: argparse.Namespace) -> Dict[str, dict]:
    """Visual-token counts to measure: LLaVA-1.5 (576 per image) and LLaVA-NeXT (anyres: base view + 2 x 2 tiles,
    spatial_unpad, ~2900 packed tokens; or, with --next-views single, one 54 x 54 view standing in for it)."""
    side15 = 4 if a.quick else 24
    settings = {"llava15": {"visual_side": side15, "batch": a.batch15, "anyres": False,
                            "label": f"LLaVA-1.5: {side15 ** 2} visual tokens per image"}}
    if a.next_views == "anyres":
        t = side15
        settings["next"] = {
            "visual_side": t, "batch": a.batch_next, "anyres": True, "grid": (2, 2),
            "label": f"LLaVA-NeXT: anyres image of 2 x 2 tiles (NeXT's grids, spatial_unpad): base view {t * t} + "
                     f"tiles {2 * t}x{2 * t} + {2 * t} newlines = {t * t + 4 * t * t + 2 * t} packed visual tokens"}
    else:
        side = 6 if a.quick else 54
        settings["next"] = {"visual_side": side, "batch": a.batch_next, "anyres": False,
                            "label": f"NeXT stand-in: one {side}x{side} view = {side * side} visual tokens"}
    return settings


def stage_settings(a: argparse.Namespace) -> Dict[str, dict]:
    """Text shapes and learning rates of the two stages (LLaVA-1.5 recipe, scaled text in --quick)."""
    if a.quick:
        return {"pretrain": {"text": 12, "answer": 4, "image_at": 1, "lr": 1e-3, "projector_lr": None},
                "sft": {"text": 24, "answer": 8, "image_at": 4, "lr": 2e-4, "projector_lr": 2e-5}}
    return {"pretrain": {"text": 40, "answer": 15, "image_at": 1, "lr": 1e-3, "projector_lr": None},
            "sft": {"text": 150, "answer": 60, "image_at": 35, "lr": 2e-4, "projector_lr": 2e-5}}


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one tiny iteration in seconds (smoke test)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch15", type=int, default=4, help="batch size at LLaVA-1.5 counts")
    p.add_argument("--batch-next", type=int, default=1, help="batch size at NeXT counts")
    p.add_argument("--next-views", choices=["anyres", "single"], default="anyres",
                   help="NeXT counts from real anyres images (2 x 2 tiles) or from one 54 x 54 view")
    p.add_argument("--pruning-ratio", type=float, default=0.9)
    p.add_argument("--slow-ratio", type=float, default=0.1)
    p.add_argument("--isolator-len", type=int, default=4)
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r); the recipe's 128 at hidden 4096, scaled")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cheap-repeats", type=int, default=3,
                   help="calls per repeat of the cheap variants (all but baseline and slow), for tighter ratios")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    p.add_argument("--counts", nargs="+", default=["llava15", "next"], choices=["llava15", "next"])
    p.add_argument("--stages", nargs="+", default=["pretrain", "sft"], choices=["pretrain", "sft"])
    p.add_argument("--e2e-steps", type=int, default=12,
                   help="optimizer steps of each real training run (baseline and DualSpeed in lockstep; 0: skip)")
    p.add_argument("--e2e-warmup", type=int, default=2, help="untimed steps at the start of each real run (>= 1)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                   help="clock of the reported times and ratios: cpu (process CPU time; default with 1 thread, robust "
                        "to other processes on the machine) or wall (default with more threads); both are recorded")
    p.add_argument("--hf", action="store_true",
                   help="also time hf_baseline / hf_fast / hf_slow: the same steps on Hugging Face's Llava classes "
                        "through dualspeed_patch.hf, with the same weights and batch content")
    p.add_argument("--profile", action="store_true",
                   help="also profile one baseline / fast / oracle / slow step per cell: time per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "outputs" / "step_costs.json"))
    a = p.parse_args(argv)
    if a.quick:
        # 4 layers: the fewest at which skipping half of them leaves the first and last layer in place
        a.hidden, a.layers, a.vocab, a.repeats, a.warmup, a.cheap_repeats = 64, 4, 512, 1, 1, 1
        a.batch15, a.batch_next, a.e2e_steps, a.e2e_warmup, a.lora_r = 2, 1, 3, 2, 4
    if a.clock is None:
        a.clock = "cpu" if a.threads == 1 else "wall"
    if a.e2e_steps and not 1 <= a.e2e_warmup < a.e2e_steps:
        p.error(f"--e2e-warmup must be in [1, --e2e-steps), got {a.e2e_warmup} with --e2e-steps {a.e2e_steps}")
    return a


def main(argv: Optional[List[str]] = None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    load_before = os.getloadavg()
    counts, stages = count_settings(a), stage_settings(a)
    result = {"config": {**vars(a), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                         "machine": platform.processor() or platform.machine(), "targets": TARGETS},
              "notes": [counts[c]["label"] for c in a.counts], "cells": {}, "e2e": {}}
    patch.apply()
    for count in a.counts:
        pristine, image_side = build_model(counts[count]["visual_side"], a.hidden, a.layers, a.vocab, seed=a.seed,
                                           anyres=counts[count]["anyres"])
        result["config"]["llm_parameters"] = llm_parameters(pristine)
        for stage in a.stages:
            key = f"{count}/{stage}"
            print(f"[{time.perf_counter() - started:6.0f} s] step costs {key}", flush=True)
            result["cells"][key] = measure_cell(a, pristine, count, stage, counts, stages, image_side)
            if count == "llava15" and a.e2e_steps:
                print(f"[{time.perf_counter() - started:6.0f} s] training runs {stage}", flush=True)
                result["e2e"][stage] = measure_e2e(a, pristine, stage, counts, stages, image_side, result["cells"][key])
                patch.apply()
        del pristine
    result["targets"] = verdicts(result)
    result["config"]["seconds"] = time.perf_counter() - started
    result["config"]["load_average_before"] = load_before
    result["config"]["load_average_after"] = os.getloadavg()
    table = markdown(result)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')} in {result['config']['seconds']:.0f} s "
          f"(load average {load_before[0]:.2f} before, {result['config']['load_average_after'][0]:.2f} after)")
    return result


if __name__ == "__main__":
    main()
