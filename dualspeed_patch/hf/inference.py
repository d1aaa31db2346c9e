"""Inference on Hugging Face Llava models in DualSpeed's visual modes (the paper's pruned inference).

Plain inference needs nothing from DualSpeed. For pruned ("pruned": K kept tokens) or fast-mode ("fast": kept
tokens behind the trained isolator) inference, `llm_inputs` builds the LLM's input embeddings the way training
does, and `generate` hands them to the model's own `generate` (which continues from input embeddings).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..inputs import FULL, VISUAL_MODES, multimodal_inputs
from ..state import state_of
from .forward import install


@torch.no_grad()
def llm_inputs(model, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor], attention_mask=None,
               image_sizes=None, *, mode: str = FULL, padding_side: str = "left",
               instructions: Optional[list] = None) -> dict:
    """{"inputs_embeds", "attention_mask", "position_ids"} of the LLM for a processor batch in visual mode `mode`
    (with the pruning ratio and method of the model's DualSpeed state), padded on `padding_side`; `instructions`
    (one per sample) for instruction-aware pruners."""
    if mode not in VISUAL_MODES:
        raise ValueError(f"visual mode must be one of {', '.join(VISUAL_MODES)}; got {mode!r}")
    host = install(model)
    state = state_of(host)
    ids, mask, images, sizes, state.instructions = host.llava_batch(input_ids, attention_mask, pixel_values,
                                                                     image_sizes, instructions)
    with _padding(host, padding_side):
        _, positions, mask, _, embeds, _ = multimodal_inputs(host, state, mode, ids, None, mask, None, None, images,
                                                             sizes)
    if embeds is None:  # no images: the text's own embeddings
        embeds = host.get_input_embeddings()(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return {"inputs_embeds": embeds, "attention_mask": mask.long(), "position_ids": positions}


def generate(model, inputs: dict, *, mode: str = FULL, instructions: Optional[list] = None,
             **generate_kwargs) -> torch.Tensor:
    """`model.generate` on a processor batch (`input_ids`, `pixel_values`, `attention_mask`, `image_sizes`) in
    visual mode `mode`; returns only the new tokens (generation from input embeddings)."""
    built = llm_inputs(model, inputs["input_ids"], inputs.get("pixel_values"), inputs.get("attention_mask"),
                       inputs.get("image_sizes"), mode=mode, instructions=instructions)
    return model.generate(inputs_embeds=built["inputs_embeds"], attention_mask=built["attention_mask"],
                          **generate_kwargs)


@contextlib.contextmanager
def _padding(host, side: str):
    previous = host.config.tokenizer_padding_side
    host.config.__dict__["tokenizer_padding_side"] = side
    try:
        yield
    finally:
        host.config.__dict__["tokenizer_padding_side"] = previous
