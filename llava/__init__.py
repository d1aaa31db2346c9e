"""LLaVA: the interface of haotian-liu/LLaVA, reimplemented for current transformers / peft / deepspeed."""
from .model import LlavaLlamaForCausalLM

__all__ = ["LlavaLlamaForCausalLM"]
