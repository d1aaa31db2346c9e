"""Layer skipping in fast mode: a step-derived subset of the LLM's decoder layers is not run at all.

Idea (the "Layer Dynamic Skipper" of STS, arXiv 2509.18150): in a fast-mode micro-step, skip
`round(ratio * L)` of the L decoder layers in both forward and backward. A skipped layer is never called, so
the hidden states pass it unchanged (the residual stream goes straight to the next kept layer) and none of its
parameters takes part in the step's graph. Slow mode (student and teacher) and inference never skip.

Which layers (`--layer_skip_schedule`):
- "random": a fresh uniformly random subset of the interior layers per micro-step, drawn from a SplitMix64
  hash of (seed, global step, micro-step) in its own domain (independent of the fast/slow draw and the
  pruner seed of the same step), so every rank and a resumed run skip the same layers.
- "uniform": the same evenly spread subset on every step: interior layer 1 + floor((2i + 1) * M / (2n)) for
  i < n, i.e. the centre of each of n equal strides over the M = L - 2 interior layers. Those layers are then
  trained by slow-mode steps only.
The first and the last layer are never skipped: the first turns token embeddings into the residual-stream
representation every later layer expects (and owns the KV-cache's reference length when a cache is used), the
last feeds the final norm and LM head directly; skipping either changes the model's input/output interface
rather than thinning its middle. Hence at most L - 2 layers can be skipped.

Count rule: n = floor(ratio * L + 1/2) (ratio * L rounded half up, evaluated exactly on the decimal value
of the ratio, like `config.kept_tokens`); a ratio whose n exceeds L - 2 is an error, never silently clipped.

Mechanism: `skip_layers(backbone, skipped)` shadows the backbone's registered `layers` ModuleList with an
unregistered list of the kept layers (an entry in the instance `__dict__`, which attribute lookup finds before
`nn.Module.__getattr__` reaches `_modules`). The model's own forward then iterates only the kept layers;
`state_dict`, `named_parameters`, peft's LoRA modules, the optimizer and DeepSpeed's hooks still see the
registered list, untouched. Consequences:
- gradient checkpointing wraps each *kept* layer call as usual (recomputation calls the same layer object);
- DeepSpeed ZeRO-3 gathers parameters in each module's pre-forward hook: a skipped layer is never called, so
  its parameters are never gathered, and since every rank skips the same layers the collectives line up.
  ZeRO-3's prefetch trace is rebuilt whenever the module order changes (it already does for fast/slow steps);
- each decoder layer keeps its own `layer_idx`, so a KV cache (off in training) writes to the right slots;
- a backbone whose forward pairs layer *positions* with per-layer settings (e.g. `config.layer_types[i]` for
  mixed sliding-window attention) would misalign: `skip_layers` refuses such configs.

Optimiser state of skipped parameters (docs/plugins.md, "Layer skipping", has the full account):
- without DeepSpeed, the trainer zeroes gradients with `set_to_none=True`, so a parameter skipped in every
  micro-step of an optimizer step has `.grad is None` and torch's Adam/AdamW leaves it out of that step
  entirely (no moment decay, no weight decay, no step-count increment);
- under DeepSpeed ZeRO the optimizer steps one flat fp32 partition whose gradient is always a tensor. ZeRO-3
  (DeepSpeed 0.19) copies each parameter's reduced gradient into a persistent flat buffer only when the
  parameter had one, and never clears that buffer between steps, so a skipped parameter would be stepped with
  its *stale* gradient of an earlier step (and one first used in a later micro-step would accumulate onto it).
  `clear_zero3_grad_buffer` zeroes the buffer at the start of each optimizer step (the DualSpeed callback
  calls it when layer skipping is on), making skipped parameters' gradients exactly zero: AdamW then still
  decays their moments and applies its momentum term (and weight decay, 0 in the recipes).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from .k_rule import scale_half_up
from .modes import _hash_step, _mix64

SCHEDULES = ("random", "uniform")
_DOMAIN_LAYER_SKIP = 0x736B6970  # "skip"
_SHADOW_KEY = "layers"  # the attribute LLaMA-style backbones iterate


def check_ratio(ratio: float) -> float:
    """`ratio` as a float in [0, 1); a ValueError naming the value otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"layer_skip_ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def check_schedule(schedule: str) -> str:
    """`schedule` normalised to lower case; a ValueError listing the known schedules otherwise."""
    name = schedule.strip().lower() if isinstance(schedule, str) else None
    if name not in SCHEDULES:
        raise ValueError(f"layer_skip_schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    return name


def num_skipped_layers(num_layers: int, ratio: float) -> int:
    """Number of decoder layers a fast step skips: floor(ratio * L + 1/2), exact on the ratio's decimal value.

    Raises when that exceeds L - 2 (first and last layer are never skipped), naming both numbers, so a too large
    ratio fails at setup instead of being clipped without notice.
    """
    if isinstance(num_layers, bool) or int(num_layers) != num_layers or num_layers < 1:
        raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
    n = scale_half_up(int(num_layers), check_ratio(ratio))
    limit = max(int(num_layers) - 2, 0)
    if n > limit:
        raise ValueError(
            f"layer_skip_ratio={ratio!r} skips {n} of {num_layers} decoder layers, but the first and last are never "
            f"skipped (at most {limit}); lower the ratio"
        )
    return int(n)


def _random_interior(seed: int, global_step: int, micro_step: int, num_layers: int, n: int) -> list[int]:
    """n distinct interior layers (1 .. L-2) by a partial Fisher-Yates shuffle driven by the step hash."""
    pool = list(range(1, num_layers - 1))
    state = _hash_step(_DOMAIN_LAYER_SKIP, seed, global_step, micro_step)
    for i in range(n):
        state = _mix64(state ^ i)
        j = i + ((state * (len(pool) - i)) >> 64)  # multiply-shift: uniform in [i, len(pool)) up to 2^-64 bias
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:n]


