"""LLaVA training entry: builds the model from the command line (same flags as upstream LLaVA) and runs the Trainer.

Stage 1 (pretraining): `--tune_mm_mlp_adapter True` trains only the projector and writes `mm_projector.bin`.
Stage 2 (fine-tuning): full or LoRA (`--lora_enable True`) training writes a model / adapter directory.
"""
import importlib.util
import sys
import warnings
from typing import Callable, List, Optional, Sequence

import torch
import transformers

from llava import conversation as conversation_lib
from llava.model import LlavaLlamaForCausalLM
from llava.model.loading import load_pretrained
from llava.train.arguments import ArgumentError, DataArguments, ModelArguments, TrainingArguments
from llava.train.checkpoint import safe_save_model_for_hf_trainer, save_lora_checkpoint
from llava.train.data import check_data_files, make_supervised_data_module
from llava.train.distributed import cpu_training_argv, init_cpu_deepspeed_comm
from llava.train.llava_trainer import LLaVATrainer
from llava.train.resume import resume_target
from llava.utils import rank0_print

MULTIMODAL_MODULE_KEYWORDS = ("mm_projector", "vision_tower", "vision_resampler")


def find_all_linear_names(model: torch.nn.Module) -> List[str]:
    """Names (last component) of the LLM's Linear layers, for LoRA; multimodal modules and lm_head excluded."""
    names = set()
    for name, module in model.named_modules():
        if any(key in name for key in MULTIMODAL_MODULE_KEYWORDS):
            continue
        if isinstance(module, torch.nn.Linear):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return sorted(names)


def resolve_attn_implementation(requested: Optional[str]) -> str:
    """flash_attention_2 when installed and a GPU is present, else PyTorch SDPA (or what was asked for)."""
    if requested:
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("--attn_implementation flash_attention_2 needs `pip install .[flash]` (flash-attn)")
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def compute_dtype_of(args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def parse_args(argv: Optional[List[str]] = None, extra_dataclasses: tuple = ()):
    """Parse LLaVA's three argument dataclasses (plus any extra ones, e.g. a method's) from argv."""
    argv = cpu_training_argv(list(sys.argv[1:] if argv is None else argv))
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments) + tuple(extra_dataclasses))
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # a dataclass rejected a value (its message names the field)
        raise ArgumentError(str(err)) from None


def check_before_loading(data_args: DataArguments, extra_args: Sequence) -> None:
    """Fail in seconds, before the model loads: the data file and its images, and the files extra argument
    dataclasses name (each may offer `check_paths()`, raising FileNotFoundError or ValueError)."""
    check_data_files(data_args.data_path, data_args.image_folder)
    for args in extra_args:
        check = getattr(args, "check_paths", None)
        if check is not None:
            try:
                check()
            except (FileNotFoundError, ValueError) as err:
                raise ArgumentError(str(err)) from None


def build_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=False,
    )
    if model_args.version not in conversation_lib.conv_templates:
        raise ValueError(
            f"--version {model_args.version!r} is not a conversation template; "
            f"known: {sorted(conversation_lib.conv_templates)}"
        )
    if model_args.version == "v0" and tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    elif tokenizer.pad_token is None or model_args.version != "v0":
        tokenizer.pad_token = tokenizer.unk_token
    conversation_lib.default_conversation = conversation_lib.conv_templates[model_args.version]
    return tokenizer


def build_model(model_args: ModelArguments, training_args: TrainingArguments, attn_implementation: str):
    if training_args.bits in (4, 8):
        raise ValueError(
            f"--bits {training_args.bits} needs bitsandbytes on a CUDA GPU; this build supports --bits 16 only"
        )
    dtype = torch.bfloat16 if training_args.bf16 else None
    cls = LlavaLlamaForCausalLM if model_args.vision_tower is not None else transformers.LlamaForCausalLM
    # (a LLaMA checkpoint loaded as a LLaVA model: transformers' notice about the model type is expected)
    model = load_pretrained(cls, model_args.model_name_or_path, cache_dir=training_args.cache_dir,
                            attn_implementation=attn_implementation, dtype=dtype)
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


# LoraConfig field -> the TrainingArguments flag that sets it.
LORA_CONFIG_FLAGS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "bias": "lora_bias"}


