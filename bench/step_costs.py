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
Times are CPU time of the process by default (one torch thread: the work done, nearly blind to other processes on
a shared machine); wall time is recorded too.
From these it predicts the end-to-end speed-up (pretraining: baseline/fast; SFT: baseline/((1-r) fast + r slow))
and checks it against short real LLaVATrainer runs of the same shapes, baseline and DualSpeed advancing in
lockstep (one optimizer step each in turn).

    python bench/step_costs.py --profile       # full run (~11 min, one thread) + one profiled step per variant
    python bench/step_costs.py --quick         # one tiny iteration in seconds (the smoke test runs it)

Writes outputs/step_costs.json and outputs/step_costs.md (override with --out).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import inspect
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CLOCKS,
    REPO,
    SyntheticDataset,
    anyres_batch,
    build_model,
    collate,
    llm_parameters,
    prepare_stage,
    summarise,
    synthetic_batch,
    time_interleaved,
)

import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch import DualSpeedArguments, kept_tokens_tensor  # noqa: E402
from dualspeed_patch.fitprune import FitPruneRecipe  # noqa: E402
from dualspeed_patch.fitprune_recipe import fit_recipe, prepare_batch  # noqa: E402
from dualspeed_patch.isolator import attach_isolator  # noqa: E402
from dualspeed_patch.llm_flops import LlmShape, flops_ratio  # noqa: E402
from dualspeed_patch.modes import ModeSchedule, is_slow_step  # noqa: E402
from dualspeed_patch.pruners import available_pruners, check_inputs, effective_keep, prune_indices, register_pruner  # noqa: E402

ORACLE_PRUNER = "bench_first_k"
# Built-in pruners whose context is cheap to supply here (FasterVLM gets a random CLS attention, CDPruner q = 1).
SELECTION_PRUNERS = ("divprune", "random", "uniform", "cdpruner", "fastervlm")

# Fast-mode options timed against the baseline step, and the stages they apply to (layer skipping and FitPrune are
# SFT options here; the compressor replaces DivPrune in pretraining).
OPTION_ROWS = {"fast+layerskip": ("sft",), "fast+avgpool": ("pretrain",), "fast+fitprune": ("sft",)}
LAYER_SKIP = {"layer_skip_ratio": 0.5, "layer_skip_schedule": "uniform"}  # a fixed skipped set, the same each step
FITPRUNE_BUDGET = 0.5  # target fraction of the LLM FLOPs

TARGETS = {
    "fast_over_oracle": 1.03,
    "slow_over_reference": 1.10,
    "divprune_share": 0.01,
    "e2e_relative_error": 0.05,
}


