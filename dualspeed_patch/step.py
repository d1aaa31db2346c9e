"""One DualSpeed training micro-step: choose the mode, then run the fast step or the slow step.

Fast mode: the LLM sees each image's kept tokens behind the mode isolator, [isolator; kept] (or, for an in-LLM
method such as FitPrune, every token, pruned between decoder layers), and learns by cross-entropy.
Slow mode: the student sees every visual token and learns by cross-entropy plus self-distillation from the
fast-mode input as teacher, L = CE + alpha * KL(teacher || student) (`distill.slow_mode_loss`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .distill import IGNORE_INDEX, distill_kl, gather_answer_hidden, gather_answer_targets, shifted_ce, slow_mode_loss
from .inputs import FAST, build_llm_inputs, multimodal_inputs, prune_visual, visual_sequences
from .layer_skip import skip_layers, step_skipped_layers
from .pruners.registry import IN_LLM


def train_step(model, state: Any, forward: Callable, call: dict):
    """The training forward of one micro-step (`forward` is LLaVA's own, `call` its bound arguments): slow step
    when the schedule says so and the batch has images, else fast step; its loss terms go to `state.metrics`."""
    extra = call.get("kwargs", {})
    images, num_items = call.get("images"), extra.get("num_items_in_batch")
    if images is not None and call.get("inputs_embeds") is not None:
        raise ValueError("DualSpeed training needs input_ids and images, not inputs_embeds")
    if images is not None and state.is_slow():
        loss, metrics = slow_step(model, state, call["input_ids"], call.get("attention_mask"), call.get("labels"),
                                  images, num_items, call.get("image_sizes"))
        if state.metrics is not None:
            state.metrics.record_slow(metrics)
        return _loss_output(loss)
    if images is not None and state.method.kind == IN_LLM:
        loss = in_llm_fast_loss(model, state, call["input_ids"], call.get("attention_mask"), call.get("labels"),
                                images, num_items, call.get("image_sizes"))
        out = _loss_output(loss)
    else:
        out = fast_step(model, state, forward, call)
    if state.metrics is not None and getattr(out, "loss", None) is not None:
        state.metrics.record_fast(per_token_ce(out.loss, call.get("labels"), num_items))
    return out


def fast_step(model, state: Any, forward: Callable, call: dict):
    """Fast mode with a pre-LLM method: LLaVA's own forward (its loss, LoRA, output) on the fast-mode input, built
    here explicitly, with the step's decoder layers skipped when `--layer_skip_ratio` asks."""
    kwargs = {k: v for k, v in call.items() if k not in ("self", "kwargs")}
    kwargs.update(call.get("kwargs", {}))
    if kwargs.get("images") is not None:
        _, position_ids, attention_mask, _, embeds, labels = multimodal_inputs(
            model, state, FAST, kwargs["input_ids"], kwargs.get("position_ids"), kwargs.get("attention_mask"),
            kwargs.get("past_key_values"), kwargs.get("labels"), kwargs["images"], kwargs.get("image_sizes"))
        kwargs.update(input_ids=None, position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=embeds,
                      labels=labels, images=None)
    skipped = step_skipped_layers(model.get_model(), state.args, state.schedule)  # () unless --layer_skip_ratio
    with skip_layers(model.get_model(), skipped):
        out = forward(**kwargs)
    if skipped and state.metrics is not None:
        state.metrics.record_layer_skip(len(skipped))
    return out


def in_llm_fast_loss(model, state: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                     labels: Optional[torch.Tensor], images, num_items_in_batch=None, image_sizes=None) -> torch.Tensor:
    """Fast mode with an in-LLM method (FitPrune): cross-entropy (fp32) over the answer tokens at the kept positions;
    with `num_items_in_batch` the micro-batch's sum divided by that count, as the model's own loss is."""
    if labels is None:
        raise ValueError(f"{state.method.name} fast mode trains on labels; the batch has labels=None")
    visual, lengths, _ = visual_sequences(model, state, images, pruning=False, image_sizes=image_sizes)
    hidden, kept_labels, _ = state.method.fn(model, state, input_ids, attention_mask, labels, visual, lengths)
    logits = model.get_output_embeddings()(gather_answer_hidden(hidden, kept_labels))
    ce = shifted_ce(logits, gather_answer_targets(kept_labels))
    return ce if num_items_in_batch is None else ce * logits.shape[0] / num_items_in_batch


def slow_step(model, state: Any, input_ids, attention_mask, labels, images, num_items_in_batch=None,
              image_sizes=None):
    """Slow mode: student on the full visual sequence (CE) + KL(teacher || student) at answer tokens.

    Images are encoded once; the teacher (the fast-mode input) runs without gradient. Only hidden states at answer
    positions go through the LM head. Returns (loss, metrics dict of detached per-token means).
    """
    in_llm = state.method.kind == IN_LLM  # the teacher then prunes inside the LLM, not before it
    visual, lengths, context = visual_sequences(model, state, images, pruning=not in_llm, image_sizes=image_sizes)
    student = build_llm_inputs(model, input_ids, None, attention_mask, labels, visual, lengths)
    t_hidden, t_labels = teacher_hidden(model, state, input_ids, attention_mask, labels, visual.detach(), lengths,
                                        context)
    llm = model.get_model()
    s_hidden = llm(inputs_embeds=student[3], attention_mask=student[2], position_ids=student[1],
                   use_cache=False).last_hidden_state
    s_labels = student[4]
    lm_head = model.get_output_embeddings()
    s_logits_all = lm_head(gather_answer_hidden(s_hidden, s_labels))
    ce = shifted_ce(s_logits_all, gather_answer_targets(s_labels))
    # KL on the answer tokens both sequences still hold (truncation can cut the longer student sequence).
    counts = torch.minimum((s_labels[:, 1:] != IGNORE_INDEX).sum(1), (t_labels[:, 1:] != IGNORE_INDEX).sum(1))
    s_kl_labels, t_kl_labels = cap_answers(s_labels, counts), cap_answers(t_labels, counts)
    s_logits = lm_head(gather_answer_hidden(s_hidden, s_kl_labels))
    with torch.no_grad():
        t_logits = lm_head(gather_answer_hidden(t_hidden, t_kl_labels))
        teacher_ce = shifted_ce(t_logits, gather_answer_targets(t_kl_labels))
    kl = distill_kl(t_logits, s_logits, state.args.distill_temperature)
    loss = slow_mode_loss(ce, kl, state.args.distill_alpha, s_logits_all.shape[0], s_logits.shape[0],
                          num_items_in_batch)
    metrics = {"slow_ce": ce.detach(), "kl": kl.detach(), "teacher_ce": teacher_ce.detach()}
    return loss.to(s_hidden.dtype), metrics


@torch.no_grad()
def teacher_hidden(model, state: Any, input_ids, attention_mask, labels, visual, lengths, context: dict):
    """The slow step's teacher, the fast-mode forward without gradient: (final hidden states, labels at its
    positions); its answer positions pair with the student's one-to-one (text is never pruned)."""
    if state.method.kind == IN_LLM:
        hidden, kept_labels, _ = state.method.fn(model, state, input_ids, attention_mask, labels, visual, lengths)
        return hidden, kept_labels
    pruned, pruned_lengths = prune_visual(state, visual, lengths, with_isolator=True, **context)
    _, positions, mask, embeds, t_labels = build_llm_inputs(model, input_ids, None, attention_mask, labels, pruned,
                                                            pruned_lengths)
    hidden = model.get_model()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
    return hidden.last_hidden_state, t_labels


def cap_answers(labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep only the first counts[b] supervised labels of each row (the rest become IGNORE_INDEX)."""
    supervised = labels != IGNORE_INDEX
    rank = torch.cumsum(supervised.long(), dim=1)
    return torch.where(supervised & (rank <= counts.unsqueeze(1)), labels, torch.full_like(labels, IGNORE_INDEX))


def per_token_ce(loss: torch.Tensor, labels, num_items_in_batch) -> torch.Tensor:
    """The micro-batch's mean cross-entropy per answer token, for logging beside the slow step's per-token means.

    With `num_items_in_batch` the model's loss is the micro-batch's sum divided by the Trainer's token count over
    every accumulated micro-batch and every process; scale it back by this micro-batch's own count (a tensor op,
    no host synchronisation).
    """
    loss = loss.detach()
    if num_items_in_batch is None or labels is None:
        return loss
    local = (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
    return loss * num_items_in_batch / local


def _loss_output(loss: torch.Tensor):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return CausalLMOutputWithPast(loss=loss, logits=None)
