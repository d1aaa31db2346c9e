"""`apply()`: DualSpeed as a monkey-patch of LLaVA's interface (our `llava/` or upstream LLaVA alike).

Two things are replaced:
- `LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`: builds the LLM input in the model's current
  *visual mode*: "full" (plain LLaVA), "fast" (pruned + mode isolator) or "pruned" (pruned, no isolator; for
  pruned inference). Pruning acts on each image's final visual sequence.
- `forward` of every `LlavaMetaForCausalLM` subclass: in training with DualSpeed on, each micro-step runs in
  fast mode (cross-entropy on the pruned input) or slow mode (student on full tokens + self-distillation
  from the fast-mode input as teacher), chosen by the step-derived schedule (same on every rank). With
  `--vtp_method fitprune` the fast-mode input keeps every visual token and the pruning happens between the LLM's
  decoder layers instead (`dualspeed_patch.fitprune`).
Only the SPEC §4 interface is used (get_model, get_vision_tower, encode_images, config fields).
"""
import contextlib
import functools
import inspect
import math

import torch

from . import fitprune
from .anyres import gather_packed, image_newline, packed_index, packing_settings, split_views
from .config import DualSpeedArguments, kept_tokens_tensor
from .distill import IGNORE_INDEX, distill_kl, gather_answer_hidden, gather_answer_targets, shifted_ce
from .isolator import get_isolator
from .layer_skip import skip_layers, step_skipped_layers
from .pruners import get_vtp_method, reduce_tokens
from .splice import splice_visual_tokens
from .vision_context import capture_cls_attention, clip_relevance, encoder_layer_for_select_layer

FULL, FAST, PRUNED = "full", "fast", "pruned"
_MODE_ATTR = "_dualspeed_visual_mode"
_PATCHED = "__dualspeed_patched__"


def settings(model) -> DualSpeedArguments:
    """The model's DualSpeed settings (attached by training / evaluation setup, else read from its config)."""
    cached = getattr(model, "_dualspeed_args", None)
    if cached is None:
        cached = DualSpeedArguments.from_config(model.config)
        model._dualspeed_args = cached
    return cached


@contextlib.contextmanager
def visual_mode(model, mode: str):
    """Run the enclosed forward passes of `model` in visual mode `mode` (full / fast / pruned)."""
    if mode not in (FULL, FAST, PRUNED):
        raise ValueError(f"visual mode must be one of full, fast, pruned; got {mode!r}")
    previous = getattr(model, _MODE_ATTR, FULL)
    setattr(model, _MODE_ATTR, mode)
    try:
        yield
    finally:
        setattr(model, _MODE_ATTR, previous)


def visual_sequences(model, images, pruning: bool = False, image_sizes=None):
    """Each image's final visual sequence and, when it will be pruned, the context its pruner asks for.

    Returns ([I, S, H] features, [I] valid lengths, context dict). Multi-view (anyres) batches, a 5-D tensor or a
    list, are encoded in one tower call and packed per image (tiling, unpadding, newlines; `dualspeed_patch.anyres`),
    so pruning and the splice see exactly the sequence plain LLaVA would feed the LLM. Context is computed only for
    keys the selected pruner declares in `context_keys`: `cls_attention` (one hook on the vision tower's feature
    layer, active only while the tower runs) and `relevance` (CLIP text-image similarity to each sample's
    instruction); on anyres both are computed per view and carried onto the packed sequence (see `pack_context`).
    """
    needs = set(getattr(get_vtp_method(settings(model).vtp_method), "context_keys", ())) if pruning else set()
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
        features = model.get_model().mm_projector(patches)
        scorer = model.__dict__.get("_dualspeed_text_scorer")
        if "relevance" in needs and scorer is not None:
            n_images = len(counts) if multi_view else patches.shape[0]
            instructions = list(getattr(model, "_dualspeed_instructions", None) or [None] * n_images)
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


def prune_visual(model, visual: torch.Tensor, lengths: torch.Tensor, with_isolator: bool, seed: int = 0, **context):
    """Keep K_i = kept_tokens(N_i, p) tokens of each image (plug-in selection, original order; or a compressor's
    pooled tokens, whose count its rule sets), prefixed with the mode isolator when asked: [isolator; kept].
    Returns ([I, l + K, H], [I] valid lengths).

    N_i is image i's packed length; on LLaVA-NeXT that includes its newline tokens, which are prunable like any
    other token (see "Newline tokens" in `dualspeed_patch.anyres`). One batched selection serves ragged N_i.
    """
    args = settings(model)
    keep = kept_tokens_tensor(lengths, args.pruning_ratio)
    valid = torch.arange(visual.shape[1], device=visual.device).unsqueeze(0) < lengths.unsqueeze(1)
    kept, kept_mask = reduce_tokens(args.vtp_method, visual, keep, valid, seed=seed, **context)
    new_lengths = kept_mask.sum(dim=1)
    isolator = get_isolator(model) if with_isolator else None
    if isolator is None:
        return kept, new_lengths
    vectors = isolator().to(kept.dtype)
    prefix = vectors.unsqueeze(0).expand(kept.shape[0], -1, -1)
    return torch.cat([prefix, kept], dim=1), new_lengths + vectors.shape[0]


