"""LLaVA's Trainer: modality-grouped sampling, a separate projector learning rate, and LLaVA's checkpoint files.

Everything else (loop, DeepSpeed, logging, rotation) is transformers.Trainer's own.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import transformers
from torch import nn
from torch.utils.data import Sampler
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from llava.model.loading import transformers_quiet
from llava.train.checkpoint import (
    EXTRA_TRAINABLE_FILES,
    MM_PROJECTOR_FILE,
    NON_LORA_FILE,
    is_adapter_pretraining,
    load_trainable_files,
    save_mm_adapter,
    save_non_lora_files,
)
from llava.train.frozen_checkpoint import accept_frozen_free_checkpoints, has_frozen_parameters
from llava.train.resume import mark_complete

logger = logging.getLogger(__name__)

# Parameters whose name contains one of these get --mm_projector_lr instead of --learning_rate; so do the
# multimodal modules other packages register in EXTRA_TRAINABLE_FILES (`multimodal_lr_keys`).
MULTIMODAL_LR_KEYS: tuple[str, ...] = ("mm_projector",)


def multimodal_lr_keys() -> tuple[str, ...]:
    """Name fragments of the parameters trained at --mm_projector_lr: the projector and every registered extra
    trainable module (modules a method adds beside the projector, saved beside it)."""
    extra = [key for keys in EXTRA_TRAINABLE_FILES.values() for key in keys]
    return tuple(dict.fromkeys((*MULTIMODAL_LR_KEYS, *extra)))

_MODEL_WEIGHT_FILES = (
    WEIGHTS_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_INDEX_NAME,
    ADAPTER_WEIGHTS_NAME, ADAPTER_SAFE_WEIGHTS_NAME,
)


# ---------------------------------------------------------------- length-grouped sampling

def _as_lengths(lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.long).flatten()
    zero = torch.nonzero(lengths == 0).flatten()
    if zero.numel():
        raise ValueError(
            f"sample lengths must be non-zero (positive = multimodal, negative = text-only); "
            f"sample {int(zero[0])} has length 0"
        )
    return lengths


def _grouped_order(sizes: torch.Tensor, pool: torch.Tensor, batch_size: int, world_size: int,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Shuffle ``pool``, cut it into megabatches of batch_size*world_size, sort each by size (longest first),
    and deal it into world_size equal chunks in snake order so every rank's batch gets a similar token count."""
    n = pool.numel()
    if n == 0:
        return pool
    mega = batch_size * world_size
    shuffled = pool[torch.randperm(n, generator=generator)]
    megabatch = torch.arange(n) // mega
    longest_first = torch.argsort(-sizes[shuffled], stable=True)
    shuffled = shuffled[longest_first[torch.argsort(megabatch[longest_first], stable=True)]]
    rank_in_mega = torch.arange(n) - megabatch * mega
    lap, column = rank_in_mega // world_size, rank_in_mega % world_size
    chunk = torch.where(lap % 2 == 0, column, world_size - 1 - column)
    return shuffled[torch.argsort(megabatch * world_size + chunk, stable=True)]


def get_length_grouped_indices(lengths: Sequence[int] | torch.Tensor, batch_size: int, world_size: int,
                               generator: torch.Generator | None = None) -> list[int]:
    """Random order where each megabatch (batch_size*world_size samples) holds samples of similar length."""
    lengths = _as_lengths(lengths)
    return _grouped_order(lengths.abs(), torch.arange(lengths.numel()), batch_size, world_size, generator).tolist()


