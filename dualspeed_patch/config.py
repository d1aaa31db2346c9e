"""DualSpeed hyper-parameters: the command-line dataclass, its round trip through a model config,
and the rule that turns a pruning ratio into a number of kept visual tokens."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Optional

import torch

CONFIG_PREFIX = "dualspeed_"

# Ratios are read as the decimal they print as (0.9 -> 9/10); the denominator cap keeps the integer
# arithmetic of `kept_tokens_tensor` far from int64 overflow.
_MAX_RATIO_DENOMINATOR = 1_000_000


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
        from .fitprune import is_fitprune
        from .layer_skip import check_ratio, check_schedule
        from .pruners.compressors import available_compressors, has_vtp_method
        from .pruners.registry import available_pruners

        if is_fitprune(self.vtp_method):  # prunes inside the LLM: not a registered pre-LLM method
            if not self.fitprune_recipe:
                raise ValueError("DualSpeedArguments.vtp_method='fitprune' needs fitprune_recipe=<recipe.json>")
            if float(self.layer_skip_ratio) > 0.0:
                raise ValueError("DualSpeedArguments.vtp_method='fitprune' cannot be combined with layer_skip_ratio > 0")
        elif not isinstance(self.vtp_method, str) or not has_vtp_method(self.vtp_method):
            raise ValueError(
                f"DualSpeedArguments.vtp_method={self.vtp_method!r} is not a registered pruner or compressor; "
                f"known: {', '.join(available_pruners())}, fitprune; compressors: {', '.join(available_compressors())}"
            )
        try:
            check_ratio(self.layer_skip_ratio)
            check_schedule(self.layer_skip_schedule)
        except ValueError as err:
            raise ValueError(f"DualSpeedArguments.{err}") from None

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


def _kept_fraction(pruning_ratio: float) -> tuple[int, int]:
    """(numerator, denominator) of 1 - pruning_ratio, exact for ratios written as short decimals."""
    p = float(pruning_ratio)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
    keep = 1 - Fraction(repr(p)).limit_denominator(_MAX_RATIO_DENOMINATOR)
    return keep.numerator, keep.denominator


def kept_tokens(n: int, pruning_ratio: float) -> int:
    """Number of visual tokens kept out of `n` at `pruning_ratio`: K = max(1, floor((1 - p) * n + 1/2)),
    i.e. (1 - p) * n rounded half up, never below one token (nor above `n`; 0 when n == 0).

    The product is evaluated exactly on the decimal value of p (0.9 is 9/10), so float error cannot move
    a result across a rounding boundary: (1 - 0.9) * 576 = 57.6 -> 58 and (1 - 0.9) * 15 = 1.5 -> 2.
    Note the paper's code truncates instead (int(57.6) = 57); this project rounds.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n (number of visual tokens) must be an integer >= 0, got {n!r}")
    num, den = _kept_fraction(pruning_ratio)
    k = (2 * num * int(n) + den) // (2 * den)
    return min(int(n), max(1, k))


def kept_tokens_tensor(n: torch.Tensor, pruning_ratio: float) -> torch.Tensor:
    """`kept_tokens` applied elementwise to a LongTensor of per-image token counts (same rule, exact
    integer arithmetic, same device), for batches of images with different numbers of visual tokens."""
    if n.dtype.is_floating_point or n.dtype == torch.bool:
        raise TypeError(f"n must be an integer tensor of token counts, got dtype {n.dtype}")
    n = n.long()
    if bool((n < 0).any()):
        raise ValueError("n (numbers of visual tokens) must be >= 0")
    num, den = _kept_fraction(pruning_ratio)
    k = torch.div(2 * num * n + den, 2 * den, rounding_mode="floor")
    return torch.minimum(k.clamp(min=1), n)
