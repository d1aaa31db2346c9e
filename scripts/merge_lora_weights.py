"""Merge a LoRA checkpoint (+ its non-LoRA trainables) into its base LLM and save a plain LLaVA checkpoint.

The result loads with `LlavaLlamaForCausalLM.from_pretrained(path)` and with loaders that pass no model base
(e.g. lmms-eval's `llava` wrapper). Keep "llava" in --save-model-path so name-based loaders recognise it.
Training-only weights the run saved (the DualSpeed mode isolator) are not part of the merged model; they are
copied beside it as `<name>.bin` (e.g. `mode_isolator.bin`) so pruned inference with `--use-mode-isolator` still
finds them. See docs/evaluation.md, "Merging LoRA and lmms-eval".
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout uninstalled

from llava.mm_utils import get_model_name_from_path  # noqa: E402
from llava.model.builder import load_pretrained_model, read_training_only_weights, training_only_keys  # noqa: E402


def merge_lora(model_path: str, model_base: str, save_model_path: str, dtype: str = "float16") -> None:
    """Load `model_path` (LoRA) on `model_base`, merge, and write model, tokenizer, image processor and any
    training-only weights to `save_model_path`."""
    if not os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        raise ValueError(f"--model-path {model_path}: no adapter_config.json, so not a LoRA checkpoint to merge")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base, get_model_name_from_path(model_path), device="cpu", torch_dtype=getattr(torch, dtype)
    )
    model.save_pretrained(save_model_path)
    tokenizer.save_pretrained(save_model_path)
    image_processor.save_pretrained(save_model_path)
    extras, source = read_training_only_weights(model_path)
    for key in training_only_keys(model_path):
        part = {k: v for k, v in extras.items() if key in k}
        if part:
            torch.save(part, os.path.join(save_model_path, f"{key}.bin"))
            print(f"{source}: training-only weights {sorted(part)} copied to {key}.bin")
    print(f"merged model saved to {save_model_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=str, required=True, help="LoRA checkpoint (adapter + non_lora_trainables.bin)")
    parser.add_argument("--model-base", type=str, required=True, help="The LLM the LoRA run started from")
    parser.add_argument("--save-model-path", type=str, required=True, help="Output directory (keep 'llava' in its name)")
    parser.add_argument("--dtype", type=str, default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args()
    merge_lora(args.model_path, args.model_base, args.save_model_path, args.dtype)


if __name__ == "__main__":
    main()
