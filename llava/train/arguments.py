"""Command-line arguments of LLaVA training: one dataclass per concern, same flag names as upstream LLaVA."""
from dataclasses import dataclass, field
from typing import Optional

import transformers


@dataclass
class ModelArguments:
    """Which LLM, vision tower and projector to build, and which parts are frozen."""
    model_name_or_path: Optional[str] = field(default=None)
    version: Optional[str] = field(default="v0", metadata={"help": "Conversation template key (plain, v1, ...)."})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False)
    vision_tower: Optional[str] = field(default=None)
    mm_vision_select_layer: Optional[int] = field(default=-1)
    pretrain_mm_mlp_adapter: Optional[str] = field(default=None)
    mm_projector_type: Optional[str] = field(default="linear")
    mm_use_im_start_end: bool = field(default=False)
    mm_use_im_patch_token: bool = field(default=True)
    mm_patch_merge_type: Optional[str] = field(default="flat")
    mm_vision_select_feature: Optional[str] = field(default="patch")


@dataclass
class DataArguments:
    """Where the LLaVA-format JSON and images live and how images are preprocessed."""
    data_path: Optional[str] = field(default=None, metadata={"help": "Path to the training data (LLaVA JSON list)."})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    image_folder: Optional[str] = field(default=None)
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: Optional[str] = field(default=None)
    max_truncated_fraction: float = field(default=0.01, metadata={
        "help": "Largest share of samples whose whole answer may be cut off by --model_max_length (they train on "
                "nothing; each is named in a warning); above it the run stops."})
    # Filled in by train() from the model arguments (init=False keeps them off the command line).
    conv_version: Optional[str] = field(default=None, init=False)
    mm_use_im_start_end: bool = field(default=False, init=False)
    # Visual tokens an image adds to a sample (the vision tower's patches; for anyres the base view's, a lower bound).
    image_token_count: int = field(default=0, init=False)
    # Set by methods whose visual-token selection reads the instruction (instruction-aware pruners).
    carry_instructions: bool = field(default=False, init=False)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """transformers.TrainingArguments plus LLaVA's LoRA / quantisation / multimodal-lr flags."""
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: Optional[str] = field(default="triton")
    model_max_length: int = field(
        default=512,
        metadata={"help": "Maximum sequence length. Sequences are right-padded (and possibly truncated)."},
    )
    double_quant: bool = field(default=True)
    quant_type: str = field(default="nf4")
    bits: int = field(default=16, metadata={"help": "How many bits to use (16, 8 or 4)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: Optional[float] = None
    group_by_modality_length: bool = field(default=False)
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "flash_attention_2 | sdpa | eager; default: flash_attention_2 if installed, else sdpa."}
    )
    # Flags LLaVA scripts pass that transformers 5 renamed; accepted and mapped onto the new names.
    warmup_ratio: Optional[float] = field(
        default=None, metadata={"help": "Warm-up as a fraction of training steps (transformers 5: --warmup_steps < 1)."}
    )
    evaluation_strategy: Optional[str] = field(default=None, metadata={"help": "Old name of --eval_strategy."})

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("pass either --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        # LLaVA's --gradient_checkpointing is transformers' --activation_checkpointing (renamed within 5.x): map it
        # here so the run does not warn about a flag every LLaVA script passes.
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
                setattr(self, old, None)
        super().__post_init__()


class ArgumentError(ValueError):
    """A bad command-line value or a file a flag names that does not exist; the message names the flag."""
