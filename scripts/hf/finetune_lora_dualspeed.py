"""LoRA fine-tuning of a Hugging Face LLaVA model (llava-hf/llava-1.5-*, llava-v1.6-*) with DualSpeed.

The model, processor and chat template are Hugging Face's own; the data is LLaVA's JSON format (a list of
{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}, `<image>` marking the image in a human turn).
DualSpeed's flags are the LLaVA scripts' (`--dualspeed True --pruning_ratio 0.9 --slow_mode_ratio 0.1 ...`).

    torchrun --nproc_per_node 8 scripts/hf/finetune_lora_dualspeed.py \
        --model_name_or_path llava-hf/llava-1.5-7b-hf --data_path llava_v1_5_mix665k.json --image_folder data \
        --output_dir checkpoints/llava-hf-lora-dualspeed --deepspeed scripts/zero3.json --bf16 True \
        --per_device_train_batch_size 16 --learning_rate 2e-4 --num_train_epochs 1 \
        --dualspeed True --pruning_ratio 0.9 --slow_mode_ratio 0.1 --vtp_method divprune

Writes the LoRA adapter (projector included, `modules_to_save`), the processor and `mode_isolator.safetensors`.
Load for inference with `from_pretrained` + `PeftModel.from_pretrained` as usual; pruned inference:
`dualspeed_patch.hf.load_dualspeed(model, output_dir)` then `dualspeed_patch.hf.generate(model, inputs, mode=...)`.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers
from PIL import Image

if __package__ in (None, ""):  # run as a script from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dualspeed_patch import DualSpeedArguments
from dualspeed_patch.hf import DualSpeedTrainer
from dualspeed_patch.methods import get_method
from llava.train.data import first_instruction
from llava.train.distributed import cpu_training_argv, init_cpu_deepspeed_comm, shutdown_process_group

IGNORE_INDEX = -100
LANGUAGE_LINEAR = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "A Hugging Face Llava / LlavaNext model (hub id or directory)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, flash_attention_2 or eager."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (LLaVA-1.5's recipe: 128)."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (LLaVA-1.5's recipe: 256)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target: str = field(default=LANGUAGE_LINEAR, metadata={"help": "Regex of the LoRA-adapted linear layers."})
    train_projector: bool = field(default=True, metadata={"help": "Train the projector fully (saved with the adapter)."})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA-format JSON list of conversations."})
    image_folder: str = field(default="", metadata={"help": "Folder the samples' `image` paths are relative to."})
    model_max_length: int = field(default=2048, metadata={"help": "Longest tokenized sample (image tokens included)."})


def to_messages(record: dict, image: Optional[Image.Image]) -> list:
    """LLaVA's conversation turns as chat messages; the `<image>` mark becomes an image part where it stood."""
    roles = {"human": "user", "gpt": "assistant"}
    messages = []
    for turn in record["conversations"]:
        role, text = roles.get(turn.get("from")), str(turn.get("value", ""))
        if role is None:
            raise ValueError(f"sample {record.get('id')}: unknown speaker {turn.get('from')!r} (expected human / gpt)")
        parts = []
        if role == "user" and "<image>" in text:
            if image is None:
                raise ValueError(f"sample {record.get('id')}: `<image>` in a turn, but the sample names no image")
            before, _, after = text.partition("<image>")
            parts += [{"type": "text", "text": before.strip()}] if before.strip() else []
            parts += [{"type": "image", "image": image}]
            text = after.strip()
        parts += [{"type": "text", "text": text}] if text or not parts else []
        messages.append({"role": role, "content": parts})
    return messages


