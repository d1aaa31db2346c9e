"""Checks on the upstream model's input builder: upstream alone, then `apply()`, full mode and fast mode.

Each check takes the shared `Context`, returns a short detail string, or raises (AssertionError on a mismatch).
"""
import inspect
import warnings

import torch
from safetensors.torch import load_file

import dualspeed_patch.patch as patch
from dualspeed_patch import DualSpeedArguments, attach, kept_tokens
from dualspeed_patch.isolator import get_isolator
from dualspeed_patch.pruners import divprune_select

from .context import ISOLATOR_LEN, PRUNING_RATIO, Context
from .helpers import build_model, compare_prepared, mixed_batch, prepare


def build(ctx: Context) -> str:
    """Proves upstream's own `initialize_vision_modules` builds the tiny model: projector and CLIP tower are in the
    state dict and the CLIP weights are the tiny world's (not a random init). Records the model, the batch and
    upstream's unpatched methods for later checks."""
    model = build_model(ctx.cls, ctx.world)
    keys = set(model.state_dict())
    for key in ("model.mm_projector.0.weight", "model.mm_projector.2.weight",
                "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"):
        assert key in keys, f"state dict lacks {key}"
    clip = load_file(str(ctx.world / "models" / "tiny-clip" / "model.safetensors"))
    name = "vision_model.embeddings.patch_embedding.weight"
    loaded = model.get_vision_tower().vision_tower.state_dict()[name]
    assert torch.equal(loaded, clip[name]), "tiny CLIP weights were not loaded (random init?)"
    ctx.model, ctx.batch = model, mixed_batch(model)
    ctx.original = ctx.arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal
    ctx.forwards = {c: c.__dict__["forward"] for c in patch._subclasses(ctx.arch.LlavaMetaForCausalLM)
                    if "forward" in c.__dict__}
    tower = model.get_vision_tower()
    return f"N = {tower.num_patches} visual tokens, hidden {model.config.hidden_size}"


def originals(ctx: Context) -> str:
    """Proves upstream's unpatched `prepare_inputs_labels_for_multimodal` runs on the mixed batch, and records its
    results (right padding, with position ids, left padding, truncated to 20) as the reference for full mode."""
    model, b = ctx.model, ctx.batch
    ctx.expected = prepare(model, b)
    ctx.expected_pos = prepare(model, b, with_positions=True)
    model.config.tokenizer_padding_side = "left"
    ctx.expected_left = prepare(model, b)
    model.config.tokenizer_padding_side = "right"
    model.config.tokenizer_model_max_length = 20
    ctx.expected_trunc = prepare(model, b)
    model.config.tokenizer_model_max_length = 2048
    lengths = ctx.expected[2].sum(1).tolist()
    return f"upstream LLM input lengths {lengths}"


def apply(ctx: Context) -> str:
    """Proves `apply()` replaces upstream's input builder and wraps the causal-LM forwards, is idempotent (also
    when called without an arch module, which must resolve to upstream's), and keeps `images` in the forward
    signature the Trainer inspects."""
    arch, cls = ctx.arch, ctx.cls
    patch.apply(arch)
    meta = arch.LlavaMetaForCausalLM
    first = meta.prepare_inputs_labels_for_multimodal
    assert first is not ctx.original, "prepare_inputs_labels_for_multimodal was not replaced"
    wrapped = [c.__name__ for c, f in ctx.forwards.items() if c.__dict__["forward"] is not f]
    assert cls.__name__ in wrapped, f"{cls.__name__}.forward was not wrapped"
    forwards = {c: c.__dict__["forward"] for c in ctx.forwards}
    patch.apply(arch)
    patch.apply()  # the default arch module must resolve to the imported (upstream) llava
    assert meta.prepare_inputs_labels_for_multimodal is first, "apply() is not idempotent (prepare)"
    assert all(c.__dict__["forward"] is f for c, f in forwards.items()), "apply() is not idempotent (forward)"
    for forward in (cls.forward, ctx.model.forward):  # the Trainer inspects the bound method
        params = inspect.signature(forward).parameters
        assert {"images", "image_sizes", "labels"} <= set(params), f"forward signature lost images: {list(params)}"
    return f"wrapped forward of {sorted(wrapped)}; signature keeps images"


def full_mode(ctx: Context) -> str:
    """Proves the patched input builder in full mode equals upstream's (embeds, labels, mask; position ids on real
    tokens) with right and left padding, with position ids, and when truncated to the model's max length."""
    model, b = ctx.model, ctx.batch
    notes = [compare_prepared(ctx.expected, prepare(model, b), "right padding")]
    notes.append(compare_prepared(ctx.expected_pos, prepare(model, b, with_positions=True), "with position_ids"))
    model.config.tokenizer_padding_side = "left"
    try:
        notes.append(compare_prepared(ctx.expected_left, prepare(model, b), "left padding"))
    finally:
        model.config.tokenizer_padding_side = "right"
    model.config.tokenizer_model_max_length = 20
    try:
        notes.append(compare_prepared(ctx.expected_trunc, prepare(model, b), "truncated to 20"))
    finally:
        model.config.tokenizer_model_max_length = 2048
    return " | ".join(notes)


def fast_mode(ctx: Context) -> str:
    """Proves fast mode on the upstream model gives the image sample text + K kept tokens + the isolator (placed
    right after the text prefix, kept tokens = DivPrune's choice, answer labels in place), leaves the text-only
    sample alone, and pruned mode gives text + K."""
    model, b = ctx.model, ctx.batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach(model, DualSpeedArguments(dualspeed=True, pruning_ratio=PRUNING_RATIO, slow_mode_ratio=0.5,
                                         mode_isolator_len=ISOLATOR_LEN), seed=0)
    n = model.get_vision_tower().num_patches
    k = kept_tokens(n, PRUNING_RATIO)
    with patch.visual_mode(model, patch.FAST):
        _, _, mask, _, embeds, labels = prepare(model, b)
    text = int(b["attention_mask"][0].sum()) - 1
    lengths = mask.sum(1).tolist()
    assert lengths == [text + k + ISOLATOR_LEN, 5], f"fast lengths {lengths}, expected [{text + k + ISOLATOR_LEN}, 5]"
    iso = get_isolator(model).weight
    assert torch.equal(embeds[0, 2:2 + ISOLATOR_LEN], iso.detach()), "isolator is not right after the text prefix"
    with torch.no_grad():
        features = model.encode_images(b["images"][:1])
    kept = divprune_select(features, k)[0]
    assert torch.equal(embeds[0, 2 + ISOLATOR_LEN:2 + ISOLATOR_LEN + k], features[0, kept]), "kept tokens differ"
    assert labels[0, -3:].tolist() == [7, 8, 9], f"answer labels moved: {labels[0].tolist()}"
    with patch.visual_mode(model, patch.PRUNED):
        pruned = prepare(model, b)[2].sum(1).tolist()
    assert pruned == [text + k, 5], f"pruned-mode lengths {pruned}, expected [{text + k}, 5]"
    return f"K = kept_tokens({n}, {PRUNING_RATIO}) = {k}; fast lengths {lengths}; pruned lengths {pruned}"
