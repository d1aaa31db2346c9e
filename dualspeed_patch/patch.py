"""`apply()`: DualSpeed as a monkey-patch of LLaVA's interface (our `llava/` or upstream LLaVA alike).

The patch is only the adapter upstream LLaVA needs; the method itself is `state` (what is kept), `inputs` (the LLM
input per visual mode) and `step` (one fast or slow micro-step). Two things are replaced:
- `LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal`: builds the LLM input in the state's visual mode
  (full, fast or pruned), for forwards that build their own input (generation, evaluation);
- `forward` of every `LlavaMetaForCausalLM` subclass: in training with DualSpeed attached, each micro-step is
  `step.train_step` (choose mode -> fast step or slow step); otherwise LLaVA's own forward.
Only the SPEC §4 interface is used (get_model, get_vision_tower, encode_images, config fields).
"""
import functools
import inspect

from .inputs import FAST, FULL, PRUNED, multimodal_inputs  # noqa: F401  (the visual modes, re-exported)
from .state import state_of, visual_mode  # noqa: F401  (re-exported: the patch's public companions)
from .step import train_step

_PATCHED = "__dualspeed_patched__"


def patched_prepare(original):
    """LLaVA's `prepare_inputs_labels_for_multimodal`, replaced (`original` stays reachable as `__wrapped__`, which
    `remove()` restores)."""

    @functools.wraps(original)
    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
    ):
        state = state_of(self)
        return multimodal_inputs(self, state, state.mode, input_ids, position_ids, attention_mask, past_key_values,
                                 labels, images, image_sizes)

    setattr(prepare_inputs_labels_for_multimodal, _PATCHED, True)
    return prepare_inputs_labels_for_multimodal


def wrap_forward(original):
    """The fast/slow switch around a LLaVA causal LM's `forward` (signature kept for Trainer's inspection)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        state = state_of(self)
        # Instruction texts (for instruction-aware pruners) ride along with the batch; LLaVA's forward never sees them.
        state.instructions = kwargs.pop("instructions", None)
        if not (self.training and state.training):
            return original(self, *args, **kwargs)
        return train_step(self, state, functools.partial(original, self), signature.bind(self, *args, **kwargs).arguments)

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