class LlavaJsonDataset(torch.utils.data.Dataset):
    """LLaVA's JSON records, tokenized by the processor's chat template; labels only on the assistant's replies."""

    def __init__(self, args: DataArguments, processor, carry_instructions: bool = False):
        self.carry_instructions = carry_instructions  # each sample's first instruction, for instruction-aware pruners
        with open(args.data_path) as handle:
            self.records = json.load(handle)
        if not isinstance(self.records, list) or not self.records:
            raise ValueError(f"{args.data_path}: expected a non-empty JSON list of conversations")
        self.args, self.processor = args, processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        image = None
        if record.get("image"):
            image = Image.open(os.path.join(self.args.image_folder, record["image"])).convert("RGB")
        encoded = self.processor.apply_chat_template(
            to_messages(record, image), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            return_tensors="pt")
        ids = encoded["input_ids"][0]
        if ids.shape[0] > self.args.model_max_length:
            raise ValueError(f"sample {record.get('id')}: {ids.shape[0]} tokens (image tokens included) exceed "
                             f"--model_max_length {self.args.model_max_length}")
        labels = torch.where(encoded["assistant_masks"][0].bool(), ids, IGNORE_INDEX)
        item = {"input_ids": ids, "labels": labels}
        if self.carry_instructions:
            item["instruction"] = first_instruction(record)  # the text LLaVA's dataset gives the pruner too
        for key in ("pixel_values", "image_sizes"):
            if key in encoded:
                item[key] = encoded[key]
        return item


def collate(items: list, pad_id: int) -> dict:
    """Right-padded batch; pixel values only of the samples that have an image (NeXT's views padded to the most)."""
    pad = torch.nn.utils.rnn.pad_sequence
    batch = {"input_ids": pad([x["input_ids"] for x in items], batch_first=True, padding_value=pad_id),
             "labels": pad([x["labels"] for x in items], batch_first=True, padding_value=IGNORE_INDEX)}
    lengths = torch.tensor([len(x["input_ids"]) for x in items])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths.unsqueeze(1)).long()
    pixels = [x["pixel_values"] for x in items if "pixel_values" in x]
    if pixels and pixels[0].ndim == 5:  # NeXT: [1, views, 3, H, W] per image
        views = max(p.shape[1] for p in pixels)
        pixels = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, views - p.shape[1])) for p in pixels]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    sizes = [x["image_sizes"] for x in items if "image_sizes" in x]
    if sizes:
        batch["image_sizes"] = torch.cat(sizes)
    if all("instruction" in x for x in items):
        batch["instructions"] = [x["instruction"] for x in items]  # taken by DualSpeed's forward, one per sample
    return batch


def build_model(model_args: ModelArguments, training_args):
    """The Hugging Face model with LoRA on the language model and a trainable projector."""
    from peft import LoraConfig, get_peft_model

    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path, dtype=dtype, attn_implementation=model_args.attn_implementation)
    model.config.use_cache = model.config.text_config.use_cache = False  # (the decoder reads its own config)
    lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.lora_target, task_type="CAUSAL_LM",
                      modules_to_save=["multi_modal_projector"] if model_args.train_projector else None)
    model = get_peft_model(model, lora)
    return model.to(dtype)  # one dtype for every parameter (ZeRO-3 rejects mixed ones)


def main(argv: Optional[list] = None) -> None:
    # DeepSpeed's collectives use torch.distributed names torch deprecates: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    # peft reads transformers' deprecated `is_gradient_checkpointing`: nothing a user can act on either.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    argv = cpu_training_argv(list(sys.argv[1:] if argv is None else argv))
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, transformers.TrainingArguments,
                                           DualSpeedArguments))
    model_args, data_args, training_args, ds_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # pixel_values / image_sizes go to the model as they are
    training_args.device  # the process group first: ZeRO-3 partitions the model as it loads
    init_cpu_deepspeed_comm(training_args)
    transformers.set_seed(training_args.seed)
    processor = transformers.AutoProcessor.from_pretrained(model_args.model_name_or_path)
    needs_text = ds_args.dualspeed and "relevance" in get_method(ds_args.vtp_method).context_keys
    dataset = LlavaJsonDataset(data_args, processor, carry_instructions=needs_text)
    model = build_model(model_args, training_args)
    pad_id = processor.tokenizer.pad_token_id
    trainer = DualSpeedTrainer(model=model, args=training_args, train_dataset=dataset,
                               data_collator=lambda items: collate(items, pad_id), dualspeed_args=ds_args)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    if trainer.args.should_save:
        processor.save_pretrained(training_args.output_dir)
    shutdown_process_group()


if __name__ == "__main__":
    main()
