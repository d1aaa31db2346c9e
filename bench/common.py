"""Shared pieces of the CPU benchmarks: a LLaVA-shaped model built in memory through the real loading path,
synthetic batches of LLaVA's shapes, the two training stages' trainable sets, and interleaved timing.

Absolute times on a shared CPU are noise; the benchmarks compare costs measured side by side (round-robin over
the variants in every repeat) and report medians with their min/max spread.
"""
from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402

PATCH = 14  # CLIP ViT-L/14 patch size: an image of side s * 14 gives s * s visual tokens
NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # LLaVA-NeXT's anyres grids, (columns, rows) of tiles


def next_pinpoints(tile_px: int) -> str:
    """LLaVA-NeXT's `image_grid_pinpoints` for tiles of `tile_px` pixels ("[(336,672),...]" at 336)."""
    return "[" + ",".join(f"({c * tile_px},{r * tile_px})" for c, r in NEXT_GRIDS) + "]"


def build_model(visual_side: int, hidden: int = 512, layers: int = 8, vocab: int = 4096, clip_hidden: int = 64,
                clip_layers: int = 2, seed: int = 0, anyres: bool = False):
    """A random LLaVA-1.5-shaped model: CLIP (patch 14, `visual_side`² patch tokens, select layer -2, mlp2x_gelu
    projector) + a LLaMA of `layers` x `hidden` (SwiGLU width 8/3 hidden, 64-dim heads). The CLIP is saved and
    loaded back by `initialize_vision_modules`, as in training. `anyres`: LLaVA-NeXT's setup instead (anyres with
    NeXT's grids, spatial_unpad merging, a learned image_newline). Returns (model, image side in pixels)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

    from llava.model import LlavaLlamaForCausalLM

    if hidden % 64:
        raise ValueError(f"hidden must be a multiple of 64 (64-dim attention heads), got {hidden}")
    torch.manual_seed(seed)
    image = visual_side * PATCH
    clip_cfg = CLIPVisionConfig(hidden_size=clip_hidden, intermediate_size=2 * clip_hidden, num_hidden_layers=clip_layers,
                                num_attention_heads=max(1, clip_hidden // 32), image_size=image, patch_size=PATCH)
    llm_cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                          num_attention_heads=hidden // 64, vocab_size=vocab, max_position_embeddings=8192)
    model = LlavaLlamaForCausalLM(llm_cfg)
    model.config.use_cache = False
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = Path(tmp) / "clip"
        CLIPVisionModel(clip_cfg).save_pretrained(clip_dir)
        CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image}).save_pretrained(clip_dir)
        args = SimpleNamespace(vision_tower=str(clip_dir), mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
                               mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=None,
                               mm_patch_merge_type="spatial_unpad" if anyres else "flat")
        model.get_model().initialize_vision_modules(args)
    if anyres:
        model.config.image_aspect_ratio, model.config.image_grid_pinpoints = "anyres", next_pinpoints(image)
    return model, image


def llm_parameters(model) -> int:
    """Parameters of the language model (embeddings, decoder, LM head), vision tower and projector excluded."""
    skip = ("vision_tower", "mm_projector")
    return sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))


def synthetic_batch(batch: int, text: int, answer: int, image_at: int, image_side: int, vocab: int,
                    seed: int = 0) -> Dict[str, torch.Tensor]:
    """One training batch of LLaVA's shapes: `text` tokens per sample with one image placeholder at `image_at`
    and the last `answer` tokens supervised; random pixels. Keys are the model's forward arguments."""
    if not 0 <= image_at < text - answer:
        raise ValueError(f"image_at={image_at} must lie in the prompt part [0, {text - answer}) of the text")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, text), generator=gen)
    ids[:, image_at] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, : text - answer] = IGNORE_INDEX
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "images": torch.randn(batch, 3, image_side, image_side, generator=gen),
    }


