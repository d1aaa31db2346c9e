"""Slow-step overhead: one DualSpeed slow step vs (baseline step + one pruned forward without gradient).

The slow step must cost no more than what it fundamentally is: the student's training step on full tokens plus
the teacher's forward on the pruned input. Builds a LLaVA-shaped model in memory (random CLIP giving N visual tokens,
a LLaMA big enough to dominate), fp32 on CPU, and times the three interleaved, reporting medians and the ratio.

    python bench/slow_step.py [--visual 576] [--text 96] [--batch 2] [--hidden 512] [--layers 8] [--repeats 5]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch import DualSpeedArguments  # noqa: E402
from dualspeed_patch.isolator import attach_isolator  # noqa: E402
from dualspeed_patch.modes import ModeSchedule  # noqa: E402
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402


def build_model(visual_side: int, hidden: int, layers: int, tmp: Path):
    """Random LLaVA: CLIP (patch 14, `visual_side`² patches) + LLaMA, built through the real loading path."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig
    from llava.model import LlavaLlamaForCausalLM

    image = visual_side * 14
    clip_cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=image, patch_size=14)
    CLIPVisionModel(clip_cfg).save_pretrained(tmp / "clip")
    CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image}).save_pretrained(tmp / "clip")
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, vocab_size=4096, max_position_embeddings=4096)
    model = LlavaLlamaForCausalLM(cfg)
    args = SimpleNamespace(vision_tower=str(tmp / "clip"), mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                           mm_vision_select_feature="patch", mm_patch_merge_type="flat", pretrain_mm_mlp_adapter=None)
    model.get_model().initialize_vision_modules(args)
    return model, image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--visual", type=int, default=576, help="visual tokens per image (a square number)")
    p.add_argument("--text", type=int, default=96)
    p.add_argument("--answer", type=int, default=32, help="supervised answer tokens per sample")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model, image = build_model(int(a.visual ** 0.5), a.hidden, a.layers, Path(tmp))
    patch.apply()
    model._dualspeed_args = DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=1.0)
    attach_isolator(model, 4, announce=False)
    model._dualspeed_schedule = ModeSchedule(0, 1.0)
    model.train()

    ids = torch.randint(3, 4000, (a.batch, a.text))
    ids[:, 8] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : a.text - a.answer] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    images = torch.randn(a.batch, 3, image, image)

    def baseline():
        with patch.visual_mode(model, patch.FULL):
            model.zero_grad(set_to_none=True)
            orig = type(model).forward.__wrapped__
            orig(model, input_ids=ids, attention_mask=mask, labels=labels, images=images).loss.backward()

    def pruned_forward():
        with torch.no_grad(), patch.visual_mode(model, patch.FAST):
            type(model).forward.__wrapped__(model, input_ids=ids, attention_mask=mask, labels=labels, images=images)

    def slow():
        model.zero_grad(set_to_none=True)
        loss, _ = patch.slow_step(model, ids, mask, labels, images)
        loss.backward()

    times = {"baseline": [], "pruned_forward": [], "slow": []}
    for fn in (baseline, pruned_forward, slow):  # warm-up
        fn()
    for _ in range(a.repeats):
        for name, fn in (("baseline", baseline), ("pruned_forward", pruned_forward), ("slow", slow)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"visual={a.visual} text={a.text} batch={a.batch} hidden={a.hidden} layers={a.layers} repeats={a.repeats}")
    for k, v in times.items():
        print(f"{k:15s} median {med[k] * 1000:8.1f} ms  (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f})")
    ratio = med["slow"] / (med["baseline"] + med["pruned_forward"])
    print(f"slow / (baseline + pruned forward) = {ratio:.3f}")


if __name__ == "__main__":
    main()