def _uniform_interior(num_layers: int, n: int) -> list[int]:
    """The centre layer of each of n equal strides over the M = L - 2 interior layers."""
    m = num_layers - 2
    return [1 + (2 * i + 1) * m // (2 * n) for i in range(n)]


def skipped_layers(
    seed: int, global_step: int, micro_step: int, num_layers: int, ratio: float, schedule: str = "random"
) -> tuple[int, ...]:
    """Ascending indices of the decoder layers a fast-mode micro-step skips.

    A pure function of its arguments (Python integers only, no process RNG), hence identical on every rank and
    on resume. `ratio == 0` skips nothing; see the module docstring for the count rule and the schedules.
    """
    name = check_schedule(schedule)
    n = num_skipped_layers(num_layers, ratio)
    if n == 0:
        return ()
    if name == "random":
        chosen = _random_interior(seed, global_step, micro_step, int(num_layers), n)
    else:
        chosen = _uniform_interior(int(num_layers), n)
    return tuple(sorted(chosen))


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's registered decoder layers (`backbone.layers`, as in LLaMA / Mistral / Qwen models)."""
    layers = backbone._modules.get(_SHADOW_KEY)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"layer skipping needs an LLM backbone with a `layers` nn.ModuleList; {type(backbone).__name__} has "
            f"{type(layers).__name__ if layers is not None else 'none'}"
        )
    return layers


def step_skipped_layers(backbone: nn.Module, args: Any, schedule: Any) -> tuple[int, ...]:
    """Layers the current fast micro-step skips, from DualSpeed settings `args` (`layer_skip_ratio`,
    `layer_skip_schedule`) and a `ModeSchedule` (seed, global step, micro-step); () when skipping is off."""
    ratio = float(getattr(args, "layer_skip_ratio", 0.0) or 0.0)
    if ratio == 0.0 or schedule is None:
        return ()
    return skipped_layers(schedule.seed, schedule.global_step, schedule.micro_step, len(decoder_layers(backbone)),
                          ratio, getattr(args, "layer_skip_schedule", "random"))


def _check_uniform_layer_types(backbone: nn.Module) -> None:
    types = getattr(getattr(backbone, "config", None), "layer_types", None)
    if types is not None and len(set(types)) > 1:
        raise ValueError(
            f"layer skipping cannot be used with per-layer attention types {sorted(set(types))}: the backbone's "
            "forward pairs layer positions with config.layer_types, which skipping would shift"
        )


@contextlib.contextmanager
def skip_layers(backbone: nn.Module, skipped: Sequence[int]) -> Iterator[None]:
    """Run the enclosed forward passes of `backbone` without the decoder layers in `skipped` (no-op when empty).

    The registered `layers` ModuleList is shadowed, not replaced (see the module docstring), and restored on
    exit even if the forward raises. Backward may run after exit: autograd and checkpoint recomputation refer
    to the kept layer objects themselves, not to the list.
    """
    if not skipped:
        yield
        return
    layers = decoder_layers(backbone)
    drop = set(int(i) for i in skipped)
    bad = sorted(i for i in drop if not 0 <= i < len(layers))
    if bad:
        raise ValueError(f"skipped layer indices {bad} out of range for {len(layers)} decoder layers")
    if _SHADOW_KEY in backbone.__dict__:
        raise RuntimeError("skip_layers is already active on this backbone (nested skipping is not supported)")
    _check_uniform_layer_types(backbone)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    backbone.__dict__[_SHADOW_KEY] = nn.ModuleList(kept)
    try:
        yield
    finally:
        backbone.__dict__.pop(_SHADOW_KEY, None)


def _zero3_optimizer(optimizer: Any) -> Optional[Any]:
    """The DeepSpeed ZeRO-3 optimizer inside trainer/accelerate wrappers (`.optimizer` chains), if any."""
    seen = 0
    while optimizer is not None and seen < 4:
        if isinstance(getattr(optimizer, "grad_partitions_flat_buffer", None), torch.Tensor):
            return optimizer
        optimizer, seen = getattr(optimizer, "optimizer", None), seen + 1
    return None


def clear_zero3_grad_buffer(optimizer: Any) -> bool:
    """Zero DeepSpeed ZeRO-3's flat gradient-partition buffer at the start of an optimizer step.

    DeepSpeed 0.19's stage-3 optimizer writes a parameter's gradient partition into this buffer (copy on the first
    micro-step, add afterwards) only when the parameter produced a gradient, and does not clear it after the
    step; without this call a layer skipped in a whole optimizer step would be updated with an old gradient.
    Returns whether a buffer was found (False for ZeRO-1/2, plain torch, or CPU-offloaded ZeRO-3 states, whose
    gradient path differs). Call it before the step's first forward (the buffer is on the accelerator: no sync).
    """
    zero3 = _zero3_optimizer(optimizer)
    if zero3 is None or getattr(zero3, "offload_optimizer", False):
        return False
    zero3.grad_partitions_flat_buffer.zero_()
    return True