def modality_length_grouped_megabatches(lengths: Sequence[int] | torch.Tensor, batch_size: int, world_size: int,
                                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Megabatches of sample indices that never mix multimodal (length > 0) and text-only (length < 0) samples.

    Full megabatches of both modalities come first in random order; the (at most two) partial leftovers come
    last, the multimodal one first. A dataset with a single modality is fine.
    """
    lengths = _as_lengths(lengths)
    mega = batch_size * world_size
    sizes = lengths.abs()
    full: list[torch.Tensor] = []
    leftovers: list[torch.Tensor] = []
    for pool in (torch.nonzero(lengths > 0).flatten(), torch.nonzero(lengths < 0).flatten()):
        order = _grouped_order(sizes, pool, batch_size, world_size, generator)
        n_full = order.numel() // mega * mega
        full.extend(order[:n_full].split(mega))
        if n_full < order.numel():
            leftovers.append(order[n_full:])
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    return shuffled + leftovers


def get_modality_length_grouped_indices(lengths: Sequence[int] | torch.Tensor, batch_size: int, world_size: int,
                                        generator: torch.Generator | None = None) -> list[int]:
    """Flattened ``modality_length_grouped_megabatches``: the sampling order of one epoch."""
    megabatches = modality_length_grouped_megabatches(lengths, batch_size, world_size, generator)
    return torch.cat(megabatches).tolist() if megabatches else []


class LengthGroupedSampler(Sampler[int]):
    """Sampler yielding length-grouped (optionally modality-grouped) orders, reproducible from (seed, epoch).

    ``world_size`` is the number of batches per optimizer step across ranks (GPUs x gradient accumulation), so a
    megabatch is one global batch. Pass ``generator`` to drive the randomness yourself instead of (seed, epoch).
    """

    def __init__(self, batch_size: int, world_size: int, lengths: Sequence[int] | torch.Tensor,
                 generator: torch.Generator | None = None, group_by_modality: bool = False, seed: int = 0):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = _as_lengths(lengths)
        self.generator = generator
        self.group_by_modality = group_by_modality
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields (called by the Trainer/accelerate)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.lengths.numel()

    def __iter__(self) -> Iterator[int]:
        generator = self.generator or torch.Generator().manual_seed(self.seed + self.epoch)
        grouping = get_modality_length_grouped_indices if self.group_by_modality else get_length_grouped_indices
        return iter(grouping(self.lengths, self.batch_size, self.world_size, generator=generator))


# ---------------------------------------------------------------- optimizer parameter groups

def build_param_groups(named_params: Iterable[tuple[str, nn.Parameter]], decay_names: Iterable[str],
                       weight_decay: float, multimodal_lr: float | None,
                       multimodal_keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Optimizer groups: (decay, no decay) x (rest, multimodal at ``multimodal_lr``); only trainable params.

    A parameter decays when it is in ``decay_names`` and has >= 2 dims (biases, norms and vectors never decay).
    With ``multimodal_lr`` None everything is "rest". Empty groups are dropped.
    """
    decay_names = set(decay_names)
    multimodal_keys = multimodal_lr_keys() if multimodal_keys is None else multimodal_keys
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(d, m): [] for m in (False, True) for d in (True, False)}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        decays = name in decay_names and param.ndim >= 2
        multimodal = multimodal_lr is not None and any(key in name for key in multimodal_keys)
        buckets[(decays, multimodal)].append(param)
    groups = []
    for (decays, multimodal), params in buckets.items():
        if not params:
            continue
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decays else 0.0}
        if multimodal:
            group["lr"] = multimodal_lr
        groups.append(group)
    return groups


# ---------------------------------------------------------------- the trainer

