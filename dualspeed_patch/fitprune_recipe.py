"""Fit a FitPrune recipe for a LLaVA model under an LLM FLOPs budget.

    python -m dualspeed_patch.fitprune_recipe --model-path PATH [--model-base BASE] --data-path data.json \
        --image-folder DIR --num-samples 8 --flops-budget 0.5 --output recipe.json

FitPrune (arXiv 2409.10197) treats pruning as keeping the attention distributions of a small batch close to those
of the unpruned model. The steps, all on full-token inputs (no mode isolator), without gradient:

1. Reference pass (no pruning): at every decoder layer l, each image's self and cross attention masses
   S_i(l) = Σ_j s_j and C_i(l) = Σ_j c_j (`dualspeed_patch.visual_attention`).
2. Pass at threshold alpha: layer by layer, each image drops the longest run of its lowest-cross tokens whose removal
   keeps at least (1 - alpha)·C_i(l) of the current cross mass, likewise for self attention, and removes the tokens in
   both runs. The pass stops pruning at the first layer where the recipe so far, kept constant for the remaining
   layers, fits the budget. The recipe is the batch-mean remaining count per layer (as a fraction of each image's
   tokens, times N, rounded half up).
3. Binary search on alpha in [0, 1] (to `--alpha-tolerance`) for the smallest alpha whose recipe's estimated FLOPs
   ratio (`dualspeed_patch.llm_flops`: text tokens counted at every layer, visual tokens as the recipe says) is
   within the budget. alpha = 1 drops every visual token after layer 0; a budget below that is refused.

All samples go through the model as one batch (keep `--num-samples` small). Attention probabilities are recomputed
from each layer's q / k projections, so the model keeps its SDPA / FlashAttention implementation.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .fitprune import FitPruneRecipe
from .inputs import build_llm_inputs, visual_sequences
from .k_rule import round_half_up
from .layer_pruning import LayerPruning, TokenMap, cumsum_in_group, map_tokens
from .llm_flops import LlmShape, flops_ratio
from .state import state_of
from .visual_attention import VisualScores

FLOPS_MODEL = ("per decoder layer on n tokens: 2n(d·qw + 2d·kvw + qw·d + 3d·f) linear + 4n²·qw attention "
               "(qw = heads·head_dim, kvw = kv_heads·head_dim); text tokens at every layer, LM head excluded")


@dataclass
class FitBatch:
    """The fitting batch, encoded once: LLM input embeddings, mask, token map, and per-image facts."""

    embeds: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    tokens: TokenMap
    num_images: int
    image_tokens: torch.Tensor  # [I] visual tokens of each image present in the input
    fixed_tokens: float  # mean non-visual (text) tokens of the samples, for the FLOPs model


def per_image_sum(values: torch.Tensor, image: torch.Tensor, num_images: int) -> torch.Tensor:
    """[I] sums of `values` [B, T] over each image's tokens (positions with image < 0 are ignored)."""
    out = torch.zeros(num_images + 1, dtype=values.dtype, device=values.device)
    return out.scatter_add_(0, (image + 1).flatten(), values.flatten())[1:]


@torch.no_grad()
def prepare_batch(model, batch: dict) -> FitBatch:
    """Encode the images once and build the full-token LLM input of a collated LLaVA batch."""
    visual, lengths, _ = visual_sequences(model, state_of(model), batch["images"], pruning=False,
                                          image_sizes=batch.get("image_sizes"))
    input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
    _, _, mask, embeds, labels = build_llm_inputs(model, input_ids, None, attention_mask, batch.get("labels"),
                                                  visual, lengths)
    tokens = map_tokens(input_ids, attention_mask, labels, lengths, visual.shape[1],
                        max_length=getattr(model.config, "tokenizer_model_max_length", None),
                        padding_side=getattr(model.config, "tokenizer_padding_side", "right"))
    num_images = visual.shape[0]
    image_tokens = per_image_sum(tokens.visual.long(), tokens.image, num_images)
    with_image = tokens.visual.any(dim=1)
    if not bool(with_image.any()):
        raise ValueError("the fitting batch has no visual tokens: give samples with images")
    text = (tokens.real & ~tokens.visual).sum(dim=1)[with_image].float().mean().item()
    return FitBatch(embeds, mask, tokens, num_images, image_tokens, text)


def _run(model, fit: FitBatch, policy) -> None:
    llm = model.get_model()
    with torch.no_grad(), LayerPruning(llm, fit.tokens, policy):
        llm(inputs_embeds=fit.embeds, attention_mask=fit.attention_mask, use_cache=False)