def anyres_batch(batch: int, text: int, answer: int, image_at: int, tile_px: int, grid: Tuple[int, int], vocab: int,
                 seed: int = 0) -> Dict[str, object]:
    """`synthetic_batch` with LLaVA-NeXT inputs: each image an anyres stack [1 + cols * rows, 3, tile, tile] (base
    view + tiles) of an image exactly covering a `grid` = (cols, rows) of tiles, and its `image_sizes` (w, h)."""
    cols, rows = grid
    out = synthetic_batch(batch, text, answer, image_at, tile_px, vocab, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    out["images"] = torch.randn(batch, 1 + cols * rows, 3, tile_px, tile_px, generator=gen)
    out["image_sizes"] = [(cols * tile_px, rows * tile_px)] * batch
    return out


class SyntheticDataset(torch.utils.data.Dataset):
    """`size` samples cut from synthetic batches (fixed per index), for a real Trainer run of the same shapes."""

    def __init__(self, size: int, text: int, answer: int, image_at: int, image_side: int, vocab: int, seed: int = 0):
        whole = synthetic_batch(size, text, answer, image_at, image_side, vocab, seed)
        self.samples = [{k: v[i] for k, v in whole.items()} for i in range(size)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return self.samples[i]


def collate(samples: List[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stack equally shaped samples into a batch."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def prepare_stage(model, stage: str, lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                  target_modules=None, host=None):
    """Set the trainable parameters of a LLaVA training stage; returns the module to call for a training step.

    "pretrain": LLM and vision tower frozen, projector trainable (LLaVA stage 1).
    "sft": LoRA (peft) on the LLM's linear layers (`target_modules`, default LLaVA's `find_all_linear_names`) +
    trainable projector, vision tower frozen (LLaVA LoRA SFT); returns the peft wrapper. In both, a NeXT
    `image_newline` trains with the projector, and an isolator attached later is trainable. `host`: what DualSpeed
    reads the projector and newline through (`dualspeed_patch.host.llava_part`; default the model itself, a Hugging
    Face Llava passes its host adapter).
    """
    from dualspeed_patch.host import llava_part

    parts = model if host is None else host

    def multimodal_trainable() -> None:
        llava_part(parts, "mm_projector").requires_grad_(True)
        newline = llava_part(parts, "image_newline")
        if newline is not None:
            newline.requires_grad_(True)

    if stage == "pretrain":
        model.requires_grad_(False)
        multimodal_trainable()
        return model
    if stage != "sft":
        raise ValueError(f"stage must be 'pretrain' or 'sft', got {stage!r}")
    from peft import LoraConfig, get_peft_model

    from llava.train.train import find_all_linear_names

    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                        target_modules=target_modules or find_all_linear_names(model), task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)
    multimodal_trainable()
    return wrapped


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     weights: Optional[Mapping[str, int]] = None) -> Dict[str, Dict[str, List[float]]]:
    """Seconds per call of each function on both clocks ({"cpu": {name: [...]}, "wall": {...}}), called round-robin
    in `repeats` rounds after `warmup` untimed rounds, so that load changes on a shared machine hit every variant
    alike. A variant of weight k is called k times per round (spread through the round; its samples are stored
    round by round); each round starts one slot later, so no variant always runs right after the same one.

    "cpu" is this process's CPU time: with one torch thread it is the work done, much less sensitive to other
    processes competing for the cores than "wall", the elapsed time."""
    weights = {name: 1 for name in fns} if weights is None else {name: int(weights.get(name, 1)) for name in fns}
    if any(k < 1 for k in weights.values()):
        raise ValueError(f"weights must be >= 1, got {weights}")
    slots = [name for i in range(max(weights.values(), default=0)) for name in fns if weights[name] > i]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, Dict[str, List[float]]] = {clock: {name: [] for name in fns} for clock in CLOCKS}
    for round_ in range(repeats):
        shift = round_ % len(slots) if slots else 0
        for name in slots[shift:] + slots[:shift]:
            fn = fns[name]
            start = {clock: read() for clock, read in CLOCKS.items()}
            fn()
            for clock, read in CLOCKS.items():
                times[clock][name].append(read() - start[clock])
    return times


def summarise(samples: List[float]) -> Dict[str, float]:
    """Median, min, max (seconds) and count of a list of timings."""
    if not samples:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}
