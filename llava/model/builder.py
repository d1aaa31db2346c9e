"""`load_pretrained_model`: load any LLaVA checkpoint kind (full, LoRA + base, projector-only + base)."""
import os
import warnings
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.llava_arch import load_projector_weights
from llava.model.loading import load_pretrained


# Weights a LLaVA model built on a plain LLM checkpoint creates itself (and reads from its own files right after).
BUILT_HERE = ("mm_projector", "image_newline", "vision_resampler")


def _is_llava(model_path: str, model_name: str) -> bool:
    if "llava" in model_name.lower():
        return True
    config_file = os.path.join(model_path, "config.json")
    if os.path.isfile(config_file):
        return "mm_vision_tower" in AutoConfig.from_pretrained(model_path).to_dict()
    return False


def _is_lora(model_path: str, model_name: str) -> bool:
    return "lora" in model_name.lower() or os.path.isfile(os.path.join(model_path, "adapter_config.json"))


def load_non_lora_trainables(model_path: str) -> dict:
    """`non_lora_trainables.bin` with peft's `base_model.model.` prefix removed, keyed like the bare model."""
    path = os.path.join(model_path, "non_lora_trainables.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a LoRA checkpoint needs the projector weights saved beside the adapter")
    weights = load_projector_weights(path)
    weights = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in weights.items()}
    if any(k.startswith("model.model.") for k in weights):
        weights = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in weights.items()}
    return weights


def load_pretrained_model(
    model_path: str,
    model_base: Optional[str],
    model_name: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    **kwargs,
):
    """Returns `(tokenizer, model, image_processor, context_len)` as upstream LLaVA does.

    The checkpoint kind is recognised as upstream does (name containing "llava" / "lora"), and also from the
    files (`mm_vision_tower` in config.json, an `adapter_config.json`), so renamed directories load too.
    Default dtype: float16 on CUDA, float32 on CPU; pass `torch_dtype=` / `dtype=` to override.
    """
    if load_8bit or load_4bit:
        raise ValueError("8-/4-bit loading needs bitsandbytes on a CUDA GPU; load in 16/32 bit instead")
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    kwargs = dict(kwargs)
    overwrite_config = _caller_conventions(kwargs)
    use_flash_attn = use_flash_attn or bool(kwargs.pop("use_flash_attention_2", False))
    dtype = _as_dtype(kwargs.pop("torch_dtype", kwargs.pop("dtype", None)), device)
    load_kwargs = dict(kwargs, dtype=dtype)
    if device == "cuda" and device_map:
        load_kwargs["device_map"] = device_map
    if use_flash_attn:
        load_kwargs["attn_implementation"] = _flash_or_sdpa()

    if not _is_llava(model_path, model_name):
        base = model_base or model_path
        tokenizer = AutoTokenizer.from_pretrained(base, use_fast=False)
        model = AutoModelForCausalLM.from_pretrained(model_path, **load_kwargs)
        return tokenizer, model.to(device) if device != "cuda" else model, None, _context_len(model)

    if model_base is None and os.path.isfile(os.path.join(model_path, "adapter_config.json")):
        raise ValueError(
            f"{model_path} is a LoRA checkpoint (it has adapter_config.json) and no model_base was given: pass "
            "--model-base (the LLM it was trained from), or merge it first with scripts/merge_lora_weights.py."
        )
    if _is_lora(model_path, model_name) and model_base is not None:
        from peft import PeftModel

        config = _overwritten(LlavaConfig.from_pretrained(model_path), overwrite_config)
        tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=False)
        model = load_pretrained(LlavaLlamaForCausalLM, model_base, expected_missing=BUILT_HERE, config=config,
                                **load_kwargs)
        _load_partial(model, load_non_lora_trainables(model_path), os.path.join(model_path, "non_lora_trainables.bin"))
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    elif model_base is not None:  # projector-only (pretraining output) on top of the base LLM
        config = _overwritten(AutoConfig.from_pretrained(model_path), overwrite_config)
        tokenizer = AutoTokenizer.from_pretrained(model_base, use_fast=False)
        model = load_pretrained(LlavaLlamaForCausalLM, model_base, expected_missing=BUILT_HERE, config=config,
                                **load_kwargs)
        weights = load_projector_weights(os.path.join(model_path, "mm_projector.bin"))
        _load_partial(model, {k: v.to(model.dtype) for k, v in weights.items()}, os.path.join(model_path, "mm_projector.bin"))
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
        if overwrite_config:
            load_kwargs["config"] = _overwritten(LlavaConfig.from_pretrained(model_path), overwrite_config)
        model = LlavaLlamaForCausalLM.from_pretrained(model_path, **load_kwargs)

    dtype = model.dtype  # resolves dtype="auto"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model(device_map=device_map if device == "cuda" else None)
    vision_tower.to(device=device, dtype=dtype)
    if device != "cuda" or "device_map" not in load_kwargs:
        model.to(device)
    model.eval()
    return tokenizer, model, vision_tower.image_processor, _context_len(model)


