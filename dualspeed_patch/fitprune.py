"""FitPrune (arXiv 2409.10197) as DualSpeed's fast mode: `--vtp_method fitprune --fitprune_recipe recipe.json`.

FitPrune prunes *inside* the LLM. A recipe, fitted once per model by `python -m dualspeed_patch.fitprune_recipe`,
says how many of an image's N visual tokens remain after each decoder layer (non-increasing). At run time, after
each layer where the count drops, that layer's attention is recomputed from its q / k projections and each image
keeps its visual tokens of highest cross x self attention score (`dualspeed_patch.visual_attention`); the rest leave
the sequence for all later layers (`dualspeed_patch.layer_pruning`).

In DualSpeed's fast mode the LLM gets every visual token (no pre-LLM pruning; `--pruning_ratio` is not used) with
the mode isolator prefixed as usual, `[isolator; visual]`; the isolator, the text and the padding are never dropped.
The loss is next-token cross-entropy on the answer tokens at the kept positions, computed here (only answer
positions go through the LM head). In slow mode the teacher runs the same pruned forward without gradient; the
student, inference and plain LLaVA are untouched.

An image with n != N tokens (anyres) keeps round(n * remaining[l] / N) after layer l (half up, at most n).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional

import torch

from .inputs import build_llm_inputs
from .isolator import prefix_isolator
from .k_rule import scale_half_up
from .layer_pruning import LayerPruning, TokenMap, map_tokens, rank_in_group
from .pruners.registry import IN_LLM, register_method
from .visual_attention import VisualScores

METHOD = "fitprune"
RECIPE_FORMAT = "dualspeed-fitprune-recipe/1"


@dataclass(frozen=True)
class FitPruneRecipe:
    """How many of N visual tokens remain after each decoder layer: `remaining[l]`, non-increasing, in [0, N].

    `flops_budget` / `flops_ratio`: the budget it was fitted for and its estimated LLM FLOPs ratio
    (`dualspeed_patch.llm_flops`); `info`: free-form facts about the fit (model, data, alpha, FLOPs model).
    """

    visual_tokens: int
    remaining: tuple
    flops_budget: Optional[float] = None
    flops_ratio: Optional[float] = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.visual_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"FitPruneRecipe.visual_tokens must be an integer >= 1, got {n!r}")
        remaining = tuple(self.remaining)
        if not remaining:
            raise ValueError("FitPruneRecipe.remaining is empty; it needs one count per decoder layer")
        for layer, count in enumerate(remaining):
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n:
                raise ValueError(f"FitPruneRecipe.remaining[{layer}] must be an integer in [0, {n}], got {count!r}")
            if layer and count > remaining[layer - 1]:
                raise ValueError(
                    f"FitPruneRecipe.remaining must be non-increasing: layer {layer} keeps {count} > "
                    f"{remaining[layer - 1]} kept after layer {layer - 1}"
                )
        object.__setattr__(self, "remaining", remaining)

    @property
    def num_layers(self) -> int:
        return len(self.remaining)

    def pruning_layers(self) -> frozenset:
        """Layers after which the count drops (where attention is scored and tokens leave)."""
        before = (self.visual_tokens, *self.remaining[:-1])
        return frozenset(layer for layer, (a, b) in enumerate(zip(before, self.remaining)) if b < a)

    def keep(self, n: int, layer: int) -> int:
        """Visual tokens an image of `n` tokens keeps after `layer`: remaining[layer] scaled by n / N, rounded half
        up (exact integers), at most n."""
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"n (visual tokens of an image) must be an integer >= 0, got {n!r}")
        count = self.remaining[layer]
        if n == self.visual_tokens:
            return count
        return min(int(n), scale_half_up(int(n), Fraction(count, self.visual_tokens)))

    def check_model(self, config: Any) -> None:
        """Fail clearly when the recipe was fitted for a stack of another depth."""
        layers = getattr(config, "num_hidden_layers", None)
        if layers is not None and int(layers) != self.num_layers:
            raise ValueError(f"the FitPrune recipe has {self.num_layers} layers but the model has {layers} "
                             "decoder layers")

    def to_dict(self) -> dict:
        return {
            "format": RECIPE_FORMAT,
            "visual_tokens": self.visual_tokens,
            "num_layers": self.num_layers,
            "remaining": list(self.remaining),
            "flops_budget": self.flops_budget,
            "flops_ratio": self.flops_ratio,
            **self.info,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> "FitPruneRecipe":
        if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source}: not a FitPrune recipe (format {found!r}, expected {RECIPE_FORMAT!r})")
        info = {k: v for k, v in data.items()
                if k not in ("format", "visual_tokens", "num_layers", "remaining", "flops_budget", "flops_ratio")}
        try:
            recipe = cls(visual_tokens=data["visual_tokens"], remaining=tuple(data["remaining"]),
                         flops_budget=data.get("flops_budget"), flops_ratio=data.get("flops_ratio"), info=info)
        except KeyError as missing:
            raise ValueError(f"{source}: FitPrune recipe lacks the key {missing}") from None
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        if data.get("num_layers", recipe.num_layers) != recipe.num_layers:
            raise ValueError(f"{source}: num_layers {data['num_layers']} != {recipe.num_layers} entries in remaining")
        return recipe

    def save(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")

    @classmethod
    def load(cls, path: str) -> "FitPruneRecipe":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--fitprune_recipe {path}: no such file (fit one with python -m "
                                    "dualspeed_patch.fitprune_recipe)")
        with open(path) as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=path)


class RecipePolicy:
    """The run-time rule: after each pruning layer, image i keeps its `recipe.keep(n_i, layer)` visual tokens of
    highest importance (cross x self attention), ties to the earlier token.

    Everything the host needs (each image's token count and row, hence every compacted length) is read once when
    the policy is built (one host synchronisation per forward); per-layer keep counts go to the device in one copy.
    """

    def __init__(self, recipe: FitPruneRecipe, tokens: TokenMap, num_images: int):
        batch, length = tokens.visual.shape
        self.recipe = recipe
        per_row = torch.zeros(batch, num_images + 1, dtype=torch.long, device=tokens.visual.device)
        per_row.scatter_add_(1, tokens.image + 1, tokens.visual.long())
        table = per_row[:, 1:].tolist()  # the one host synchronisation: visual tokens of image i in row b
        counts = [sum(column) for column in zip(*table)] if table else []
        row_of = [next((b for b in range(batch) if table[b][i]), -1) for i in range(num_images)]
        self.layers = recipe.pruning_layers() if any(counts) else frozenset()  # nothing to prune without images
        order = sorted(self.layers)
        self._slot = {layer: p for p, layer in enumerate(order)}
        keeps, widths = [], []
        previous, row_lengths = list(counts), [length] * batch
        for layer in order:
            kept = [recipe.keep(n, layer) for n in counts]
            for image, row in enumerate(row_of):
                if row >= 0:
                    row_lengths[row] -= previous[image] - kept[image]
            keeps.append(kept)
            widths.append(max(row_lengths))
            previous = kept
        self._widths = widths
        self._keep = None
        if keeps:
            device = tokens.visual.device
            table_host = torch.tensor(keeps, dtype=torch.long)
            if device.type == "cuda":
                table_host = table_host.pin_memory()
            self._keep = table_host.to(device, non_blocking=True)

    def __call__(self, layer: int, scores: VisualScores, tokens: TokenMap):
        slot = self._slot[layer]
        keep_per_token = self._keep[slot][tokens.image.clamp(min=0)]
        rank = rank_in_group(scores.importance, tokens.image, descending=True)
        return tokens.visual & (rank < keep_per_token), self._widths[slot]


def pruned_llm_forward(model, state: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       labels: Optional[torch.Tensor], visual: torch.Tensor, lengths: torch.Tensor,
                       with_isolator: bool = True):
    """The LLM on `[isolator; all visual tokens]` + text, pruned layer by layer as `state.recipe` says.

    `visual` [I, S, H] / `lengths` [I] are the images' full visual sequences (`inputs.visual_sequences`). Returns
    (final hidden states [B, T', H], labels at the kept positions [B, T'] or None, the `LayerPruning` run).
    Gradients flow to everything kept (visual features, isolator, LoRA); selection itself has none.
    """
    if state.recipe is None:
        raise ValueError("--vtp_method fitprune needs --fitprune_recipe <recipe.json> "
                         "(fit one with python -m dualspeed_patch.fitprune_recipe)")
    isolator = state.isolator if with_isolator else None
    width = visual.shape[1]
    visual, lengths = prefix_isolator(isolator, visual, lengths)
    prefix = visual.shape[1] - width  # l isolator vectors (read from the gathered tensor: ZeRO-3 safe)
    _, _, mask, embeds, spliced_labels = build_llm_inputs(model, input_ids, None, attention_mask, labels, visual,
                                                          lengths)
    tokens = map_tokens(input_ids, attention_mask, spliced_labels, lengths, visual.shape[1], prefix,
                        max_length=getattr(model.config, "tokenizer_model_max_length", None),
                        padding_side=getattr(model.config, "tokenizer_padding_side", "right"))
    llm = model.get_model()
    with LayerPruning(llm, tokens, RecipePolicy(state.recipe, tokens, visual.shape[0])) as run:
        hidden = llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    kept_labels = None if spliced_labels is None else run.gather_labels(spliced_labels)
    return hidden, kept_labels, run


register_method(METHOD, pruned_llm_forward, kind=IN_LLM, required_flags=("fitprune_recipe",))
