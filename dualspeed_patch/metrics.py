"""DualSpeed's loss terms, accumulated between two logging steps (`dualspeed/*` in the training logs)."""
from typing import Dict

import torch


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
