"""The variants that bench/step_costs.py times: each one training step (or one selection) as a callable.

baseline (plain LLaVA), fast / slow (DualSpeed), oracle (a zero-cost first-K selector: the token-count limit),
plain_short (plain LLaVA at the fast step's length), pruned_forward, the fast-mode options (layer skipping,
average pooling, FitPrune with a recipe fitted on the timed batch) and the selection of each built-in pruner.
Kept apart from the timing harness so that what is timed reads on its own.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, Optional, Tuple

import torch

from common import REPO  # noqa: F401  (puts the repository on sys.path before the imports below)

import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch import DualSpeedArguments, kept_tokens_tensor  # noqa: E402
from dualspeed_patch.fitprune import FitPruneRecipe  # noqa: E402
from dualspeed_patch.fitprune_recipe import fit_recipe, prepare_batch  # noqa: E402
from dualspeed_patch.llm_flops import LlmShape, flops_ratio  # noqa: E402
from dualspeed_patch.modes import ModeSchedule  # noqa: E402
from dualspeed_patch.pruners import available_pruners, check_inputs, effective_keep, prune_indices, register_pruner  # noqa: E402
from dualspeed_patch.state import load_recipe, state_of  # noqa: E402
from dualspeed_patch import inputs as ds_inputs  # noqa: E402

ORACLE_PRUNER = "bench_first_k"
# Built-in pruners whose context is cheap to supply here (FasterVLM gets a random CLS attention, CDPruner q = 1).
SELECTION_PRUNERS = ("divprune", "random", "uniform", "cdpruner", "fastervlm")

# Fast-mode options timed against the baseline step, and the stages they apply to (layer skipping and FitPrune are
# SFT options here; the compressor replaces DivPrune in pretraining).
OPTION_ROWS = {"fast+layerskip": ("sft",), "fast+avgpool": ("pretrain",), "fast+fitprune": ("sft",)}
LAYER_SKIP = {"layer_skip_ratio": 0.5, "layer_skip_schedule": "uniform"}  # a fixed skipped set, the same each step
FITPRUNE_BUDGET = 0.5  # target fraction of the LLM FLOPs

@torch.no_grad()
def first_k_select(features: torch.Tensor, keep, valid: Optional[torch.Tensor] = None, **context) -> torch.Tensor:
    """The oracle's selector: the first k_b tokens of each image, no work on the features (a [B, K] arange).
    Assumes each row's first k_b tokens are valid, as for single-view images."""
    k = effective_keep(keep, check_inputs(features, valid))
    width = int(k.max()) if k.numel() else 0
    cols = torch.arange(width, device=features.device).expand(features.shape[0], width)
    return torch.minimum(cols, (k - 1).clamp(min=0).unsqueeze(1))


register_pruner(ORACLE_PRUNER, first_k_select)

def dualspeed_args(a: argparse.Namespace, method: str, slow_ratio: float, **options) -> DualSpeedArguments:
    """DualSpeed settings of one timed variant; `options` are further DualSpeedArguments fields (layer skipping,
    FitPrune recipe)."""
    return DualSpeedArguments(dualspeed=True, pruning_ratio=a.pruning_ratio, slow_mode_ratio=slow_ratio,
                              vtp_method=method, mode_isolator_len=a.isolator_len, **options)


def fitprune_recipe_path(llava: torch.nn.Module, batch: Dict[str, object],
                         directory: str) -> Tuple[str, FitPruneRecipe]:
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

def step_rows(a: argparse.Namespace, llava: torch.nn.Module, step_model: torch.nn.Module, batch: Dict[str, object],
              stage: str, workdir: str) -> Tuple[Dict[str, Callable[[], object]], dict]:
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
        state = state_of(llava)
        recipe = load_recipe(llava, args)  # read and checked once, outside the timed step

        def run():
            state.args, state.recipe = args, recipe
            state.schedule = ModeSchedule(a.seed, args.slow_mode_ratio)  # ratio 0: fast, 1: slow
            train_step()
        return run

    # Each image's final visual sequence (packed on NeXT), as every pruner sees it.
    state_of(llava).args = fast_args
    with torch.no_grad():
        features, lengths, _ = ds_inputs.visual_sequences(llava, state_of(llava), batch["images"], image_sizes=batch.get("image_sizes"))
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
        state_of(llava).args, state_of(llava).schedule = fast_args, None
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
