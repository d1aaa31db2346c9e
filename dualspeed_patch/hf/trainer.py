"""DualSpeed with Hugging Face's Trainer (or TRL's SFTTrainer, a Trainer subclass) on Hugging Face's Llava models.

One call on the built trainer, `setup(trainer, ds_args)`, or the `DualSpeedTrainer` subclass that makes it in its
constructor. Either way, before the optimizer exists: the model gets its host adapter and DualSpeed's forward
(`forward.install`), DualSpeed is attached through the same `train.prepare` the LLaVA entries use (settings in the
model's config, mode isolator, schedule, metrics, layer-skip check), and a callback advances the schedule, logs
the `dualspeed/*` loss terms and writes `mode_isolator.safetensors` (with the settings in its metadata) into every
`checkpoint-*` and `output_dir`, beside the adapter or model. The saved model itself holds no isolator, so plain
`from_pretrained` inference is unaffected; `load_dualspeed` gives a loaded model its isolator back.
"""
from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace
from typing import Optional

import torch
from transformers import Trainer

from ..config import DualSpeedArguments
from ..isolator import ISOLATOR_KEY, attach_isolator, get_isolator, read_isolator_file
from ..state import DualSpeed, attach, state_of
from ..train import prepare
from ..upstream import UpstreamDualSpeedCallback
from .forward import install

ISOLATOR_FILE = "mode_isolator.safetensors"
SETTINGS_KEY = "dualspeed"  # safetensors metadata entry holding DualSpeedArguments as JSON


class HFDualSpeedCallback(UpstreamDualSpeedCallback):
    """Schedule, `dualspeed/*` logs and isolator files for a Hugging Face trainer (collective saving, as upstream's)."""

    def __init__(self, state: DualSpeed, clear_zero3_grads: bool = False):
        super().__init__(state.schedule, state.metrics, state.isolator, clear_zero3_grads=clear_zero3_grads)
        self.settings = state.args

    def write_isolator(self, weight: torch.Tensor, directory: str) -> None:
        save_isolator(weight, self.settings, directory)


def save_isolator(weight: torch.Tensor, settings: DualSpeedArguments, directory: str) -> str:
    """Write `directory/mode_isolator.safetensors`: {"model.mode_isolator.weight": [l, hidden]} and the settings."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ISOLATOR_FILE)
    save_file({ISOLATOR_KEY: weight.detach().cpu().contiguous().clone()}, path,
              metadata={SETTINGS_KEY: json.dumps(dataclasses.asdict(settings))})
    return path


def setup(trainer: Trainer, ds_args: DualSpeedArguments, *, mode_isolator_path: Optional[str] = None,
          pretraining: bool = False) -> Optional[HFDualSpeedCallback]:
    """Attach DualSpeed to `trainer.model` (a Hugging Face Llava / LlavaNext model, peft-wrapped or not) and add its
    callback first in the trainer's list. Returns the callback, or None when `ds_args.dualspeed` is off.

    Call it on the built trainer, after any freezing and `get_peft_model`, before `trainer.train()`.
    `mode_isolator_path` (or `ds_args.mode_isolator_path`): a trained isolator to start from; `pretraining`: the
    projector-only stage, fast mode only unless `--slow_mode_in_pretraining`."""
    if getattr(trainer, "optimizer", None) is not None:
        raise RuntimeError("the trainer already has an optimizer, which would not include the mode isolator: "
                           "set DualSpeed up before trainer.train() and before creating an optimizer")
    install(trainer.model)
    if mode_isolator_path is not None:
        ds_args = dataclasses.replace(ds_args, mode_isolator_path=mode_isolator_path)
    model_args = SimpleNamespace(pretrain_mm_mlp_adapter=None, tune_mm_mlp_adapter=pretraining)
    state, clear = prepare(trainer.model, model_args, trainer.args, ds_args)
    if not ds_args.dualspeed:
        return None
    callback = HFDualSpeedCallback(state, clear_zero3_grads=clear)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


class DualSpeedTrainer(Trainer):
    """`transformers.Trainer` with DualSpeed set up by its constructor: `DualSpeedTrainer(model=..., args=...,
    dualspeed_args=DualSpeedArguments(dualspeed=True, ...), ...)`. Saved models leave the isolator out (it is
    written beside them as `mode_isolator.safetensors`)."""

    def __init__(self, *args, dualspeed_args: DualSpeedArguments, mode_isolator_path: Optional[str] = None,
                 pretraining: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.dualspeed_callback = setup(self, dualspeed_args, mode_isolator_path=mode_isolator_path,
                                        pretraining=pretraining)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        if state_dict is None and not hasattr(self.model, "peft_config"):
            state_dict = self.model.state_dict()
        if state_dict is not None:
            state_dict = {k: v for k, v in state_dict.items() if not k.endswith("mode_isolator.weight")}
        return super()._save(output_dir, state_dict=state_dict)


def load_dualspeed(model, directory: str, *, trainable: bool = False) -> DualSpeed:
    """Give a Hugging Face Llava model loaded with `from_pretrained` (plus its adapter) the mode isolator and the
    settings saved in `directory/mode_isolator.safetensors`; for fast-mode inference or further DualSpeed training.
    Returns its DualSpeed state (no schedule: training setup is `setup` / `DualSpeedTrainer`)."""
    from safetensors import safe_open

    path = os.path.join(directory, ISOLATOR_FILE) if os.path.isdir(directory) else directory
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (DualSpeed training writes {ISOLATOR_FILE} beside the model)")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    host = install(model)
    settings = DualSpeedArguments(**{**json.loads(metadata.get(SETTINGS_KEY, "{}")), "dualspeed": False})
    state = attach(model, settings, announce=False)
    weights = read_isolator_file(path)
    isolator = get_isolator(host)
    if isolator is None:
        isolator = attach_isolator(host, int(weights.shape[0]), announce=False)
    elif tuple(isolator.weight.shape) != tuple(weights.shape):
        raise ValueError(f"{path}: mode isolator of shape {tuple(weights.shape)}, the model has "
                         f"{tuple(isolator.weight.shape)}")
    with torch.no_grad():
        isolator.weight.copy_(weights.to(isolator.weight.dtype))
    isolator.requires_grad_(trainable)
    state.isolator = isolator
    return state_of(model)