@torch.no_grad()
def first_k_select(features: torch.Tensor, keep, valid: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
    """The oracle's selector: the first k_b tokens of each image, no work on the features (a [B, K] arange).
    Assumes each row's first k_b tokens are valid, as for single-view images."""
    k = effective_keep(keep, check_inputs(features, valid))
    width = int(k.max()) if k.numel() else 0
    cols = torch.arange(width, device=features.device).expand(features.shape[0], width)
    return torch.minimum(cols, (k - 1).clamp(min=0).unsqueeze(1))


register_pruner(ORACLE_PRUNER, first_k_select)


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


def dualspeed_args(a: argparse.Namespace, method: str, slow_ratio: float, **options) -> DualSpeedArguments:
    """DualSpeed settings of one timed variant; `options` are further DualSpeedArguments fields (layer skipping,
    FitPrune recipe)."""
    return DualSpeedArguments(dualspeed=True, pruning_ratio=a.pruning_ratio, slow_mode_ratio=slow_ratio,
                              vtp_method=method, mode_isolator_len=a.isolator_len, **options)


def fitprune_recipe_path(llava, batch: Dict[str, object], directory: str) -> Tuple[str, FitPruneRecipe]:
    """Fit a FitPrune recipe on the timed batch itself and save it under `directory` (the fast step loads recipes
    from a file); returns (path, recipe).

    Budget: FITPRUNE_BUDGET of the LLM FLOPs, or, when the text alone keeps that out of reach (few layers, short
    images: --quick), the smallest reachable ratio (every visual token dropped after layer 0), so that a recipe
    exists for every cell. Fitting needs a few no-grad forwards; it runs before timing and is not timed.
    """
    fit = prepare_batch(llava, batch)
    shape = LlmShape.from_config(llava.config)
    n_ref = int(fit.image_tokens[fit.image_tokens > 0].float().mean().round())
    floor = flops_ratio(shape, fit.fixed_tokens, n_ref, [0] * shape.num_layers)
    budget = max(FITPRUNE_BUDGET, floor + 1e-9)
    recipe = fit_recipe(llava, batch, budget, progress=False, info={"source": "bench/step_costs.py"})
    path = os.path.join(directory, "fitprune_recipe.json")
    recipe.save(path)
    return path, recipe


# ---------------------------------------------------------------- per-step costs


def step_rows(a, llava, step_model, batch: Dict[str, object], stage: str, workdir: str):
    """The timed variants of one (counts, stage) cell as zero-argument callables, and the cell's token counts
    (`workdir`: where the cell's FitPrune recipe file goes)."""
    fast_args, oracle_args = dualspeed_args(a, "divprune", 0.0), dualspeed_args(a, ORACLE_PRUNER, 0.0)
    slow_args = dualspeed_args(a, "divprune", 1.0)

    def train_step(inputs=batch):
        step_model.zero_grad(set_to_none=True)
        step_model(**inputs).loss.backward()

    def baseline():
        patch.remove()  # plain LLaVA: its own prepare_inputs_labels_for_multimodal and forward
        try:
            train_step()
        finally:
            patch.apply()

    def dualspeed_step(args: DualSpeedArguments):
        def run():
            llava._dualspeed_args = args
            llava._dualspeed_schedule = ModeSchedule(a.seed, args.slow_mode_ratio)  # ratio 0: fast, 1: slow
            train_step()
        return run

    # Each image's final visual sequence (packed on NeXT), as every pruner sees it.
    llava._dualspeed_args = fast_args
    with torch.no_grad():
        features, lengths, _ = patch.visual_sequences(llava, batch["images"], image_sizes=batch.get("image_sizes"))
    b, n = features.shape[:2]
    keep = kept_tokens_tensor(lengths, a.pruning_ratio)
    valid = torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    short = int(keep.max()) + a.isolator_len
    views = batch["images"]
    # plain_short: every view is encoded as in the real step, then LLaVA gets the first K + l tokens of each image
    # through its single-view path (a stand-in 4-D image), so no packing, selection or isolator is involved.
    plain_inputs = {k: v for k, v in batch.items() if k != "image_sizes"}
    if views.ndim == 5:
        plain_inputs["images"] = views[:, 0]

    def short_features(_images):
        encode = type(llava).encode_images
        feats = encode(llava, views.flatten(0, 1)).unflatten(0, views.shape[:2]).flatten(1, 2) if views.ndim == 5 \
            else encode(llava, views)
        return feats[:, :short]

    def plain_short():
        patch.remove()
        llava.encode_images = short_features
        try:
            train_step(plain_inputs)
        finally:
            del llava.encode_images
            patch.apply()

    def pruned_forward():
        llava._dualspeed_args, llava._dualspeed_schedule = fast_args, None
        with torch.no_grad(), patch.visual_mode(llava, patch.FAST):
            step_model(**batch)

    rows = {"baseline": baseline, "fast": dualspeed_step(fast_args), "oracle": dualspeed_step(oracle_args),
            "plain_short": plain_short}
    if stage == "sft":  # pretraining runs fast steps only (the paper's recipe)
        rows.update(slow=dualspeed_step(slow_args), pruned_forward=pruned_forward)
    options = [name for name, stages in OPTION_ROWS.items() if stage in stages]
    fitprune_info = None
    if "fast+layerskip" in options:
        rows["fast+layerskip"] = dualspeed_step(dualspeed_args(a, "divprune", 0.0, **LAYER_SKIP))
    if "fast+avgpool" in options:
        rows["fast+avgpool"] = dualspeed_step(dualspeed_args(a, "avgpool", 0.0))
    if "fast+fitprune" in options:
        path, recipe = fitprune_recipe_path(llava, batch, workdir)
        rows["fast+fitprune"] = dualspeed_step(dualspeed_args(a, "fitprune", 0.0, fitprune_recipe=path))
        fitprune_info = {"visual_tokens": recipe.visual_tokens, "remaining": list(recipe.remaining),
                         "flops_budget": recipe.flops_budget, "flops_ratio": recipe.flops_ratio}
    features = features.detach()
    context = {"seed": a.seed + 1, "cls_attention": torch.randn(b, n).masked_fill(~valid, -1e9).softmax(dim=1)}
    for name in SELECTION_PRUNERS:
        if name in available_pruners():
            rows[f"select/{name}"] = (lambda m=name: prune_indices(m, features, keep, valid, **context))
    info = {"visual_tokens": int(lengths.max()), "kept_tokens": int(keep.max()),
            "views_per_image": int(views.shape[1]) if views.ndim == 5 else 1}
    if fitprune_info is not None:
        info["fitprune_recipe"] = fitprune_info
    return rows, info


def round_medians(samples: List[float], rounds: int) -> List[float]:
    """Median of each round's samples (a variant timed k times per round has k consecutive samples per round)."""
    k = len(samples) // rounds
    return [statistics.median(samples[i * k:(i + 1) * k]) for i in range(rounds)]


def paired_ratio(times: Dict[str, List[float]], num: str, den: List[str], rounds: int) -> Dict[str, float]:
    """num / sum(den) within each round (same round = same load): the median over rounds and the min/max."""
    per = {k: round_medians(times[k], rounds) for k in [num, *den]}
    per_round = [per[num][i] / sum(per[d][i] for d in den) for i in range(rounds)]
    return {"value": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def measure_cell(a, pristine, count: str, stage: str, counts: dict, stages: dict, image_side: int) -> dict:
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
        patch.apply()
        weights = {name: 1 if name in ("baseline", "slow") else a.cheap_repeats for name in rows}
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


# ---------------------------------------------------------------- short real training runs


def schedule_seed(steps: int, warmup: int, slow_ratio: float) -> int:
    """Smallest seed whose schedule has exactly round(r * timed) slow steps among the timed steps (the run's mix
    is the nominal r as nearly as an integer count allows) and, with >= 2 warm-up steps, both modes in the warm-up
    (both code paths warm before timing starts)."""
    timed = steps - warmup
    want = round(slow_ratio * timed)
    for seed in range(100_000):
        slow = [is_slow_step(seed, g, 0, slow_ratio) for g in range(steps)]
        both = warmup < 2 or slow_ratio in (0.0, 1.0) or len(set(slow[:warmup])) == 2
        if both and sum(slow[warmup:]) == want:
            return seed
    raise RuntimeError(f"no schedule seed gives {want} slow steps in {timed} timed steps at r={slow_ratio}")


class Lockstep:
    """Lets several Trainer runs, each in its own thread, take turns one optimizer step at a time, so that load
    changes on a shared machine hit them alike. Only the runner holding the turn works (the others wait), so the
    process's CPU time between a runner's resume and its hand-off is that runner's own; those intervals are
    recorded per step on both clocks. `prepare(name)` is called whenever a runner (re)gains the turn."""

    def __init__(self, names: List[str], prepare: Callable[[str], None]):
        self.names, self.prepare = list(names), prepare
        self.turn, self.done = self.names[0], set()
        self.cond = threading.Condition()
        self.start: Dict[str, Dict[str, float]] = {}
        self.steps: Dict[str, Dict[str, List[float]]] = {n: {c: [] for c in CLOCKS} for n in self.names}

    def _next(self, name: str) -> str:
        i = self.names.index(name)
        for other in self.names[i + 1:] + self.names[:i + 1]:
            if other not in self.done:
                return other
        return name

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self.prepare(name)
        self.start[name] = {c: read() for c, read in CLOCKS.items()}

    def step_done(self, name: str) -> None:
        """End of an optimizer step: record it, hand the turn on, wait for it to come back."""
        for c, read in CLOCKS.items():
            self.steps[name][c].append(read() - self.start[name][c])
        with self.cond:
            self.turn = self._next(name)
            self.cond.notify_all()
        self.acquire(name)

    def finish(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
            self.turn = self._next(name)
            self.cond.notify_all()

    def callback(self, name: str):
        """A TrainerCallback that takes turns as `name`."""
        from transformers import TrainerCallback

        lock = self

        class _TakeTurns(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                lock.start[name] = {c: read() for c, read in CLOCKS.items()}  # setup before this is not timed

            def on_step_end(self, args, state, control, **kwargs):
                lock.step_done(name)

        return _TakeTurns()

    def run(self, jobs: Dict[str, Callable[[], object]]) -> None:
        """Run each job (a `trainer.train`) in its own thread, taking turns; re-raise the first failure."""
        errors: List[BaseException] = []
        threads_per_run = torch.get_num_threads()

        def work(name: str) -> None:
            torch.set_num_threads(threads_per_run)
            try:
                self.acquire(name)
                jobs[name]()
            except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
                errors.append(exc)
            finally:
                self.finish(name)

        threads = [threading.Thread(target=work, args=(n,), name=f"bench-{n}") for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def build_trainer(a, pristine, stage: str, s: dict, batch: int, image_side: int, dualspeed: bool, seed: int,
                  output_dir: str, callbacks: list):
    """A LLaVATrainer for a short run of `stage` (plain LLaVA, or DualSpeed set up as its training entry does);
    returns (trainer, LLaVA model)."""
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer
    from dualspeed_patch.train import setup_dualspeed

    model = copy.deepcopy(pristine)
    step_model = prepare_stage(model, stage, lora_r=a.lora_r, lora_alpha=2 * a.lora_r)
    data = SyntheticDataset(a.e2e_steps * batch, s["text"], s["answer"], s["image_at"], image_side, a.vocab, seed=a.seed)
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch, max_steps=a.e2e_steps, learning_rate=s["lr"],
        lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=True, seed=seed, dataloader_num_workers=0, disable_tqdm=True, lora_enable=stage == "sft",
        mm_projector_lr=s["projector_lr"],
    )
    args.tune_mm_mlp_adapter = stage == "pretrain"  # as llava.train.train sets it
    callbacks = list(callbacks)
    if dualspeed:
        ds = dualspeed_args(a, "divprune", a.slow_ratio)
        model_args = SimpleNamespace(pretrain_mm_mlp_adapter=None, tune_mm_mlp_adapter=stage == "pretrain")
        callbacks += setup_dualspeed(step_model, model_args, SimpleNamespace(), args, ds)
    trainer = LLaVATrainer(model=step_model, args=args, train_dataset=data, data_collator=collate, callbacks=callbacks)
    return trainer, model


def measure_e2e(a, pristine, stage: str, counts: dict, stages: dict, image_side: int, cell: dict) -> dict:
    """Baseline and DualSpeed LLaVATrainer runs of one stage, advancing in lockstep (one optimizer step each in
    turn), and the speed-up predicted from the cell's step costs for the slow share the run actually had."""
    s, batch = stages[stage], counts["llava15"]["batch"]
    r = a.slow_ratio if stage == "sft" else 0.0
    seed = schedule_seed(a.e2e_steps, a.e2e_warmup, r) if 0.0 < r < 1.0 else a.seed
    timed = a.e2e_steps - a.e2e_warmup
    slow_timed = sum(is_slow_step(seed, g, 0, r) for g in range(a.e2e_warmup, a.e2e_steps))
    share = slow_timed / timed
    lock = Lockstep(["baseline", "dualspeed"], lambda name: (patch.apply if name == "dualspeed" else patch.remove)())
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.apply()
        runs = {name: build_trainer(a, pristine, stage, s, batch, image_side, name == "dualspeed", seed,
                                    str(Path(tmp) / name), [lock.callback(name)]) for name in lock.names}
        lock.run({name: trainer.train for name, (trainer, _) in runs.items()})
        patch.apply()
    result = {"steps": a.e2e_steps, "warmup_steps": a.e2e_warmup, "timed_steps": timed, "schedule_seed": seed,
              "slow_ratio": r, "slow_steps_timed": slow_timed, "slow_share_timed": share,
              "slow_steps_expected_total": sum(is_slow_step(seed, g, 0, r) for g in range(a.e2e_steps))}
    for name, (_, model) in runs.items():
        steps = lock.steps[name]
        if len(steps["wall"]) != a.e2e_steps:
            raise RuntimeError(f"{stage} {name} run: expected {a.e2e_steps} optimizer steps, got {len(steps['wall'])}")
        metrics = getattr(model, "_dualspeed_metrics", None)
        result[name] = {c: {"seconds": sum(t[a.e2e_warmup:]), "per_step": summarise(t[a.e2e_warmup:])}
                        for c, t in steps.items()}
        result[name]["slow_steps_run_total"] = None if metrics is None else metrics.slow_steps
    med = {k: v["median"] for k, v in cell["rows"].items()}
    predicted = med["baseline"] / ((1 - share) * med["fast"] + share * med.get("slow", med["fast"]))
    measured = {c: result["baseline"][c]["seconds"] / result["dualspeed"][c]["seconds"] for c in CLOCKS}
    other = next(c for c in CLOCKS if c != a.clock)
    result.update(measured_speedup=measured[a.clock], predicted_speedup=predicted,
                  relative_error=measured[a.clock] / predicted - 1.0, **{f"measured_speedup_{other}": measured[other]})
    return result


# ---------------------------------------------------------------- report


def verdicts(result: dict) -> List[dict]:
    """Every target with its measured value and PASS/MISS (`kind`: ratio, share or error, for formatting)."""
    out = []

    def add(target: str, kind: str, value: float, limit: float, ok: bool) -> None:
        out.append({"target": target, "kind": kind, "value": value, "limit": limit, "pass": bool(ok)})

    for key, cell in result["cells"].items():
        r = cell["ratios"]
        v = r["fast_over_oracle"]["value"]
        add(f"fast ≤ 1.03 × oracle [{key}]", "ratio", v, TARGETS["fast_over_oracle"], v <= TARGETS["fast_over_oracle"])
        if "slow_over_reference" in r:
            v = r["slow_over_reference"]["value"]
            add(f"slow ≤ 1.10 × (baseline + pruned forward) [{key}]", "ratio", v, TARGETS["slow_over_reference"],
                v <= TARGETS["slow_over_reference"])
        if key.startswith("llava15/") and "share/divprune" in r:
            v = r["share/divprune"]["value"]
            add(f"DivPrune selection < 1% of fast step [{key}]", "share", v, TARGETS["divprune_share"],
                v < TARGETS["divprune_share"])
    for stage, e in result["e2e"].items():
        v = e["relative_error"]
        add(f"end-to-end speed-up within 5% of predicted [llava15/{stage}]", "error", v, TARGETS["e2e_relative_error"],
            abs(v) <= TARGETS["e2e_relative_error"])
    return out


def _ms(row: Optional[dict]) -> str:
    if row is None:
        return "—"
    return f"{row['median'] * 1e3:.1f} [{row['min'] * 1e3:.1f}–{row['max'] * 1e3:.1f}]"


def _ratio(r: Optional[dict], digits: int = 3) -> str:
    if r is None:
        return "—"
    spread = f" [{r['min']:.{digits}f}–{r['max']:.{digits}f}]" if "min" in r else ""
    return f"{r['value']:.{digits}f}{spread}"


def markdown(result: dict) -> str:
    """The result as Markdown tables (ms: median [min–max] over calls; ratios: median [min–max] over rounds)."""
    cfg = result["config"]
    clock = cfg["clock"]
    lines = [
        f"Model: LLM {cfg['llm_parameters'] / 1e6:.1f}M parameters (hidden {cfg['hidden']}, {cfg['layers']} layers, "
        f"vocab {cfg['vocab']}), tiny CLIP, fp32, {cfg['threads']} thread(s); p = {cfg['pruning_ratio']}, "
        f"isolator l = {cfg['isolator_len']}, r = {cfg['slow_ratio']}, LoRA r = {cfg['lora_r']}; "
        f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up round(s), cheap variants timed "
        f"{cfg['cheap_repeats']}× per round; times on the {clock} clock. Times: median [min–max] over calls; "
        "ratios: taken within each round, median [min–max] over rounds.",
        "",
    ]
    lines += [f"- {note}" for note in result["notes"]] + [""]
    lines += ["| counts | stage | batch | seq full → fast | baseline ms | fast ms | oracle ms | plain short ms | slow ms | "
              "pruned fwd ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        rows = c["rows"]
        lines.append(f"| {count} | {stage} | {c['batch']} | {c['sequence_full']} → {c['sequence_fast']} | "
                     f"{_ms(rows['baseline'])} | {_ms(rows['fast'])} | {_ms(rows['oracle'])} | {_ms(rows['plain_short'])} | "
                     f"{_ms(rows.get('slow'))} | "
                     f"{_ms(rows.get('pruned_forward'))} |")
    lines += ["", "| counts | stage | fast / oracle (≤ 1.03) | slow / (baseline + pruned fwd) (≤ 1.10) | "
              "oracle / plain short | predicted speed-up | limit: baseline / oracle |", "|---|---|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        r = c["ratios"]
        pred = f"{r['predicted_speedup']['value']:.2f}× (r = {r['predicted_speedup']['slow_ratio']})"
        lines.append(f"| {count} | {stage} | {_ratio(r['fast_over_oracle'])} | {_ratio(r.get('slow_over_reference'))} | "
                     f"{_ratio(r['oracle_over_plain_short'])} | {pred} | {r['limit_speedup']['value']:.2f}× |")
    lines += ["", "| counts | stage | pruner | selection ms | share of fast step |", "|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        for name in SELECTION_PRUNERS:
            if f"select/{name}" in c["rows"]:
                share = c["ratios"][f"share/{name}"]
                lines.append(f"| {count} | {stage} | {name} | {_ms(c['rows'][f'select/{name}'])} | "
                             f"{share['value'] * 100:.2f}% [{share['min'] * 100:.2f}–{share['max'] * 100:.2f}] |")
    lines += ["", "| counts | stage | fast-mode variant | step ms | step / baseline step |", "|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        for name in ["fast", *OPTION_ROWS]:
            if name in c["rows"]:
                lines.append(f"| {count} | {stage} | {name} | {_ms(c['rows'][name])} | "
                             f"{_ratio(c['ratios'][f'{name}_over_baseline'])} |")
    for key, c in result["cells"].items():
        if "fitprune_recipe" in c:
            r = c["fitprune_recipe"]
            lines.append(f"\nFitPrune recipe [{key}]: fitted in-process on the timed batch for a budget of "
                         f"{r['flops_budget']:.3f} of the LLM FLOPs (estimate {r['flops_ratio']:.3f}); of "
                         f"{r['visual_tokens']} visual tokens, {r['remaining']} remain after each layer.")
    if result["e2e"]:
        lines += ["", f"| stage (LLaVA-1.5 counts) | timed steps (slow) | baseline s ({clock}) | DualSpeed s ({clock}) | "
                  "measured speed-up | "
                  "predicted | measured / predicted − 1 |", "|---|---|---|---|---|---|---|"]
        for stage, e in result["e2e"].items():
            wall = e.get("measured_speedup_wall", e["measured_speedup"])
            lines.append(f"| {stage} | {e['timed_steps']} ({e['slow_steps_timed']}) | {e['baseline'][clock]['seconds']:.2f} | "
                         f"{e['dualspeed'][clock]['seconds']:.2f} | {e['measured_speedup']:.2f}× (wall {wall:.2f}×) | "
                         f"{e['predicted_speedup']:.2f}× | {e['relative_error'] * 100:+.1f}% |")
    profiled = {k: c["profile"] for k, c in result["cells"].items() if "profile" in c}
    if profiled:
        phases = list(next(iter(profiled.values()))["baseline"])
        lines += ["", "Where the time goes (one profiled step, ms; cProfile inclusive times):", "",
                  "| counts | stage | step | " + " | ".join(phases) + " |", "|---|---|---|" + "---|" * len(phases)]
        for key, prof in profiled.items():
            count, stage = key.split("/")
            for row, ph in prof.items():
                lines.append(f"| {count} | {stage} | {row} | " + " | ".join(f"{ph[p] * 1e3:.1f}" for p in phases) + " |")
    lines += ["", "| target | value | limit | verdict |", "|---|---|---|---|"]
    for v in result["targets"]:
        if v["kind"] == "ratio":
            value, limit = f"{v['value']:.3f}", f"{v['limit']:.2f}"
        elif v["kind"] == "share":
            value, limit = f"{v['value'] * 100:.2f}%", f"< {v['limit'] * 100:.0f}%"
        else:
            value, limit = f"{v['value'] * 100:+.1f}%", f"±{v['limit'] * 100:.0f}%"
        lines.append(f"| {v['target']} | {value} | {limit} | {'PASS' if v['pass'] else 'MISS'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
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


def main(argv=None) -> dict:
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
