"""The LLM's input in each visual mode: every image's visual sequence, its pruned form, and the splice into the text.

Visual modes (SPEC): "full" is plain LLaVA (every visual token); "fast" keeps K_i = kept_tokens(N_i, p) tokens of
image i and prefixes the mode isolator, [isolator; kept]; "pruned" keeps the same tokens without the isolator
(pruned inference). Pruning acts on each image's final visual sequence, after LLaVA-NeXT's packing.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .anyres import gather_packed, image_newline, packed_index, packing_settings, split_views
from .host import llava_part
from .isolator import prefix_isolator
from .k_rule import kept_tokens_tensor
from .pruners import reduce_tokens
from .pruners.registry import IN_LLM
from .splice import splice_visual_tokens
from .vision_context import capture_cls_attention, clip_relevance, encoder_layer_for_select_layer

FULL, FAST, PRUNED = "full", "fast", "pruned"
VISUAL_MODES = (FULL, FAST, PRUNED)


def visual_sequences(model, state: Any, images, pruning: bool = False, image_sizes=None):
    """Each image's final visual sequence and, when it will be pruned, the context its method asks for.

    Returns ([I, S, H] features, [I] valid lengths, context dict). Multi-view (anyres) batches, a 5-D tensor or a
    list, are encoded in one tower call and packed per image (tiling, unpadding, newlines; `dualspeed_patch.anyres`),
    so pruning and the splice see exactly the sequence plain LLaVA would feed the LLM. Context is computed only for
    keys the method declares: `cls_attention` (one hook on the vision tower's feature layer, active only while the
    tower runs), `relevance` (CLIP text-image similarity to each sample's instruction, `state.instructions`) and
    `grid_side`; on anyres the first two are computed per view and carried onto the packed sequence.
    """
    method = state.method
    needs = set(method.context_keys) if pruning and method.kind != IN_LLM else set()
    multi_view = isinstance(images, (list, tuple)) or images.ndim == 5
    views, counts = split_views(images) if multi_view else (images, None)
    context = {}
    if not needs - {"grid_side"}:  # grid_side (a compressor's) needs nothing from the tower
        features = model.encode_images(views)
    else:
        tower = model.get_vision_tower()
        if "cls_attention" in needs:
            layer = encoder_layer_for_select_layer(tower.select_layer, tower.config.num_hidden_layers)
            with capture_cls_attention(tower, layer, include_cls=tower.select_feature == "cls_patch") as capture:
                patches = tower(views)
            context["cls_attention"] = capture.cls_attention
        else:
            patches = tower(views)
        features = llava_part(model, "mm_projector")(patches)
        scorer = state.text_scorer
        if "relevance" in needs and scorer is not None:
            n_images = len(counts) if multi_view else patches.shape[0]
            instructions = list(state.instructions or [None] * n_images)
            if multi_view:  # scored after packing, per image over its packed tokens
                context["relevance"] = (scorer.image_embeds(patches), *scorer.text_embeds(instructions), scorer.negate)
            else:
                context["relevance"] = scorer.relevance(instructions, patches)
    if not multi_view:
        lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long, device=features.device)
        if "grid_side" in needs:  # the patch grid's side when the tokens form a square grid, else 1-D pooling
            side = math.isqrt(features.shape[1])
            context["grid_side"] = side if side * side == features.shape[1] else None
        return features, lengths, context
    packing_cfg = packing_settings(model)
    packing = packed_index(counts, features.shape[1], image_sizes, packing_cfg, device=features.device)
    newline = image_newline(model) if packing_cfg.unpad else None
    visual = gather_packed(features.flatten(0, 1), packing, newline)
    return visual, packing.lengths, pack_context(context, packing)


def pack_context(context: dict, packing) -> dict:
    """Per-view pruner context of an anyres batch carried onto the packed sequences ([I, S] each).

    Newline tokens carry no image content: their [CLS] attention is 0 (the tower never saw them) and their
    relevance 0 (they are left out of CDPruner's per-image min-max normalisation), so these pruners rank them last.
    `relevance` arrives as (per-view CLIP image embeddings, instruction embeddings, has_text, negate).
    """
    packed = {}
    if "cls_attention" in context:
        packed["cls_attention"] = gather_packed(context["cls_attention"].reshape(-1, 1), packing).squeeze(-1)
    if "relevance" in context:
        embeds, text, has_text, negate = context["relevance"]
        joint = gather_packed(embeds.flatten(0, 1), packing)
        image_tokens = packing.valid & ~packing.is_newline
        packed["relevance"] = clip_relevance(joint, text, has_text, image_tokens, negate=negate)
    return packed


def prune_visual(state: Any, visual: torch.Tensor, lengths: torch.Tensor, with_isolator: bool, **context):
    """Keep K_i = kept_tokens(N_i, p) tokens of each image (plug-in selection, original order; or a compressor's
    pooled tokens, whose count its rule sets), prefixed with the mode isolator when asked: [isolator; kept].
    Returns ([I, l + K, H], [I] valid lengths).

    N_i is image i's packed length; on LLaVA-NeXT that includes its newline tokens, which are prunable like any
    other token (see "Newline tokens" in `dualspeed_patch.anyres`). One batched selection serves ragged N_i.
    """
    args = state.args
    keep = kept_tokens_tensor(lengths, args.pruning_ratio)
    valid = torch.arange(visual.shape[1], device=visual.device).unsqueeze(0) < lengths.unsqueeze(1)
    kept, kept_mask = reduce_tokens(args.vtp_method, visual, keep, valid, seed=state.pruner_seed(), **context)
    return prefix_isolator(state.isolator if with_isolator else None, kept, kept_mask.sum(dim=1))


def build_llm_inputs(model, input_ids, position_ids, attention_mask, labels, visual, lengths):
    """LLaVA's return tuple (input_ids=None, position_ids, attention_mask, inputs_embeds, labels) for the given
    per-image visual sequences (vectorised splice)."""
    embeds, mask, positions, new_labels = splice_visual_tokens(
        input_ids,
        attention_mask,
        labels,
        model.get_model().embed_tokens(input_ids.clamp(min=0)),
        visual,
        lengths,
        max_length=getattr(model.config, "tokenizer_model_max_length", None),
        padding_side=getattr(model.config, "tokenizer_padding_side", "right"),
        text_only_consumes_image=getattr(model.config, "text_only_consumes_image", True),
    )
    return (
        None,
        None if position_ids is None else positions.to(position_ids.dtype),
        None if attention_mask is None else mask.to(attention_mask.dtype),
        embeds,
        None if labels is None else new_labels,
    )


def multimodal_inputs(model, state: Any, mode: str, input_ids, position_ids, attention_mask, past_key_values,
                      labels, images, image_sizes: Optional[list] = None):
    """LLaVA's `prepare_inputs_labels_for_multimodal` in visual mode `mode`: same inputs, same return tuple
    (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels)."""
    if mode not in VISUAL_MODES:
        raise ValueError(f"visual mode must be one of {', '.join(VISUAL_MODES)}; got {mode!r}")
    if model.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
        return input_ids, position_ids, attention_mask, past_key_values, None, labels
    visual, lengths, context = visual_sequences(model, state, images, pruning=mode != FULL, image_sizes=image_sizes)
    if mode != FULL:
        visual, lengths = prune_visual(state, visual, lengths, with_isolator=mode == FAST, **context)
    ids, pos, mask, embeds, new_labels = build_llm_inputs(model, input_ids, position_ids, attention_mask, labels,
                                                          visual, lengths)
    return ids, pos, mask, past_key_values, embeds, new_labels
