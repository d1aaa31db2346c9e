"""Trainer plumbing: advance the mode schedule with the trainer's steps, and report DualSpeed's loss terms."""
from typing import Dict

import torch
from transformers import TrainerCallback

from .layer_skip import clear_zero3_grad_buffer
from .modes import ModeSchedule


class DualSpeedMetrics:
    """Running sums of the loss terms since the last log, plus the share of slow micro-steps so far.

    Values stay tensors until `pop()` (called at logging time), so recording adds no host synchronisation.
    """

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.counts: Dict[str, int] = {}
        self.fast_steps = 0
        self.slow_steps = 0

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts.get(name, 0) + 1

    def record_fast(self, ce: torch.Tensor) -> None:
        self.fast_steps += 1
        self._add("fast_ce", ce)

    def record_layer_skip(self, skipped: int) -> None:
        """Count the decoder layers a fast step skipped (logged as `dualspeed/skipped_layers`, mean per fast step)."""
        self._add("skipped_layers", torch.tensor(float(skipped)))

    def record_slow(self, metrics: Dict[str, torch.Tensor]) -> None:
        self.slow_steps += 1
        for name, value in metrics.items():
            self._add(name, value)

    def pop(self) -> Dict[str, float]:
        """Means since the last call (prefixed `dualspeed/`), and the running slow-step share."""
        out = {f"dualspeed/{k}": float(v) / self.counts[k] for k, v in self.sums.items()}
        total = self.fast_steps + self.slow_steps
        if total:
            out["dualspeed/slow_share"] = self.slow_steps / total
        self.sums, self.counts = {}, {}
        return out


class DualSpeedCallback(TrainerCallback):
    """Keeps the schedule at (global step, micro-step) of the trainer; exposes metrics for `log`.

    With `clear_zero3_grads` (layer skipping or slow mode on), each optimizer step starts from a zeroed DeepSpeed
    ZeRO-3 gradient buffer, so parameters that get no gradient in a step (skipped layers; the isolator in an
    all-slow step) get a zero gradient instead of a stale one
    (`layer_skip.clear_zero3_grad_buffer`)."""

    def __init__(self, schedule: ModeSchedule, metrics: DualSpeedMetrics, clear_zero3_grads: bool = False):
        self.schedule, self.metrics = schedule, metrics
        self.clear_zero3_grads = clear_zero3_grads

    def on_step_begin(self, args, state, control, **kwargs):
        self.schedule.at(state.global_step, 0)
        if self.clear_zero3_grads:
            clear_zero3_grad_buffer(kwargs.get("optimizer"))

    def on_substep_end(self, args, state, control, **kwargs):
        self.schedule.micro_step += 1

    def pop_metrics(self) -> Dict[str, float]:
        return self.metrics.pop()
