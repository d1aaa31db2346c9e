"""Fast/slow mode choice per micro-step as a pure function of (seed, global step, micro-step).

Every rank must take the same branch in the same step (ZeRO-3 all-gathers parameters per module call,
so a rank running two forwards while another runs one deadlocks), and a resumed run must replay the
same schedule. Hence no process RNG state: the decision is an integer hash (SplitMix64 finaliser) of
the step coordinates, evaluated with Python integers, so it is identical on every machine and process.
"""
from __future__ import annotations

import operator

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Domain tags keep the mode draw and the pruner seed of one step statistically independent.
_DOMAIN_MODE = 0x6D6F6465  # "mode"
_DOMAIN_PRUNER_SEED = 0x73656564  # "seed"


def _mix64(z: int) -> int:
    """SplitMix64 finaliser: a bijective avalanche mix of a 64-bit integer."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash_step(domain: int, seed: int, global_step: int, micro_step: int) -> int:
    """64-bit hash of one step's coordinates within a domain."""
    h = _mix64(domain)
    for part, name in ((seed, "seed"), (global_step, "global_step"), (micro_step, "micro_step")):
        try:
            value = operator.index(part)
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {part!r}") from None
        if name != "seed" and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        h = _mix64(h ^ (value & _MASK64))
    return h


def step_uniform(seed: int, global_step: int, micro_step: int) -> float:
    """The step's mode draw: a uniform number in [0, 1) with 53 random bits, fixed by its arguments."""
    return (_hash_step(_DOMAIN_MODE, seed, global_step, micro_step) >> 11) * 2.0**-53


def is_slow_step(seed: int, global_step: int, micro_step: int, slow_ratio: float) -> bool:
    """Whether micro-step `micro_step` of optimizer step `global_step` runs in slow mode: true with
    probability `slow_ratio` over steps, never for 0, always for 1, same answer on every rank and resume."""
    r = float(slow_ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"slow_ratio must be in [0, 1], got {slow_ratio!r}")
    return step_uniform(seed, global_step, micro_step) < r


def step_seed(seed: int, global_step: int, micro_step: int) -> int:
    """A 63-bit seed for per-step randomness (e.g. the random pruner's torch.Generator) that all ranks
    agree on; independent of the mode draw of the same step."""
    return _hash_step(_DOMAIN_PRUNER_SEED, seed, global_step, micro_step) >> 1


def training_slow_ratio(slow_mode_ratio: float, pretraining: bool, slow_mode_in_pretraining: bool = False) -> float:
    """The slow-mode probability r of a training stage: the paper pretrains the projector in fast mode only (r = 0),
    unless asked otherwise; instruction tuning uses `--slow_mode_ratio`."""
    return float(slow_mode_ratio) if (not pretraining or slow_mode_in_pretraining) else 0.0


class ModeSchedule:
    """Where training is (global step, micro-step) and what that means for the mode and the pruner seed.

    Held by the model's patched forward and advanced by `DualSpeedCallback`; resuming sets `global_step` from
    the trainer state, so the schedule replays exactly.
    """

    def __init__(self, seed: int, slow_ratio: float):
        if not 0.0 <= float(slow_ratio) <= 1.0:
            raise ValueError(f"slow_ratio must be in [0, 1], got {slow_ratio!r}")
        self.seed, self.slow_ratio = int(seed), float(slow_ratio)
        self.global_step, self.micro_step = 0, 0

    def at(self, global_step: int, micro_step: int = 0) -> "ModeSchedule":
        self.global_step, self.micro_step = int(global_step), int(micro_step)
        return self

    def is_slow(self) -> bool:
        return is_slow_step(self.seed, self.global_step, self.micro_step, self.slow_ratio)

    def pruner_seed(self) -> int:
        return step_seed(self.seed, self.global_step, self.micro_step)