class ReferencePolicy:
    """Records each image's self and cross attention mass at every layer; prunes nothing."""

    def __init__(self, num_layers: int, num_images: int):
        self.layers = frozenset(range(num_layers))
        self.num_images = num_images
        self.self_mass: dict[int, torch.Tensor] = {}
        self.cross_mass: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, scores: VisualScores, tokens: TokenMap):
        self.self_mass[layer] = per_image_sum(scores.self_attention, tokens.image, self.num_images)
        self.cross_mass[layer] = per_image_sum(scores.cross_attention, tokens.image, self.num_images)
        return None


class ThresholdPolicy:
    """One fitting pass at threshold `alpha` (module docstring, step 2); records every image's remaining tokens.

    `fits(recipe_prefix, current)` says whether keeping `current` visual tokens from this layer on meets the budget.
    Host synchronisations here are fine: fitting is not training.
    """

    def __init__(self, alpha: float, reference: ReferencePolicy, fits: Callable[[list, int], bool],
                 to_count: Callable[[torch.Tensor], int]):
        self.alpha = float(alpha)
        self.reference = reference
        self.layers = reference.layers
        self.fits, self.to_count = fits, to_count
        self.stopped = False
        self.recipe: list[int] = []

    def __call__(self, layer: int, scores: VisualScores, tokens: TokenMap):
        current = per_image_sum(tokens.visual.long(), tokens.image, self.reference.num_images)
        if not self.stopped and self.fits(self.recipe, self.to_count(current)):
            self.stopped = True
        if self.stopped:
            self.recipe.append(self.to_count(current))
            return None
        keep_fraction = 1.0 - self.alpha
        drop = tokens.visual.clone()
        for values, reference in ((scores.cross_attention, self.reference.cross_mass[layer]),
                                  (scores.self_attention, self.reference.self_mass[layer])):
            total = per_image_sum(values, tokens.image, self.reference.num_images)
            ascending = cumsum_in_group(values, tokens.image, descending=False)
            index = tokens.image.clamp(min=0)
            target = keep_fraction * reference[index]
            slack = 1e-6 * reference[index] + 1e-12
            drop &= (total[index] - ascending) >= target - slack
        kept = current - per_image_sum(drop.long(), tokens.image, self.reference.num_images)
        self.recipe.append(self.to_count(kept))
        return tokens.visual & ~drop


def fit_recipe(model, batch: dict, flops_budget: float, alpha_tolerance: float = 0.01, progress: bool = True,
               info: Optional[dict] = None) -> FitPruneRecipe:
    """Fit a recipe on a collated LLaVA batch (input_ids, attention_mask, labels, images[, image_sizes]) so that the
    estimated LLM FLOPs ratio is at most `flops_budget` (module docstring has the algorithm)."""
    budget = float(flops_budget)
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"flops_budget must be in (0, 1], got {flops_budget!r}")
    if not 0.0 < float(alpha_tolerance) < 1.0:
        raise ValueError(f"alpha_tolerance must be in (0, 1), got {alpha_tolerance!r}")
    shape = LlmShape.from_config(model.config)
    fit = prepare_batch(model, batch)
    present = fit.image_tokens > 0
    n_ref = round_half_up(fit.image_tokens[present].float().mean().item())
    fractions_of = fit.image_tokens.clamp(min=1).float()

    def to_count(per_image: torch.Tensor) -> int:
        return min(n_ref, round_half_up(n_ref * (per_image.float() / fractions_of)[present].mean().item()))

    def ratio_of(remaining: list) -> float:
        return flops_ratio(shape, fit.fixed_tokens, n_ref, remaining)

    def fits(prefix: list, current: int) -> bool:
        return ratio_of(prefix + [current] * (shape.num_layers - len(prefix))) <= budget

    steps = 2 + max(1, math.ceil(math.log2(1.0 / float(alpha_tolerance))))
    bar = _progress(steps, progress)
    reference = ReferencePolicy(shape.num_layers, fit.num_images)
    _run(model, fit, reference)
    bar.update(1)

    def attempt(alpha: float) -> tuple:
        policy = ThresholdPolicy(alpha, reference, fits, to_count)
        _run(model, fit, policy)
        remaining = list(policy.recipe)
        for layer in range(1, len(remaining)):  # the batch mean is already non-increasing; guard float noise
            remaining[layer] = min(remaining[layer], remaining[layer - 1])
        ratio = ratio_of(remaining)
        bar.update(1)
        bar.set_postfix(alpha=f"{alpha:.3f}", flops=f"{ratio:.3f}")
        return remaining, ratio

    best_alpha, (best, best_ratio) = 1.0, attempt(1.0)
    if best_ratio > budget:
        bar.close()
        raise ValueError(
            f"flops_budget {budget} is unreachable: even dropping every visual token after layer 0 leaves an "
            f"estimated FLOPs ratio of {best_ratio:.4f} ({fit.fixed_tokens:.0f} text tokens, {n_ref} visual tokens)"
        )
    low, high = 0.0, 1.0
    while high - low > float(alpha_tolerance):
        mid = (low + high) / 2
        remaining, ratio = attempt(mid)
        if ratio <= budget:
            high, best_alpha, best, best_ratio = mid, mid, remaining, ratio
        else:
            low = mid
    bar.close()
    details = dict(info or {})
    details.update(alpha=best_alpha, alpha_tolerance=float(alpha_tolerance), text_tokens=fit.fixed_tokens,
                   num_images=int(present.sum()), llm=shape.to_dict(), flops_model=FLOPS_MODEL)
    return FitPruneRecipe(visual_tokens=n_ref, remaining=tuple(best), flops_budget=budget, flops_ratio=best_ratio,
                          info=details)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="FitPrune fit", unit="pass", file=sys.stderr)