def build_llm_inputs(model, input_ids, position_ids, attention_mask, labels, visual, lengths):
    """LLaVA's return tuple for the given per-image visual sequences (vectorised splice)."""
    embeds, mask, positions, new_labels = splice_visual_tokens(
        input_ids,
        attention_mask,
        labels,
        model.get_model().embed_tokens(input_ids.clamp(min=0)),
        visual,
        lengths,
        max_length=getattr(model.config, "tokenizer_model_max_length", None),
        padding_side=getattr(model.config, "tokenizer_padding_side", "right"),
    )
    return (
        None,
        None if position_ids is None else positions.to(position_ids.dtype),
        None if attention_mask is None else mask.to(attention_mask.dtype),
        embeds,
        None if labels is None else new_labels,
    )


def patched_prepare(original):
    """LLaVA's `prepare_inputs_labels_for_multimodal`, replaced (`original` stays reachable as `__wrapped__`, which
    `remove()` restores)."""

    @functools.wraps(original)
    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
    ):
        return prepare_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                  images, image_sizes)

    setattr(prepare_inputs_labels_for_multimodal, _PATCHED, True)
    return prepare_inputs_labels_for_multimodal


def prepare_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels, images,
                       image_sizes=None):
    """Same inputs and return tuple as LLaVA's method; the visual tokens follow the model's visual mode."""
    vision_tower = self.get_vision_tower()
    if vision_tower is None or images is None or input_ids.shape[1] == 1:
        return input_ids, position_ids, attention_mask, past_key_values, None, labels
    mode = getattr(self, _MODE_ATTR, FULL)
    visual, lengths, context = visual_sequences(self, images, pruning=mode != FULL, image_sizes=image_sizes)
    if mode != FULL:
        schedule = getattr(self, "_dualspeed_schedule", None)
        seed = schedule.pruner_seed() if schedule is not None else 0
        visual, lengths = prune_visual(self, visual, lengths, with_isolator=mode == FAST, seed=seed, **context)
    ids, pos, mask, embeds, new_labels = build_llm_inputs(self, input_ids, position_ids, attention_mask, labels, visual, lengths)
    return ids, pos, mask, past_key_values, embeds, new_labels


