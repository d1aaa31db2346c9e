"""Reading trainable weights (ZeRO-3 safe) and writing LLaVA's checkpoint files.

Files, with the same names and key layout as upstream LLaVA:
- pretraining: ``mm_projector.bin`` (keys ``model.mm_projector.*``, plus ``model.embed_tokens.weight`` when
  ``mm_use_im_start_end``) and ``config.json``;
- LoRA fine-tuning: the peft adapter files, ``non_lora_trainables.bin`` (every trainable non-LoRA parameter,
  keys exactly as ``named_parameters()`` of the peft model) and ``config.json``;
- every file registered in ``EXTRA_TRAINABLE_FILES`` next to them (keys without the peft prefix).

``.bin`` files are ``torch.save`` of a plain ``{name: tensor}`` dict so that ``torch.load(weights_only=True)`` reads
them; nothing here ever unpickles arbitrary objects.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from llava.model.loading import transformers_quiet
from llava.utils import load_weights_only

logger = logging.getLogger(__name__)

MM_PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
CONFIG_FILE = "config.json"
PEFT_PREFIX = "base_model.model."
MM_ADAPTER_KEYS: tuple[str, ...] = ("mm_projector", "vision_resampler")
IM_START_END_KEYS: tuple[str, ...] = ("embed_tokens", "embed_in")

# File name -> name fragments of the parameters it holds. Other packages register their own trainable modules
# here (e.g. {"adapter_extra.bin": ["adapter_extra"]}); each registered file is written
# wherever mm_projector.bin or non_lora_trainables.bin is written, and read back when resuming.
EXTRA_TRAINABLE_FILES: dict[str, list[str]] = {}

NamedParams = Iterable[tuple[str, torch.Tensor]]


# ---------------------------------------------------------------- reading parameters (ZeRO-3 safe)

def maybe_zero_3(param: torch.Tensor, ignore_status: bool = False, name: str | None = None) -> torch.Tensor:
    """Return a detached CPU clone of ``param``, gathering it first when DeepSpeed ZeRO-3 has partitioned it.

    Under ZeRO-3 this is a collective call: every rank must call it for the same parameters in the same order.
    """
    if hasattr(param, "ds_id"):
        from deepspeed import zero
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        if param.ds_status == ZeroParamStatus.NOT_AVAILABLE and not ignore_status:
            logger.warning("%s: parameter is partitioned (ds_status NOT_AVAILABLE); gathering it", name or "param")
        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def _gather(selected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: maybe_zero_3(v, ignore_status=True, name=k) for k, v in selected.items()}


def get_peft_state_maybe_zero_3(named_params: NamedParams, bias: str) -> dict[str, torch.Tensor]:
    """LoRA weights (plus biases as chosen by ``--lora_bias`` none | all | lora_only), gathered on CPU.

    ``lora_only`` keeps the bias of exactly those modules that carry a LoRA adapter.
    Under ZeRO-3 this is collective: call it on every rank.
    """
    named = dict(named_params)
    lora = {k: v for k, v in named.items() if "lora_" in k}
    if bias == "none":
        chosen = lora
    elif bias == "all":
        chosen = {k: v for k, v in named.items() if "lora_" in k or "bias" in k}
    elif bias == "lora_only":
        # the bias of a LoRA-wrapped module: "<module>.bias" (older peft) or "<module>.base_layer.bias"
        module_prefixes = {k.split("lora_")[0] for k in lora}
        lora_bias_names = {p + "bias" for p in module_prefixes} | {p + "base_layer.bias" for p in module_prefixes}
        chosen = {**lora, **{k: v for k, v in named.items() if k in lora_bias_names}}
    else:
        raise ValueError(f"--lora_bias must be one of none, all, lora_only; got {bias!r}")
    return _gather(chosen)


def get_peft_state_non_lora_maybe_zero_3(
    named_params: NamedParams, require_grad_only: bool = True
) -> dict[str, torch.Tensor]:
    """Every non-LoRA parameter (only trainable ones by default), gathered on CPU, keyed as in named_parameters()."""
    chosen = {k: v for k, v in named_params if "lora_" not in k and (v.requires_grad or not require_grad_only)}
    return _gather(chosen)


def get_mm_adapter_state_maybe_zero_3(
    named_params: NamedParams, keys_to_match: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Parameters whose name contains any of ``keys_to_match``, gathered on CPU (trainable or not)."""
    keys = tuple(keys_to_match)
    chosen = {k: v for k, v in named_params if any(key in k for key in keys)}
    return _gather(chosen)