def summary(recipe: FitPruneRecipe, output: str) -> str:
    """One line: budget, estimated FLOPs ratio, alpha, and the token counts where they change."""
    layers = sorted(recipe.pruning_layers())
    steps = ", ".join(f"L{layer}:{recipe.remaining[layer]}" for layer in layers) or "none"
    return (f"FitPrune recipe: budget {recipe.flops_budget:.3f} -> estimated LLM FLOPs ratio {recipe.flops_ratio:.3f} "
            f"(alpha {recipe.info.get('alpha', float('nan')):.3f}); {recipe.visual_tokens} visual tokens, kept after "
            f"layer {steps}; written to {output}")


# ------------------------------------------------------------------------------------------------ command line

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fit a FitPrune layer-wise visual-token pruning recipe under a FLOPs "
                                                 "budget (for --vtp_method fitprune --fitprune_recipe).")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--data-path", required=True,
                        help="LLaVA-format JSON list; the first samples with an image are used")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--flops-budget", type=float, default=0.5, help="target LLM FLOPs / unpruned FLOPs, in (0, 1]")
    parser.add_argument("--output", required=True)
    parser.add_argument("--version", default="v1",
                        help="conversation template of the data (v1 for SFT, plain for pretraining)")
    parser.add_argument("--alpha-tolerance", type=float, default=0.01)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if not 0.0 < args.flops_budget <= 1.0:
        parser.error(f"--flops-budget must be in (0, 1], got {args.flops_budget}")
    return args


def load_fitting_batch(model, tokenizer, image_processor, args: argparse.Namespace) -> dict:
    """The first `--num-samples` samples with an image, preprocessed as training does and collated."""
    from llava.train.arguments import DataArguments
    from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset

    config = model.config
    data_args = DataArguments(data_path=args.data_path, image_folder=args.image_folder,
                              image_aspect_ratio=getattr(config, "image_aspect_ratio", None) or "square",
                              image_grid_pinpoints=getattr(config, "image_grid_pinpoints", None))
    data_args.image_processor = image_processor
    data_args.is_multimodal = True
    data_args.conv_version = args.version
    data_args.mm_use_im_start_end = bool(getattr(config, "mm_use_im_start_end", False))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    dataset = LazySupervisedDataset(args.data_path, tokenizer, data_args)
    chosen = [i for i, record in enumerate(dataset.records) if "image" in record][: args.num_samples]
    if not chosen:
        raise ValueError(f"{args.data_path}: no sample has an image")
    batch = DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in chosen])
    device, dtype = model.device, model.dtype
    moved = {}
    for key, value in batch.items():
        if key == "images":
            value = value.to(device, dtype) if torch.is_tensor(value) else [v.to(device, dtype) for v in value]
        elif torch.is_tensor(value):
            value = value.to(device)
        moved[key] = value
    return moved


def main(argv=None) -> FitPruneRecipe:
    args = parse_args(argv)
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), device=args.device)
    if image_processor is None:
        raise ValueError(f"{args.model_path} did not load as a LLaVA model (no vision tower)")
    model.eval()
    batch = load_fitting_batch(model, tokenizer, image_processor, args)
    info = dict(model_path=args.model_path, model_base=args.model_base, data_path=args.data_path,
                num_samples=int(batch["input_ids"].shape[0]), version=args.version)
    recipe = fit_recipe(model, batch, args.flops_budget, args.alpha_tolerance, progress=not args.no_progress, info=info)
    recipe.save(args.output)
    print(summary(recipe, args.output), flush=True)
    return recipe


if __name__ == "__main__":
    main()
