"""The Hugging Face rows of bench/step_costs.py (--hf): the same training steps on Hugging Face's Llava classes.

The cell's LLaVA model is copied weight for weight into `LlavaForConditionalGeneration` (`LlavaNextForConditional-
Generation` at NeXT counts; playground.world_hf), given the cell's stage (projector, or LoRA on the language
model's linear layers + projector) and, through DualSpeed's host adapter (dualspeed_patch.hf), the cell's mode
isolator. Its batch holds the LLaVA rows' tokens and pixels in Hugging Face's form: each image placeholder expanded
to one `HF_IMAGE_TOKEN` per visual token, NeXT's image sizes as (height, width). The rows:
- hf_baseline: Hugging Face's own forward + backward (DualSpeed's forward uninstalled for the call);
- hf_fast / hf_slow (SFT): DualSpeed's fast / slow micro-step through the host adapter.
They are timed round-robin with the LLaVA rows; HF_RATIOS names the ratios step_costs_cell reports for them.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import torch

from common import REPO, prepare_stage  # noqa: F401  (REPO: puts the repository on sys.path before the imports below)

from dualspeed_patch import DualSpeedArguments, attach  # noqa: E402
from dualspeed_patch.hf import host_of, install, uninstall  # noqa: E402
from dualspeed_patch.modes import ModeSchedule  # noqa: E402
from dualspeed_patch.state import DualSpeed  # noqa: E402
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from step_costs_rows import dualspeed_args  # noqa: E402

HF_ROWS = ("hf_baseline", "hf_fast", "hf_slow")
# synthetic_batch draws text ids from [3, vocab): id 2 never occurs in the text, so it can be the image token
# without a new vocabulary row, and the Hugging Face model's embeddings and LM head have the LLaVA model's shape.
HF_IMAGE_TOKEN = 2
# ratio name -> (numerator row, denominator rows), each taken within a round (step_costs_cell.paired_ratio); a
# ratio is reported when its rows were timed (hf_slow and slow: SFT only).
HF_RATIOS: Dict[str, Tuple[str, List[str]]] = {
    "hf_baseline_over_baseline": ("hf_baseline", ["baseline"]),  # the two models' plain steps
    "hf_fast_over_hf_baseline": ("hf_fast", ["hf_baseline"]),  # DualSpeed's gain on Hugging Face's model
    "hf_fast_over_fast": ("hf_fast", ["fast"]),  # what the host adapter adds to the fast step
    "hf_slow_over_slow": ("hf_slow", ["slow"]),  # ... and to the slow step
}


def hf_batch(batch: Dict[str, object], image_tokens: int,
             image_token_id: int = HF_IMAGE_TOKEN) -> Dict[str, torch.Tensor]:
    """The LLaVA batch in Hugging Face's form: each IMAGE_TOKEN_INDEX placeholder becomes `image_tokens` image
    tokens (attended, labels IGNORE_INDEX), `images` become `pixel_values` and NeXT's (width, height) `image_sizes`
    a [B, 2] tensor of (height, width). Every image of the batch has `image_tokens` visual tokens."""
    run = torch.full((image_tokens,), image_token_id, dtype=batch["input_ids"].dtype)
    rows: Dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    fill = {"input_ids": run, "attention_mask": torch.ones_like(run), "labels": torch.full_like(run, IGNORE_INDEX)}
    for i, ids in enumerate(batch["input_ids"]):
        places = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        for key, pieces in rows.items():
            row, start, parts = batch[key][i], 0, []
            for at in places:
                parts += [row[start:at], fill[key]]
                start = at + 1
            pieces.append(torch.cat(parts + [row[start:]]))
    out = {key: torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True,
                                                padding_value=IGNORE_INDEX if key == "labels" else 0)
           for key, pieces in rows.items()}
    out["pixel_values"] = batch["images"]
    if batch.get("image_sizes") is not None:
        out["image_sizes"] = torch.tensor([[h, w] for w, h in batch["image_sizes"]])
    return out


def prepare_hf_stage(hf: torch.nn.Module, stage: str, llava: torch.nn.Module, lora_r: int, lora_alpha: int,
                     lora_dropout: float = 0.05) -> torch.nn.Module:
    """common.prepare_stage's trainable set on a Hugging Face Llava; returns the module to call for a step.

    "pretrain": everything frozen but the projector (and NeXT's newline). "sft": LoRA (peft) on the language model's
    linear layers named as LLaVA's LoRA targets (`find_all_linear_names(llava)`) + trainable projector. The vision
    tower's like-named q/k/v layers stay plain, as in real training (llava/train/train.py wraps the LLM before the
    vision tower exists); prepare_stage's LLaVA model also gets LoRA there, run without gradient (tiny cost)."""
    from llava.train.train import find_all_linear_names

    targets = r"model\.language_model\..*\.(" + "|".join(find_all_linear_names(llava)) + ")"
    return prepare_stage(hf, stage, lora_r, lora_alpha, lora_dropout, target_modules=targets, host=host_of(hf))


def hf_model(a: argparse.Namespace, pristine: torch.nn.Module, llava: torch.nn.Module,
             stage: str) -> Tuple[torch.nn.Module, torch.nn.Module, DualSpeed]:
    """(Hugging Face Llava with `pristine`'s weights, the module to call for a step, DualSpeed's state) for `stage`,
    with DualSpeed's forward installed and attached (isolator copied from the cell's LLaVA model `llava`); in
    training mode."""
    from playground.world_hf import hf_llava_from_llava

    hf = hf_llava_from_llava(pristine, HF_IMAGE_TOKEN, attn_implementation=pristine.config._attn_implementation)
    step_model = prepare_hf_stage(hf, stage, pristine, a.lora_r, 2 * a.lora_r)
    state = attach(install(step_model), dualspeed_args(a, "divprune", 0.0), seed=a.seed, announce=False)
    state.metrics = None  # as the LLaVA rows' state: no loss terms recorded, the same work on both sides
    isolator = getattr(llava.get_model(), "mode_isolator", None)
    if isolator is not None:
        with torch.no_grad():
            hf.model.mode_isolator.weight.copy_(isolator.weight)
    return hf, step_model.train(), state


def hf_rows(a: argparse.Namespace, pristine: torch.nn.Module, llava: torch.nn.Module, batch: Dict[str, object],
            stage: str, image_tokens: int) -> Tuple[Dict[str, Callable[[], object]], dict]:
    """The Hugging Face rows of one (counts, stage) cell as zero-argument callables, and what they ran on (`llava`:
    the cell's LLaVA model; `image_tokens`: visual tokens per image of `batch`)."""
    hf, step_model, state = hf_model(a, pristine, llava, stage)
    inputs = hf_batch(batch, image_tokens)

    def train_step():
        step_model.zero_grad(set_to_none=True)
        step_model(**inputs).loss.backward()

    def baseline():
        uninstall(step_model)  # Hugging Face's own forward, as the class defines it
        try:
            train_step()
        finally:
            install(step_model)

    def dualspeed_step(args: DualSpeedArguments):
        def run():
            state.args = args
            state.schedule = ModeSchedule(a.seed, args.slow_mode_ratio)  # ratio 0: fast, 1: slow
            train_step()
        return run

    rows = {"hf_baseline": baseline, "hf_fast": dualspeed_step(dualspeed_args(a, "divprune", 0.0))}
    if stage == "sft":  # as the LLaVA rows: pretraining runs fast steps only
        rows["hf_slow"] = dualspeed_step(dualspeed_args(a, "divprune", 1.0))
    info = {"hf_model": type(hf).__name__, "hf_sequence_full": int(inputs["input_ids"].shape[1])}
    return rows, info