def strip_peft_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``base_model.model.X`` keys to ``X`` so adapter files look the same with or without LoRA."""
    return {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}


# ---------------------------------------------------------------- helpers

def _unwrap(trainer_or_model: Any) -> nn.Module:
    if isinstance(trainer_or_model, nn.Module):
        return trainer_or_model
    model = getattr(trainer_or_model, "model", None)
    if model is None:
        raise TypeError(f"expected a model or a Trainer with .model, got {type(trainer_or_model).__name__}")
    return model


def is_main_process(args: Any = None) -> bool:
    """True on the rank that writes files: ``args.should_save`` when given, else global rank 0."""
    if args is not None and hasattr(args, "should_save"):
        return bool(args.should_save)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def uses_im_start_end(args: Any, model: nn.Module | None = None) -> bool:
    """Whether <im_start>/<im_end> embeddings are trained (upstream: ``training_args.use_im_start_end``)."""
    for name in ("use_im_start_end", "mm_use_im_start_end"):
        value = getattr(args, name, None)
        if value is not None:
            return bool(value)
    config = getattr(model, "config", None)
    return bool(getattr(config, "mm_use_im_start_end", False))


def is_adapter_pretraining(args: Any, model: nn.Module | None = None) -> bool:
    """Whether this run trains only the projector (``--tune_mm_mlp_adapter``), so saves write mm_projector.bin.

    Read from ``args.tune_mm_mlp_adapter`` (train() copies it there, as upstream does), else from the model config.
    """
    value = getattr(args, "tune_mm_mlp_adapter", None)
    if value is not None:
        return bool(value)
    config = getattr(model, "config", None)
    return bool(getattr(config, "tune_mm_mlp_adapter", False))


def mm_adapter_keys(args: Any, model: nn.Module | None = None) -> list[str]:
    """Name fragments of what pretraining saves in mm_projector.bin."""
    keys = list(MM_ADAPTER_KEYS)
    if uses_im_start_end(args, model):
        keys.extend(IM_START_END_KEYS)
    return keys


def _save_config(model: nn.Module, output_dir: Path) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no config with save_pretrained(); cannot write {CONFIG_FILE}")
    config.save_pretrained(str(output_dir))


def gather_extra_files(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """State of every file in EXTRA_TRAINABLE_FILES that matches at least one parameter (collective under ZeRO-3)."""
    found = {}
    for filename, keys in EXTRA_TRAINABLE_FILES.items():
        state = strip_peft_prefix(get_mm_adapter_state_maybe_zero_3(model.named_parameters(), keys))
        if state:
            found[filename] = state
    return found


def _write_files(output_dir: Path, files: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for filename, state in files.items():
        torch.save(dict(state), output_dir / filename)


# ---------------------------------------------------------------- writers (call on every rank)

def save_mm_adapter(trainer_or_model: Any, output_dir: str | os.PathLike, args: Any) -> None:
    """Pretraining output: mm_projector.bin (+ registered extra files) and config.json, written by rank 0 only.

    Must be called on every rank (ZeRO-3 gathers are collective).
    """
    model = _unwrap(trainer_or_model)
    out = Path(output_dir)
    keys = mm_adapter_keys(args, model)
    projector = strip_peft_prefix(get_mm_adapter_state_maybe_zero_3(model.named_parameters(), keys))
    if not projector:
        raise ValueError(
            f"{type(model).__name__} has no parameter matching {MM_ADAPTER_KEYS}; nothing to write to {out / MM_PROJECTOR_FILE}"
        )
    files = {MM_PROJECTOR_FILE: projector, **gather_extra_files(model)}
    if is_main_process(args):
        _write_files(out, files)
        _save_config(model, out)


def save_non_lora_files(model: nn.Module, output_dir: str | os.PathLike, args: Any) -> None:
    """non_lora_trainables.bin + registered extra files + config.json (rank 0 writes; call on every rank)."""
    out = Path(output_dir)
    files = {NON_LORA_FILE: get_peft_state_non_lora_maybe_zero_3(model.named_parameters()), **gather_extra_files(model)}
    if is_main_process(args):
        _write_files(out, files)
        _save_config(model, out)


def save_lora_checkpoint(model: nn.Module, output_dir: str | os.PathLike, args: Any) -> None:
    """Final LoRA output: adapter files (peft save_pretrained) + non_lora_trainables.bin + extras + config.json.

    Must be called on every rank (ZeRO-3 gathers are collective).
    """
    adapter_state = get_peft_state_maybe_zero_3(model.named_parameters(), getattr(args, "lora_bias", "none"))
    save_non_lora_files(model, output_dir, args)
    if is_main_process(args):
        with transformers_quiet():  # peft re-reads the base config as a LLaVA config: a notice about its type
            model.save_pretrained(str(output_dir), state_dict=adapter_state)


def safe_save_model_for_hf_trainer(trainer: Any, output_dir: str | os.PathLike) -> None:
    """End-of-run save of a full (non-LoRA) run: projector files in pretraining, else the whole model.

    Must be called on every rank.
    """
    output_dir = str(output_dir)
    if is_adapter_pretraining(trainer.args, trainer.model):
        save_mm_adapter(trainer, output_dir, trainer.args)
        return
    if getattr(trainer, "is_deepspeed_enabled", False):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        trainer.save_model(output_dir)
        return
    state_dict = trainer.model.state_dict()
    if trainer.args.should_save:
        trainer._save(output_dir, state_dict={k: v.cpu() for k, v in state_dict.items()})


# ---------------------------------------------------------------- readers

def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` file safely: safetensors for .safetensors, else torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = load_weights_only(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def _resolve_name(key: str, params: Mapping[str, torch.Tensor]) -> str | None:
    for candidate in (key, PEFT_PREFIX + key, key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else None):
        if candidate is not None and candidate in params:
            return candidate
    return None


@torch.no_grad()
def load_trainables(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> list[str]:
    """Copy ``state`` into the matching parameters of ``model`` (with or without the peft prefix).

    Every key must name a parameter of the same shape; returns the parameter names that were written.
    Not for ZeRO-3 partitioned models (DeepSpeed restores its own checkpoints).
    """
    params = dict(model.named_parameters())
    loaded = []
    for key, value in state.items():
        name = _resolve_name(key, params)
        if name is None:
            raise KeyError(f"{source}: key {key!r} matches no parameter of {type(model).__name__}")
        param = params[name]
        if param.shape != value.shape:
            raise ValueError(f"{source}: {key!r} has shape {tuple(value.shape)}, model expects {tuple(param.shape)}")
        param.copy_(value.to(device=param.device, dtype=param.dtype))
        loaded.append(name)
    return loaded


def load_trainable_files(model: nn.Module, checkpoint_dir: str | os.PathLike, filenames: Iterable[str]) -> list[str]:
    """Load each of ``filenames`` that exists in ``checkpoint_dir`` into ``model``; returns the files read."""
    read = []
    for filename in filenames:
        path = Path(checkpoint_dir) / filename
        if path.is_file():
            load_trainables(model, load_state_file(path), source=str(path))
            read.append(filename)
    return read
