"""Timing harness of bench/step_costs.py: one (visual-token counts, stage) cell timed and profiled.

The cell's variants (step_costs_rows) are called round-robin after a warm-up round (common.time_interleaved);
ratios are taken within each round, so that load changes on a shared machine hit numerator and denominator
alike. With --profile, one call of each main variant is split into phases with cProfile.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import inspect
import pstats
import statistics
import tempfile
from typing import Callable, Dict, List

import torch

from common import CLOCKS, anyres_batch, prepare_stage, summarise, synthetic_batch, time_interleaved

import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch.isolator import attach_isolator  # noqa: E402
from dualspeed_patch.pruners import prune_indices  # noqa: E402
from step_costs_hf import HF_RATIOS, hf_rows  # noqa: E402
from step_costs_rows import OPTION_ROWS, SELECTION_PRUNERS, step_rows  # noqa: E402

# Variants timed once per round (the full-sequence steps); the others --cheap-repeats times.
EXPENSIVE_ROWS = ("baseline", "slow", "hf_baseline", "hf_slow")


def round_medians(samples: List[float], rounds: int) -> List[float]:
    """Median of each round's samples (a variant timed k times per round has k consecutive samples per round)."""
    k = len(samples) // rounds
    return [statistics.median(samples[i * k:(i + 1) * k]) for i in range(rounds)]


def paired_ratio(times: Dict[str, List[float]], num: str, den: List[str], rounds: int) -> Dict[str, float]:
    """num / sum(den) within each round (same round = same load): the median over rounds and the min/max."""
    per = {k: round_medians(times[k], rounds) for k in [num, *den]}
    per_round = [per[num][i] / sum(per[d][i] for d in den) for i in range(rounds)]
    return {"value": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def measure_cell(a: argparse.Namespace, pristine: torch.nn.Module, count: str, stage: str, counts: dict, stages: dict,
                 image_side: int) -> dict:
    """Step costs and ratios for one (counts, stage) cell."""
    c, s = counts[count], stages[stage]
    model = copy.deepcopy(pristine)
    step_model = prepare_stage(model, stage, lora_r=a.lora_r, lora_alpha=2 * a.lora_r)
    attach_isolator(model, a.isolator_len, announce=False)
    model.train()
    if c["anyres"]:
        batch = anyres_batch(c["batch"], s["text"], s["answer"], s["image_at"], image_side, c["grid"], a.vocab, a.seed)
    else:
        batch = synthetic_batch(c["batch"], s["text"], s["answer"], s["image_at"], image_side, a.vocab, seed=a.seed)
    with tempfile.TemporaryDirectory() as workdir:  # the FitPrune recipe file lives while the cell is timed
        rows, info = step_rows(a, model, step_model, batch, stage, workdir)
        if a.hf:  # the same steps on Hugging Face's Llava, in the same rounds
            hf_variants, hf_info = hf_rows(a, pristine, model, batch, stage, info["visual_tokens"])
            rows.update(hf_variants)
            info.update(hf_info)
        patch.apply()
        weights = {name: 1 if name in EXPENSIVE_ROWS else a.cheap_repeats for name in rows}
        both = time_interleaved(rows, repeats=a.repeats, warmup=a.warmup, weights=weights)
    times, other = both[a.clock], next(c for c in CLOCKS if c != a.clock)
    n, k = info["visual_tokens"], info["kept_tokens"]
    cell = {
        **info, "batch": c["batch"], "text_tokens": s["text"],
        "answer_tokens": s["answer"], "sequence_full": s["text"] - 1 + n,
        "sequence_fast": s["text"] - 1 + k + a.isolator_len,
        "rows": {name: summarise(t) for name, t in times.items()},  # on --clock
        f"rows_{other}": {name: summarise(t) for name, t in both[other].items()},
        "raw_seconds": both,
    }
    med = {name: r["median"] for name, r in cell["rows"].items()}
    ratios = {"fast_over_oracle": paired_ratio(times, "fast", ["oracle"], a.repeats),
              "oracle_over_plain_short": paired_ratio(times, "oracle", ["plain_short"], a.repeats),
              "limit_speedup": {"value": med["baseline"] / med["oracle"]}}
    if stage == "sft":
        ratios["slow_over_reference"] = paired_ratio(times, "slow", ["baseline", "pruned_forward"], a.repeats)
        mix = (1 - a.slow_ratio) * med["fast"] + a.slow_ratio * med["slow"]
        ratios["predicted_speedup"] = {"value": med["baseline"] / mix, "slow_ratio": a.slow_ratio}
    else:
        ratios["predicted_speedup"] = {"value": med["baseline"] / med["fast"], "slow_ratio": 0.0}
    for name in SELECTION_PRUNERS:
        if f"select/{name}" in times:
            ratios[f"share/{name}"] = paired_ratio(times, f"select/{name}", ["fast"], a.repeats)
    for name in ["fast", *OPTION_ROWS]:  # each fast-mode variant's step cost relative to the baseline step
        if name in times:
            ratios[f"{name}_over_baseline"] = paired_ratio(times, name, ["baseline"], a.repeats)
    for name, (num, den) in HF_RATIOS.items():  # with --hf
        if all(row in times for row in [num, *den]):
            ratios[name] = paired_ratio(times, num, den, a.repeats)
    cell["ratios"] = ratios
    if a.profile:
        cell["profile"] = {name: profile_phases(rows[name], a.clock)
                           for name in ("baseline", "fast", "oracle", "plain_short", "slow") if name in rows}
    return cell


# ---------------------------------------------------------------- where the time goes


def _code_key(fn) -> tuple:
    code = inspect.unwrap(fn).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def phase_functions() -> Dict[str, list]:
    """Functions whose inclusive time makes up each phase of a step (LLaVA's, DualSpeed's and transformers')."""
    from transformers.models.llama.modeling_llama import LlamaModel

    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    return {
        "vision + projector": [CLIPVisionTower.forward, torch.nn.Sequential.forward],
        "selection": [prune_indices],
        "LLM forward": [LlamaModel.forward],
        "backward": [torch.autograd.backward],
    }


def profile_phases(fn: Callable[[], object], clock: str) -> Dict[str, float]:
    """Seconds of one call of `fn` per phase (cProfile inclusive times on `clock`); "other" is the rest: input
    splicing, isolator, LM head and loss, Python overhead."""
    timer = CLOCKS[clock]
    prof = cProfile.Profile(timer)
    start = timer()
    prof.enable()
    fn()
    prof.disable()
    total = timer() - start
    stats = pstats.Stats(prof).stats
    out = {phase: sum(stats[k][3] for k in map(_code_key, fns) if k in stats) for phase, fns in phase_functions().items()}
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out
