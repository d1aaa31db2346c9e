"""Checks on inference with the patch on the upstream model: eval forward, `remove()`, and upstream `generate`.

Each check takes the shared `Context`, returns a short detail string, or raises (AssertionError on a mismatch).
"""
import torch
from llava.constants import IMAGE_TOKEN_INDEX

import dualspeed_patch.patch as patch

from .context import Context
from .helpers import greedy


def inference_passthrough(ctx: Context) -> str:
    """Proves an eval forward with the patch applied gives upstream's logits, and `remove()` restores upstream's
    own input builder and forwards (the methods recorded by `build`)."""
    arch, model, b = ctx.arch, ctx.model.eval(), ctx.batch
    with torch.no_grad():
        got = model(**b).logits
        patch.remove(arch)
        try:
            assert arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal is ctx.original, \
                "remove() did not restore upstream's prepare_inputs_labels_for_multimodal"
            assert all(c.__dict__["forward"] is f for c, f in ctx.forwards.items()), \
                "remove() did not restore upstream's forward"
            expected = model(**b).logits
        finally:
            patch.apply(arch)
    diff = (got - expected).abs().max().item()
    assert got.shape == expected.shape and diff <= 1e-5, f"eval logits differ by {diff:.3g}"
    return f"eval logits equal upstream's (max |diff| {diff:.1e}); remove() restores upstream"


def generate(ctx: Context) -> str:
    """Proves upstream's `generate` with the patch applied (full mode) gives upstream's greedy tokens and scores,
    and that generation also runs in pruned-inference mode."""
    arch, model, b = ctx.arch, ctx.model.eval(), ctx.batch
    prompt = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7]])
    image = b["images"][:1]
    patched, patched_scores = greedy(model, prompt, image)
    with patch.visual_mode(model, patch.PRUNED):
        pruned, _ = greedy(model, prompt, image)
    patch.remove(arch)
    try:
        plain, plain_scores = greedy(model, prompt, image)
    finally:
        patch.apply(arch)
    assert torch.equal(patched, plain), f"patched generate {patched.tolist()} != upstream {plain.tolist()}"
    diff = (patched_scores - plain_scores).abs().max().item()
    assert diff <= 1e-5, f"generate scores differ from upstream's by {diff:.3g}"
    assert pruned.shape[0] == 1 and pruned.shape[1] >= 1, f"pruned generate returned {pruned.shape}"
    return (f"full-mode tokens {patched[0].tolist()} == upstream's (scores max |diff| {diff:.1e}); "
            f"pruned inference {pruned[0].tolist()}")
