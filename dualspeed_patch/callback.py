"""Trainer plumbing: advance the mode schedule with the trainer's steps, and report DualSpeed's loss terms."""
from typing import Dict

from transformers import TrainerCallback

from .layer_skip import clear_zero3_grad_buffer
from .metrics import DualSpeedMetrics
from .modes import ModeSchedule


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
