"""DualSpeed hyper-parameters: the command-line dataclass and its round trip through a model config.

(The rule that turns a pruning ratio into a number of kept visual tokens is `dualspeed_patch.k_rule`.)"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .k_rule import kept_tokens, kept_tokens_tensor  # noqa: F401  (the public home of the K rule's users)
from .layer_skip import check_ratio, check_schedule
from .methods import check_method

CONFIG_PREFIX = "dualspeed_"


@dataclass
class DualSpeedArguments:
    """Flags of the DualSpeed method, parsed by HfArgumentParser next to LLaVA's own argument
    dataclasses (no field name clashes with transformers.TrainingArguments)."""

    dualspeed: bool = field(
        default=False, metadata={"help": "Enable DualSpeed fast/slow training (pruned visual tokens + self-distillation)."}
    )
    pruning_ratio: float = field(
        default=0.9, metadata={"help": "Fraction of each image's visual tokens dropped in fast mode, in [0, 1)."}
    )
    slow_mode_ratio: float = field(
        default=0.1, metadata={"help": "Probability that a micro-step runs in slow mode (full tokens + distillation), in [0, 1]."}
    )
    vtp_method: str = field(
        default="divprune", metadata={"help": "Visual-token-pruning plug-in, a name from the pruner registry (e.g. divprune)."}
    )
    mode_isolator_len: int = field(
        default=4, metadata={"help": "Number of learnable mode-isolator vectors prefixed to the kept tokens of each image (0 disables)."}
    )
    distill_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the slow-mode self-distillation KL (> 0)."}
    )
    distill_alpha: float = field(
        default=1.0, metadata={"help": "Weight of the self-distillation KL added to the slow-mode cross-entropy (>= 0)."}
    )
    mode_isolator_path: Optional[str] = field(
        default=None, metadata={"help": "File holding a trained mode isolator (e.g. from pretraining); fresh init when absent."}
    )
    slow_mode_in_pretraining: bool = field(
        default=False, metadata={"help": "Also alternate fast/slow in projector pretraining (the paper uses fast mode only there)."}
    )
    layer_skip_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of the LLM's decoder layers skipped in each fast-mode step, in [0, 1) "
                                       "(round half up; first and last layer never skipped; 0 = off)."}
    )
    layer_skip_schedule: str = field(
        default="random", metadata={"help": "Which layers a fast step skips: random (fresh subset per micro-step) or "
                                            "uniform (the same evenly spread subset every step)."}
    )
    fitprune_recipe: Optional[str] = field(
        default=None, metadata={"help": "Recipe JSON for --vtp_method fitprune (layer-wise pruning inside the LLM; fit "
                                        "one with python -m dualspeed_patch.fitprune_recipe)."}
    )

    clip_text_tower: Optional[str] = field(
        default=None, metadata={"help": "A full CLIP checkpoint (text tower + projections) for instruction-aware pruners "
                                        "(cdpruner); default: the vision tower's own checkpoint (LLaVA names it, "
                                        "Hugging Face Llava does not)."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject out-of-range values with a message naming the field, so a bad flag fails at parse time
        rather than deep inside training."""
        if not 0.0 <= float(self.pruning_ratio) < 1.0:
            raise ValueError(f"DualSpeedArguments.pruning_ratio must be in [0, 1), got {self.pruning_ratio!r}")
        if not 0.0 <= float(self.slow_mode_ratio) <= 1.0:
            raise ValueError(f"DualSpeedArguments.slow_mode_ratio must be in [0, 1], got {self.slow_mode_ratio!r}")
        if isinstance(self.mode_isolator_len, bool) or int(self.mode_isolator_len) != self.mode_isolator_len \
                or self.mode_isolator_len < 0:
            raise ValueError(f"DualSpeedArguments.mode_isolator_len must be an integer >= 0, got {self.mode_isolator_len!r}")
        if not float(self.distill_temperature) > 0.0:
            raise ValueError(f"DualSpeedArguments.distill_temperature must be > 0, got {self.distill_temperature!r}")
        if not float(self.distill_alpha) >= 0.0:
            raise ValueError(f"DualSpeedArguments.distill_alpha must be >= 0, got {self.distill_alpha!r}")
        check_method(self)
        try:
            check_ratio(self.layer_skip_ratio)
            check_schedule(self.layer_skip_schedule)
        except ValueError as err:
            raise ValueError(f"DualSpeedArguments.{err}") from None

    def check_paths(self) -> None:
        """The files the flags name exist (checked before the model loads; LLaVA's train() calls this)."""
        if not self.dualspeed:
            return
        for flag in ("mode_isolator_path", "fitprune_recipe"):
            path = getattr(self, flag)
            if path and not os.path.isfile(path):
                raise FileNotFoundError(f"--{flag} {path}: no such file")
        if self.clip_text_tower and not os.path.isfile(os.path.join(self.clip_text_tower, "config.json")):
            raise FileNotFoundError(f"--clip_text_tower {self.clip_text_tower}: no CLIP checkpoint (config.json) there")

    def to_config_dict(self) -> dict[str, Any]:
        """Fields as `{"dualspeed_<name>": value}` for storing in the model's config.json, so a checkpoint
        records how it was trained. The switch itself (`dualspeed`) is stored as `"dualspeed"`."""
        return {config_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: Any) -> "DualSpeedArguments":
        """Inverse of `to_config_dict` from a config object or dict; missing (or null) keys fall back to
        the defaults, so a plain LLaVA config yields `dualspeed=False` and default hyper-parameters."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = config_key(f.name)
            value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
            if value is not None:
                values[f.name] = value
        return cls(**values)


def config_key(name: str) -> str:
    """Config key under which DualSpeed field `name` is stored (prefixed unless already prefixed)."""
    return name if name.startswith("dualspeed") else CONFIG_PREFIX + name
