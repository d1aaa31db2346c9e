"""Merge a LoRA checkpoint (+ its non-LoRA trainables) into its base LLM and save a plain LLaVA checkpoint.

The result loads with `LlavaLlamaForCausalLM.from_pretrained(path)` and with loaders that pass no model base
(e.g. lmms-eval's `llava` wrapper). Keep "llava" in --save-model-path so name-based loaders recognise it.
"""
import argparse

import torch

from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model


def merge_lora(args: argparse.Namespace) -> None:
    dtype = getattr(torch, args.dtype)
    tokenizer, model, _, _ = load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path), device="cpu", torch_dtype=dtype
    )
    model.save_pretrained(args.save_model_path)
    tokenizer.save_pretrained(args.save_model_path)
    model.get_vision_tower().image_processor.save_pretrained(args.save_model_path)
    print(f"merged model saved to {args.save_model_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=str, required=True)
    parser.add_argument("--model-base", type=str, required=True)
    parser.add_argument("--save-model-path", type=str, required=True)
    parser.add_argument("--dtype", type=str, default="float16", choices=["float16", "bfloat16", "float32"])
    merge_lora(parser.parse_args())
