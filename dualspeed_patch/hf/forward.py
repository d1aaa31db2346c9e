"""DualSpeed's training step inside a Hugging Face Llava model's `forward`.

`install(model)` replaces `forward` on that one model object (its class, and any other model, stay as they are).
In training with DualSpeed attached, each call runs `dualspeed_patch.step.train_step`, the same fast/slow step the
LLaVA repository's patch runs, on the host adapter's view of the batch: the processor's image tokens collapsed to
LLaVA's placeholders and NeXT's padded views unpadded (`HFLlavaHost`). Otherwise, and for batches without
`pixel_values` in evaluation, it is Hugging Face's own forward.
"""
from __future__ import annotations

import functools
import inspect
import types

from ..state import state_of
from ..step import train_step
from .host import HFLlavaHost, host_of

_INSTALLED = "__dualspeed_hf_forward__"
# Hugging Face forward arguments the host translates (the rest ride along to Hugging Face's forward).
_TRANSLATED = ("self", "input_ids", "pixel_values", "image_sizes", "attention_mask", "position_ids", "labels",
               "inputs_embeds", "kwargs", "vision_feature_layer", "vision_feature_select_strategy")


def install(model) -> HFLlavaHost:
    """Give a Hugging Face Llava / LlavaNext model (peft-wrapped or not) its host adapter and DualSpeed's forward
    (idempotent). Returns the host adapter."""
    host = host_of(model)
    hf = host.hf
    if getattr(hf.__dict__.get("forward"), _INSTALLED, False):
        return host
    own = type(hf).forward
    signature = inspect.signature(own)

    @functools.wraps(own)
    def forward(self, *args, **kwargs):
        state = state_of(host)
        # Instruction texts (for instruction-aware pruners) ride along with the batch, one per sample.
        state.instructions = kwargs.pop("instructions", None)
        original = own.__get__(self)
        if not (self.training and state.training):
            return original(*args, **kwargs)
        call = signature.bind(self, *args, **kwargs).arguments
        call.pop("self")
        return hf_train_step(host, state, original, call)

    setattr(forward, _INSTALLED, True)
    # A bound method, as the class's own: wrappers that rebind `forward.__func__` (accelerate's autocast) keep working.
    hf.forward = types.MethodType(forward, hf)
    return host


def uninstall(model) -> None:
    """Give the model back its class's forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.__dict__.get("forward"), _INSTALLED, False):
        del base.__dict__["forward"]


def hf_train_step(host: HFLlavaHost, state, original, call: dict):
    """One training micro-step on a Hugging Face batch: translate it to LLaVA's (placeholders, per-image views,
    (width, height) sizes), run `train_step`, whose fast step calls Hugging Face's forward back with the input
    embeddings it built."""
    extra = dict(call.get("kwargs", {}))
    extra.update({k: v for k, v in call.items() if k not in _TRANSLATED and v is not None})
    input_ids, mask, images, sizes, state.instructions = host.llava_batch(
        call.get("input_ids"), call.get("attention_mask"), call.get("pixel_values"), call.get("image_sizes"),
        state.instructions)
    llava_call = {"input_ids": input_ids, "attention_mask": mask, "position_ids": call.get("position_ids"),
                  "inputs_embeds": call.get("inputs_embeds"), "labels": call.get("labels"), "images": images,
                  "image_sizes": sizes, "kwargs": extra}

    def hf_forward(input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                   images=None, image_sizes=None, **rest):
        if images is not None:  # the fast step has spliced them already; anything else is a wiring error
            raise RuntimeError("images reached Hugging Face's forward untranslated")
        return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        inputs_embeds=inputs_embeds, labels=labels, **rest)

    return train_step(host, state, hf_forward, llava_call)
