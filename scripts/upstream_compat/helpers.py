"""The tiny upstream model, the mixed batch, and the calls and comparisons several checks share.

Import after `context.import_upstream()`: `llava` here must be upstream's.
"""
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Tuple

import torch
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def build_model(cls, world: Path, max_length: int = 2048):
    """Tiny upstream LlavaLlamaForCausalLM: tiny LLaMA + tiny CLIP + fresh mlp2x_gelu projector, fp32, eval."""
    torch.manual_seed(0)
    model = cls.from_pretrained(str(world / "models" / "tiny-llama"), attn_implementation="sdpa")
    model_args = SimpleNamespace(
        vision_tower=str(world / "models" / "tiny-clip"),
        mm_vision_select_layer=-2,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        pretrain_mm_mlp_adapter=None,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
    )
    model.get_model().initialize_vision_modules(model_args)
    model.config.tokenizer_model_max_length = max_length
    return model.eval()


def mixed_batch(model) -> Dict[str, "object"]:
    """Row 0: text + image + 3 answer tokens; row 1: text-only (dummy image), right padded by 2."""
    size = model.get_vision_tower().config.image_size
    ignore = IGNORE_INDEX
    return dict(
        input_ids=torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, 10, 11, 12, 13, 0, 0]]),
        attention_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
        labels=torch.tensor([[ignore, ignore, ignore, ignore, 7, 8, 9], [ignore, ignore, 11, 12, 13, ignore, ignore]]),
        images=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7)),
    )


def prepare(model, b, with_positions: bool = False):
    """Call the model's `prepare_inputs_labels_for_multimodal` on batch `b` (no gradient)."""
    positions = None
    if with_positions:
        positions = torch.arange(b["input_ids"].shape[1]).unsqueeze(0).expand_as(b["input_ids"]).contiguous()
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(
            b["input_ids"], positions, b["attention_mask"], None, b["labels"], b["images"])


def compare_prepared(expected, got, what: str) -> str:
    """Assert two LLaVA return tuples match (embeds exactly, labels, mask and its dtype; position ids on real
    tokens). Returns a note on padded position ids, where upstream writes 0 and the patch may not."""
    assert got[0] is None and expected[0] is None, f"{what}: input_ids should be None"
    assert got[3] is None and expected[3] is None, f"{what}: past_key_values should pass through as None"
    assert got[4].shape == expected[4].shape, f"{what}: embeds shape {tuple(got[4].shape)} != {tuple(expected[4].shape)}"
    diff = (got[4] - expected[4]).abs().max().item()
    assert diff <= 1e-6, f"{what}: embeds differ by {diff:.3g}"
    assert torch.equal(got[5], expected[5]), f"{what}: labels differ\n{got[5]}\n{expected[5]}"
    assert got[2].dtype == expected[2].dtype, f"{what}: mask dtype {got[2].dtype} != {expected[2].dtype}"
    assert torch.equal(got[2], expected[2]), f"{what}: attention masks differ\n{got[2]}\n{expected[2]}"
    if expected[1] is None:
        assert got[1] is None, f"{what}: position_ids should be None"
        return f"embeds max |diff| {diff:.1e}"
    real = expected[2].bool()
    assert got[1].dtype == expected[1].dtype, f"{what}: position dtype {got[1].dtype} != {expected[1].dtype}"
    assert torch.equal(got[1][real], expected[1][real]), f"{what}: position ids differ on real tokens"
    pads = int((got[1][~real] != expected[1][~real]).sum())
    return f"embeds max |diff| {diff:.1e}; position ids equal on real tokens ({pads} padded positions differ, masked)"


def fast_and_slow_steps(schedule) -> Tuple[int, int]:
    """First global steps at which the schedule picks fast and slow mode."""
    fast = next(s for s in range(1000) if not schedule.at(s).is_slow())
    slow = next(s for s in range(1000) if schedule.at(s).is_slow())
    return fast, slow


def greedy(model, input_ids, images, max_new_tokens: int = 6):
    """Upstream `generate` (greedy) on one prompt with its image: (token ids, [1, steps, vocab] scores)."""
    with torch.no_grad():
        out = model.generate(input_ids, images=images, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             use_cache=True, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores, dim=1)