def _caller_conventions(kwargs: dict) -> dict:
    """Accept the keywords other LLaVA loaders' callers pass (lmms-eval's `llava` wrapper, LLaVA-NeXT scripts).

    Removes them from `kwargs` in place: `multimodal` (every model here is multimodal) is dropped;
    `overwrite_config` (a dict of config fields) is returned to be applied to the loaded config. Anything else
    stays for `from_pretrained` (e.g. `attn_implementation`).
    """
    multimodal = kwargs.pop("multimodal", True)
    if multimodal is False:
        raise ValueError("load_pretrained_model(multimodal=False): this builder loads LLaVA (multimodal) models only")
    if kwargs.get("customized_config") is not None:
        raise ValueError("load_pretrained_model(customized_config=...) is not supported; pass overwrite_config={field: value}")
    kwargs.pop("customized_config", None)
    overwrite = kwargs.pop("overwrite_config", None) or {}
    if not isinstance(overwrite, dict):
        raise ValueError(f"overwrite_config must be a dict of config fields, got {type(overwrite).__name__}")
    return overwrite


def _flash_or_sdpa() -> str:
    """FlashAttention-2 when installed, else PyTorch SDPA with a warning (callers such as older lmms-eval ask for
    FlashAttention-2 by default; failing on machines without it would stop evaluation for no accuracy reason)."""
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        return "flash_attention_2"
    import warnings

    warnings.warn("FlashAttention-2 requested but not installed: using PyTorch SDPA attention")
    return "sdpa"


def _overwritten(config, fields: dict):
    """`config` with the given fields set (LLaVA-NeXT's `overwrite_config` convention)."""
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def _as_dtype(value, device: str):
    """`torch_dtype` / `dtype` as given (a torch.dtype, a name like "bfloat16", or "auto"); None gives the default,
    float16 on CUDA and float32 on CPU."""
    if value is None:
        return torch.float16 if device == "cuda" else torch.float32
    if isinstance(value, torch.dtype) or value == "auto":
        return value
    resolved = getattr(torch, str(value).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"torch_dtype={value!r} is not a torch dtype name (float16, bfloat16, float32 or auto)")
    return resolved


# Config field listing name fragments of weights a method built on LLaVA added for training (and opt-in evaluation
# modes) that plain LLaVA inference does not use; the method records it in the config it saves. Loading skips them.
TRAINING_ONLY_FIELD = "training_only_modules"


def training_only_keys(config) -> tuple:
    """The training-only name fragments a model config (object, dict, or a checkpoint directory) declares."""
    if isinstance(config, str):
        path = os.path.join(config, "config.json")
        if not os.path.isfile(path):
            return ()
        import json

        with open(path) as f:
            config = json.load(f)
    value = config.get(TRAINING_ONLY_FIELD) if isinstance(config, dict) else getattr(config, TRAINING_ONLY_FIELD, None)
    return tuple(value or ())


def _load_partial(model, weights: dict, source: str) -> None:
    """Load a subset of the weights; every other key in the file must exist in the model (nothing silently dropped)."""
    model_keys = set(model.state_dict())
    extra = training_only_keys(model.config)
    skipped = [k for k in weights if k not in model_keys and any(t in k for t in extra)]
    if skipped:
        print(f"{source}: not loading training-only weights {skipped} (plain LLaVA inference does not use them)")
    _, unexpected = model.load_state_dict({k: v for k, v in weights.items() if k not in skipped}, strict=False)
    if unexpected:
        raise ValueError(f"{source}: keys not in the model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")


def read_training_only_weights(model_path: str) -> tuple[dict, Optional[str]]:
    """The training-only weights (those its config's `training_only_modules` names) a checkpoint holds.

    `load_pretrained_model` skips them because plain inference does not use them; an opt-in evaluation mode reads
    them here. Looked up, first hit wins, in: `<name>.bin` files (written beside the adapter / projector),
    `non_lora_trainables.bin` (LoRA runs), and the model's own safetensors (full or merged checkpoints; only the
    matching tensors are read). Returns ({key without peft prefix: tensor}, the file they came from), or
    ({}, None) when none is stored.
    """
    keys = training_only_keys(model_path)
    if not keys:
        return {}, None
    candidates = [os.path.join(model_path, f"{key}.bin") for key in keys]
    candidates.append(os.path.join(model_path, "non_lora_trainables.bin"))
    for path in candidates:
        if os.path.isfile(path):
            found = _training_only(load_projector_weights(path), keys)
            if found:
                return found, path
    for path in _safetensors_files(model_path):
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            found = _training_only({k: None for k in f.keys()}, keys)
            if found:
                return {k: f.get_tensor(k) for k in found}, path
    return {}, None


def _training_only(weights: dict, keys: tuple) -> dict:
    """The entries of `weights` named by `keys`, keyed like the bare LLaVA model (`model.<name>...`)."""
    picked = {}
    for key, value in weights.items():
        if not any(t in key for t in keys):
            continue
        name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        picked[name] = value
    return picked


def _safetensors_files(model_path: str) -> list:
    """The safetensors weight files of a saved model directory (single file or sharded index)."""
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index):
        import json

        with open(index) as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        return [os.path.join(model_path, s) for s in shards]
    single = os.path.join(model_path, "model.safetensors")
    return [single] if os.path.isfile(single) else []


def _context_len(model) -> int:
    return getattr(model.config, "max_sequence_length", 2048)
