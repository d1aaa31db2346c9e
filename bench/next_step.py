"""LLaVA-NeXT on the tiny world: LLM input tokens and training-step time, baseline step vs DualSpeed fast step.

Both steps are forward + backward on the same batch of anyres samples (spatial_unpad, LLaVA-NeXT's five grid
shapes 1x2, 2x1, 2x2, 3x1, 1x3 in units of the tiny CLIP's 64-px tile, so 64 tokens per view). The baseline feeds
each image's full packed sequence (base view + unpadded tiles + newlines); the fast step prunes it to
K_i = round(0.1 * N_i) tokens with DivPrune and prefixes the 4-vector mode isolator. LLM, projector, image_newline
and isolator train; the vision tower is frozen (as in LLaVA). Steps are interleaved and the median is reported.

    python bench/next_step.py [--world playground/tiny] [--batch 8] [--text 64] [--repeats 7] [--threads 1]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import dualspeed_patch.patch as patch  # noqa: E402
from dualspeed_patch import DualSpeedArguments  # noqa: E402
from dualspeed_patch.state import attach  # noqa: E402
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava.mm_utils import process_images  # noqa: E402

PINPOINTS = "[(64,128),(128,64),(128,128),(192,64),(64,192)]"  # LLaVA-NeXT's grids, 64-px tiles
SIZES = [(640, 480), (480, 640), (500, 375), (612, 612), (1024, 340), (300, 900), (640, 427), (427, 640)]


def build_model(world: Path):
    """Tiny LLaVA-NeXT (tiny LLaMA + tiny CLIP, spatial_unpad) with DualSpeed attached, in training mode."""
    from llava.model import LlavaLlamaForCausalLM
    from llava.train.arguments import ModelArguments

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(str(world / "models/tiny-llama"), attn_implementation="sdpa")
    args = ModelArguments(vision_tower=str(world / "models/tiny-clip"), mm_vision_select_layer=-2,
                          mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad")
    model.get_model().initialize_vision_modules(args)
    config = model.config
    config.image_aspect_ratio, config.image_grid_pinpoints = "anyres", PINPOINTS
    config.tokenizer_model_max_length, config.tokenizer_padding_side = 4096, "right"
    patch.apply()
    attach(model, DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=0.0), seed=0,
           announce=False)  # r = 0: every step is a fast step
    return model.train()


def make_batch(model, batch: int, text: int, answer: int):
    rng = np.random.default_rng(0)
    sizes = [SIZES[i % len(SIZES)] for i in range(batch)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    pixels = process_images(images, model.get_vision_tower().image_processor, model.config)
    ids = torch.randint(3, 1000, (batch, text), generator=torch.Generator().manual_seed(0))
    ids[:, 5] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : text - answer] = IGNORE_INDEX
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, images=list(pixels), image_sizes=sizes)


def llm_tokens(model, b, mode) -> int:
    with torch.no_grad(), patch.visual_mode(model, mode):
        out = model.prepare_inputs_labels_for_multimodal(b["input_ids"], None, b["attention_mask"], None, b["labels"],
                                                         b["images"], b["image_sizes"])
    return int(out[2].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=REPO / "playground/tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text", type=int, default=64, help="text tokens per sample (one image placeholder among them)")
    p.add_argument("--answer", type=int, default=16, help="supervised answer tokens per sample")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = build_model(a.world)
    b = make_batch(model, a.batch, a.text, a.answer)
    original_forward = type(model).forward.__wrapped__

    def baseline():
        model.zero_grad(set_to_none=True)
        with patch.visual_mode(model, patch.FULL):
            original_forward(model, **b).loss.backward()

    def fast():
        model.zero_grad(set_to_none=True)
        model(**b).loss.backward()

    steps = {"baseline": baseline, "fast": fast}
    times = {name: [] for name in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(a.repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens = {"baseline": llm_tokens(model, b, patch.FULL), "fast": llm_tokens(model, b, patch.FAST)}
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"batch={a.batch} text={a.text} answer={a.answer} repeats={a.repeats} threads={a.threads} "
          f"pinpoints={PINPOINTS}")
    for name in steps:
        print(f"{name:9s} LLM input tokens {tokens[name]:6d}   step median {med[name] * 1000:8.1f} ms "
              f"(min {min(times[name]) * 1000:.1f}, max {max(times[name]) * 1000:.1f})")
    print(f"tokens baseline / fast = {tokens['baseline'] / tokens['fast']:.2f}   "
          f"step time baseline / fast = {med['baseline'] / med['fast']:.2f}")


if __name__ == "__main__":
    main()