def half_precision_of(args: TrainingArguments) -> Optional[torch.dtype]:
    """bf16 or fp16 when mixed precision is on, else None."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def lora_config_for(model, training_args: TrainingArguments):
    """A causal-LM LoraConfig from the --lora_* flags, targeting every Linear of the LLM (find_all_linear_names)."""
    from peft import LoraConfig

    flags = {field: getattr(training_args, flag) for field, flag in LORA_CONFIG_FLAGS.items()}
    return LoraConfig(target_modules=find_all_linear_names(model), task_type="CAUSAL_LM", **flags)


def apply_lora(model, training_args: TrainingArguments):
    """Wrap `model` in LoRA adapters (`--lora_enable True`); returns the PEFT model.

    dtypes: a 16-bit run puts the base weights in its half precision first, so the adapters wrap half-precision
    layers; under bf16 the whole wrapped model (adapters included, which PEFT creates in fp32) ends in bf16,
    because ZeRO-3 rejects a mix of fp32 and bf16 parameters. Under fp16 the adapters stay in fp32 (PEFT's default),
    which the fp16 gradient scaler needs.
    """
    from peft import get_peft_model

    config = lora_config_for(model, training_args)
    half = half_precision_of(training_args)
    if half is not None and training_args.bits == 16:
        model.to(half)
    rank0_print("Adding LoRA adapters...")
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if half is torch.bfloat16:
        peft_model.to(torch.bfloat16)
    return peft_model


def multimodal_config_values(tokenizer, model_args, data_args, training_args) -> dict:
    """What `attach_vision` records in the model config (read back by inference, the trainer and checkpoints)."""
    return {
        "image_aspect_ratio": data_args.image_aspect_ratio,
        "image_grid_pinpoints": data_args.image_grid_pinpoints,
        "tokenizer_padding_side": tokenizer.padding_side,
        "tokenizer_model_max_length": tokenizer.model_max_length,
        "tune_mm_mlp_adapter": model_args.tune_mm_mlp_adapter,
        "freeze_mm_mlp_adapter": training_args.freeze_mm_mlp_adapter,
        "mm_use_im_start_end": model_args.mm_use_im_start_end,
        "mm_projector_lr": training_args.mm_projector_lr,
        "mm_use_im_patch_token": model_args.mm_use_im_patch_token,
    }


def set_multimodal_trainable(model, model_args, training_args) -> None:
    """Stage 1 (`tune_mm_mlp_adapter`) trains the projector alone; `freeze_mm_mlp_adapter` freezes it whatever
    else trains."""
    projector = model.get_model().mm_projector
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        projector.requires_grad_(True)
    if training_args.freeze_mm_mlp_adapter:
        projector.requires_grad_(False)


def attach_vision(model, tokenizer, model_args, data_args, training_args) -> None:
    """Add vision tower + projector, set which multimodal parts train, and record it all in the config.

    Also hands the tower's image processor and the multimodal switches to `data_args` / `training_args`, and adds
    the image tokens the flags ask for (`initialize_vision_tokenizer`, last: it sets the embeddings' gradients
    after the stage-1 freeze).
    """
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    compute_dtype = compute_dtype_of(training_args)
    vision_tower = model.get_vision_tower()
    vision_tower.to(dtype=compute_dtype, device=training_args.device)

    for field, value in multimodal_config_values(tokenizer, model_args, data_args, training_args).items():
        setattr(model.config, field, value)
    data_args.image_processor = vision_tower.image_processor
    data_args.is_multimodal = True
    data_args.conv_version = model_args.version
    data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    training_args.use_im_start_end = model_args.mm_use_im_start_end

    set_multimodal_trainable(model, model_args, training_args)
    if training_args.bits in (4, 8):  # quantised LLM: the projector still computes in the compute dtype
        model.get_model().mm_projector.to(dtype=compute_dtype, device=training_args.device)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)


def report_trainable(model) -> None:
    """Print the trainable share of the parameters (whole sizes, also of ZeRO-3-partitioned ones)."""
    size = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (ZeRO-3 leaves an empty local tensor)
    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    rank0_print(f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")


def train(
    attn_implementation: Optional[str] = None,
    argv: Optional[List[str]] = None,
    extra_dataclasses: tuple = (),
    setup_hooks: Sequence[Callable] = (),
) -> LLaVATrainer:
    """Run one LLaVA training stage as configured by the command line (or `argv`); returns the trainer.

    Extension points for methods built on LLaVA: `extra_dataclasses` are parsed with LLaVA's
    own arguments; each `setup_hooks` entry is called as `hook(model, model_args, data_args, training_args,
    *extra_args)` once the model is complete, and may return a list of `TrainerCallback`s.
    """
    model_args, data_args, training_args, *extra_args = parse_args(argv, extra_dataclasses)
    if model_args.model_name_or_path is None:
        raise ArgumentError("--model_name_or_path is required")
    if data_args.data_path is None:
        raise ArgumentError("--data_path is required")
    check_before_loading(data_args, extra_args)
    training_args.device  # set up the process group now: ZeRO-3 partitions the model as it is loaded
    init_cpu_deepspeed_comm(training_args)
    attn = resolve_attn_implementation(training_args.attn_implementation or attn_implementation)
    rank0_print(f"Model args: {model_args}\nData args: {data_args}\nAttention: {attn}")

    transformers.set_seed(training_args.seed)  # before any weight is created: the projector (and a method's modules) start alike
    model = build_model(model_args, training_args, attn)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    tokenizer = build_tokenizer(model_args, training_args)
    data_args.conv_version = model_args.version
    if model_args.vision_tower is not None:
        attach_vision(model, tokenizer, model_args, data_args, training_args)
        data_args.image_token_count = int(getattr(model.get_vision_tower(), "num_patches", 0) or 0)
    callbacks = []
    for hook in setup_hooks:
        callbacks += hook(model, model_args, data_args, training_args, *extra_args) or []
    report_trainable(model)

    data_module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
    trainer = LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, callbacks=callbacks, **data_module)

    resume = resume_target(training_args.output_dir, training_args.resume_from_checkpoint)
    if resume is not None:
        rank0_print(f"Resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()

    model.config.use_cache = True
    if training_args.lora_enable:
        save_lora_checkpoint(model, training_args.output_dir, training_args)
    else:
        safe_save_model_for_hf_trainer(trainer=trainer, output_dir=training_args.output_dir)
    return trainer


if __name__ == "__main__":
    from llava.train.train_mem import main

    main(train)