class LLaVATrainer(transformers.Trainer):
    """transformers.Trainer with LLaVA's sampler, projector learning rate and checkpoint layout.

    - pretraining (``args.tune_mm_mlp_adapter``): every save writes mm_projector.bin (+ EXTRA_TRAINABLE_FILES) and
      config.json instead of the model; checkpoints also keep optimizer/scheduler/rng/trainer state for resuming;
    - LoRA (``args.lora_enable``): every checkpoint also holds non_lora_trainables.bin (+ extras) and config.json,
      and resuming restores them after the adapter.
    """

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Trainer.log plus the metrics of callbacks that offer them (`pop_metrics()`, e.g. a method's loss terms)."""
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "pop_metrics"):
                logs.update(callback.pop_metrics())
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None) -> Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not getattr(self.args, "group_by_modality_length", False) or dataset is None or not has_length(dataset):
            return super()._get_train_sampler(train_dataset)
        lengths = getattr(dataset, "modality_lengths", None)
        if lengths is None:
            raise ValueError(
                f"--group_by_modality_length needs the training dataset ({type(dataset).__name__}) to define "
                f"`modality_lengths` (positive for samples with an image, negative for text-only)"
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=lengths,
            group_by_modality=True,
            seed=seed,
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with `multimodal_lr_keys()` params at --mm_projector_lr when that flag is set."""
        if self.args.mm_projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = build_param_groups(
            opt_model.named_parameters(),
            self.get_decay_parameter_names(opt_model),
            self.args.weight_decay,
            self.args.mm_projector_lr,
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        own_groups = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if own_groups or is_optimizer_factory(optimizer_cls):
            raise ValueError(
                f"--optim {self.args.optim} builds its own parameter groups; it cannot be combined with --mm_projector_lr"
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ---- saving

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """In pretraining save only the projector files (no full-model gather); otherwise Trainer's save."""
        if is_adapter_pretraining(self.args, self.model):
            self._save(output_dir)
            return
        super().save_model(output_dir, _internal_call=_internal_call)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if is_adapter_pretraining(self.args, self.model):
            save_mm_adapter(self.model, output_dir or self.args.output_dir, self.args)
            return
        with transformers_quiet():  # peft re-reads the base config as a LLaVA config: a notice about its type
            super()._save(output_dir, state_dict=state_dict)

    # ---- DeepSpeed checkpoints without frozen weights (projector pretraining: the LLM and tower are not saved)

    def _frozen_free_checkpoints(self) -> bool:
        """Whether DeepSpeed's engine checkpoints leave the frozen weights out (any non-peft model with frozen
        parameters, ZeRO stages 0-2; transformers already does it for peft models)."""
        if not self.is_deepspeed_enabled or hasattr(self.model, "peft_config"):
            return False
        return self.accelerator.state.deepspeed_plugin.zero_stage < 3 and has_frozen_parameters(self.model)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        if wrapped is not None and self._frozen_free_checkpoints():  # the engine exists; resuming comes next
            accept_frozen_free_checkpoints(wrapped.engine, self.model)
        return scheduler

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._frozen_free_checkpoints():
            return super()._save_optimizer_and_scheduler(output_dir)
        engine = self.model_wrapped
        engine.save_checkpoint = functools.partial(type(engine).save_checkpoint, engine, exclude_frozen_parameters=True)
        try:
            super()._save_optimizer_and_scheduler(output_dir)
        finally:
            del engine.save_checkpoint  # the class's method again

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if getattr(self.args, "lora_enable", False) and not is_adapter_pretraining(self.args, self.model):
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            output_dir = os.path.join(self._get_output_dir(trial=trial), folder)
            save_non_lora_files(self.model, output_dir, self.args)
        super()._save_checkpoint(model, trial)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.accelerator.wait_for_everyone()  # every process has written its part (DeepSpeed shards included)
        if self.args.should_save:
            mark_complete(os.path.join(self._get_output_dir(trial=trial), folder))

    # ---- resuming (not used under DeepSpeed: its engine checkpoint restores every trainable weight)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = self.model if model is None else model
        checkpoint = Path(resume_from_checkpoint)
        has_model_weights = any((checkpoint / name).is_file() for name in _MODEL_WEIGHT_FILES)
        if not has_model_weights and (checkpoint / MM_PROJECTOR_FILE).is_file():
            read = load_trainable_files(model, checkpoint, [MM_PROJECTOR_FILE, *EXTRA_TRAINABLE_FILES])
            logger.info("Resumed %s from %s", ", ".join(read), checkpoint)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not self.is_fsdp_enabled and (checkpoint / NON_LORA_FILE).is_file():
            load_trainable_files(model, checkpoint, [NON_LORA_FILE])
            logger.info("Resumed %s from %s", NON_LORA_FILE, checkpoint)