def cap_answers(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep only the first counts[b] supervised labels of each row (the rest become IGNORE_INDEX)."""
    supervised = labels != IGNORE_INDEX
    rank = torch.cumsum(supervised.long(), dim=1)
    return torch.where(supervised & (rank <= counts.unsqueeze(1)), labels, torch.full_like(labels, IGNORE_INDEX))


def slow_step(model, input_ids, attention_mask, labels, images, num_items_in_batch=None, image_sizes=None):
    """Slow mode: student on the full visual sequence (CE) + KL(teacher || student) at answer tokens.

    Images are encoded once; the teacher (pruned + isolator, the fast-mode input) runs without gradient. Only
    hidden states at answer positions go through the LM head. Returns (loss, metrics dict of detached tensors).
    """
    args = settings(model)
    schedule = getattr(model, "_dualspeed_schedule", None)
    layerwise = fitprune.is_fitprune(args.vtp_method)  # FitPrune's teacher prunes inside the LLM, not before it
    visual, lengths, context = visual_sequences(model, images, pruning=not layerwise, image_sizes=image_sizes)
    student = build_llm_inputs(model, input_ids, None, attention_mask, labels, visual, lengths)
    with torch.no_grad():
        if layerwise:
            t_hidden, t_labels = fitprune.teacher_hidden(model, input_ids, attention_mask, labels, visual.detach(), lengths)
        else:
            seed = schedule.pruner_seed() if schedule is not None else 0
            pruned, pruned_lengths = prune_visual(model, visual.detach(), lengths, with_isolator=True, seed=seed, **context)
            teacher = build_llm_inputs(model, input_ids, None, attention_mask, labels, pruned, pruned_lengths)
            t_hidden = model.get_model()(inputs_embeds=teacher[3], attention_mask=teacher[2], position_ids=teacher[1]).last_hidden_state
            t_labels = teacher[4]
    s_hidden = model.get_model()(inputs_embeds=student[3], attention_mask=student[2], position_ids=student[1]).last_hidden_state

    s_labels = student[4]
    counts = torch.minimum((s_labels[:, 1:] != IGNORE_INDEX).sum(1), (t_labels[:, 1:] != IGNORE_INDEX).sum(1))
    lm_head = model.get_output_embeddings()
    s_logits_all = lm_head(gather_answer_hidden(s_hidden, s_labels))
    ce = shifted_ce(s_logits_all, gather_answer_targets(s_labels))
    # KL on the answer tokens both sequences still hold (truncation can cut the longer student sequence).
    s_kl_labels, t_kl_labels = cap_answers(s_labels, counts), cap_answers(t_labels, counts)
    s_logits = lm_head(gather_answer_hidden(s_hidden, s_kl_labels))
    with torch.no_grad():
        t_logits = lm_head(gather_answer_hidden(t_hidden, t_kl_labels))
        teacher_ce = shifted_ce(t_logits, gather_answer_targets(t_kl_labels))
    kl = distill_kl(t_logits, s_logits, args.distill_temperature)
    n_ce, n_kl = s_logits_all.shape[0], s_logits.shape[0]
    if num_items_in_batch is not None:  # sum-then-divide, as the model's own loss does under grad accumulation
        loss = (ce * n_ce + args.distill_alpha * kl * n_kl) / num_items_in_batch
    else:
        loss = ce + args.distill_alpha * kl
    metrics = {"slow_ce": ce.detach(), "kl": kl.detach(), "teacher_ce": teacher_ce.detach()}
    return loss.to(s_hidden.dtype), metrics


def per_token_ce(loss: torch.Tensor, labels, num_items_in_batch) -> torch.Tensor:
    """The micro-batch's mean cross-entropy per answer token, for logging beside the slow step's per-token means.

    With ``num_items_in_batch`` the model's loss is the micro-batch's sum divided by the Trainer's token count over
    every accumulated micro-batch and every process; scale it back by this micro-batch's own count (a tensor op,
    no host synchronisation).
    """
    loss = loss.detach()
    if num_items_in_batch is None or labels is None:
        return loss
    local = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
    return loss * num_items_in_batch / local


def wrap_forward(original):
    """The fast/slow switch around a LLaVA causal LM's `forward` (signature kept for Trainer's inspection)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        # Instruction texts (for instruction-aware pruners) ride along with the batch; LLaVA's forward never sees them.
        self._dualspeed_instructions = kwargs.pop("instructions", None)
        schedule = getattr(self, "_dualspeed_schedule", None)
        if not self.training or schedule is None or not settings(self).dualspeed:
            return original(self, *args, **kwargs)
        call = signature.bind(self, *args, **kwargs).arguments
        extra = call.get("kwargs", {})
        images = call.get("images")
        recorder = getattr(self, "_dualspeed_metrics", None)
        if images is not None and schedule.is_slow():
            if call.get("inputs_embeds") is not None:
                raise ValueError("DualSpeed slow mode needs input_ids and images, not inputs_embeds")
            loss, metrics = slow_step(self, call["input_ids"], call.get("attention_mask"), call.get("labels"),
                                      images, extra.get("num_items_in_batch"), call.get("image_sizes"))
            if recorder is not None:
                recorder.record_slow(metrics)
            from transformers.modeling_outputs import CausalLMOutputWithPast

            return CausalLMOutputWithPast(loss=loss, logits=None)
        if images is not None and fitprune.is_fitprune(settings(self).vtp_method):  # prunes inside the LLM
            if call.get("inputs_embeds") is not None:
                raise ValueError("DualSpeed fast mode with fitprune needs input_ids and images, not inputs_embeds")
            loss = fitprune.fast_step(self, call["input_ids"], call.get("attention_mask"), call.get("labels"), images,
                                      extra.get("num_items_in_batch"), call.get("image_sizes"))
            if recorder is not None:
                recorder.record_fast(per_token_ce(loss, call.get("labels"), extra.get("num_items_in_batch")))
            from transformers.modeling_outputs import CausalLMOutputWithPast

            return CausalLMOutputWithPast(loss=loss, logits=None)
        skipped = step_skipped_layers(self.get_model(), settings(self), schedule)  # () unless --layer_skip_ratio
        with visual_mode(self, FAST), skip_layers(self.get_model(), skipped):
            out = original(self, *args, **kwargs)
        if recorder is not None and getattr(out, "loss", None) is not None:
            recorder.record_fast(per_token_ce(out.loss, call.get("labels"), extra.get("num_items_in_batch")))
            if settings(self).layer_skip_ratio > 0:
                recorder.record_layer_skip(len(skipped))
        return out

    setattr(forward, _PATCHED, True)
    return forward


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def apply(arch_module=None) -> None:
    """Patch LLaVA for DualSpeed (idempotent). `arch_module` defaults to `llava.model.llava_arch`."""
    if arch_module is None:
        import llava.model  # noqa: F401  (defines the causal-LM subclasses)
        import llava.model.llava_arch as arch_module
    meta = arch_module.LlavaMetaForCausalLM
    current = meta.prepare_inputs_labels_for_multimodal
    if not getattr(current, _PATCHED, False):
        meta.prepare_inputs_labels_for_multimodal = patched_prepare(current)
    for cls in _subclasses(meta):
        own = cls.__dict__.get("forward")
        if own is not None and not getattr(own, _PATCHED, False):
            cls.forward = wrap_forward(own)


def remove(arch_module=None) -> None:
    """Undo `apply()` (restores LLaVA's own methods)."""
    if arch_module is None:
        import llava.model.llava_arch as arch_module
    meta = arch_module.LlavaMetaForCausalLM
    current = meta.prepare_inputs_labels_for_multimodal
    if getattr(current, _PATCHED, False):
        meta.prepare_inputs_labels_for_multimodal = current.__wrapped__
    for cls in _subclasses(meta):
        own = cls.__dict__.get("forward")
        if own is not None and getattr(own, _PATCHED, False):
            cls.forward = own.__wrapped__
