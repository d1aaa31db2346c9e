"""DualSpeed for Hugging Face's own LLaVA models (`LlavaForConditionalGeneration`, `LlavaNextForConditionalGeneration`)
trained with Hugging Face's Trainer: the same method, flags, schedule, isolator and distillation as the LLaVA
repository's patch, reached through a host adapter (`host.HFLlavaHost`) instead of a monkey-patch of LLaVA.

    from dualspeed_patch import DualSpeedArguments
    from dualspeed_patch.hf import DualSpeedTrainer
    trainer = DualSpeedTrainer(model=model, args=training_args, train_dataset=..., data_collator=...,
                               dualspeed_args=DualSpeedArguments(dualspeed=True, pruning_ratio=0.9))
    trainer.train()

or `setup(trainer, ds_args)` on any built Trainer (e.g. TRL's SFTTrainer). See `scripts/hf/finetune_lora_dualspeed.py`.
"""
from .forward import install, uninstall
from .host import HFLlavaHost, host_of
from .inference import generate, llm_inputs
from .trainer import ISOLATOR_FILE, DualSpeedTrainer, HFDualSpeedCallback, load_dualspeed, save_isolator, setup

__all__ = ["DualSpeedTrainer", "HFDualSpeedCallback", "HFLlavaHost", "ISOLATOR_FILE", "generate", "host_of",
           "install", "llm_inputs", "load_dualspeed", "save_isolator", "setup", "uninstall"]
