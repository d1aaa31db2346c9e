"""The K rule: how many of n items a ratio keeps, rounded half up, in exact integer arithmetic.

Every count DualSpeed derives from a ratio goes through `scale_half_up`: the visual tokens fast mode keeps
(K = (1 - p) * N), the decoder layers a fast step skips (ratio * L), and FitPrune's per-image counts when an image
has another number of tokens than the recipe's (remaining * n / N). Ratios are read as the decimal they print as
(0.9 is 9/10), so float error cannot move a result across a rounding boundary.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Union

import torch

# The denominator cap keeps the integer arithmetic of the tensor form far from int64 overflow.
MAX_RATIO_DENOMINATOR = 1_000_000

Count = Union[int, torch.Tensor]


def exact_ratio(value: Union[float, Fraction]) -> Fraction:
    """`value` as the exact fraction its decimal spelling means (0.9 -> 9/10); fractions pass through."""
    if isinstance(value, Fraction):
        return value
    return Fraction(repr(float(value))).limit_denominator(MAX_RATIO_DENOMINATOR)


def scale_half_up(n: Count, ratio: Union[float, Fraction]) -> Count:
    """floor(n * ratio + 1/2): `n` scaled by `ratio`, rounded half up; elementwise (same device) for a tensor."""
    frac = exact_ratio(ratio)
    num, den = frac.numerator, frac.denominator
    if isinstance(n, torch.Tensor):
        return torch.div(2 * num * n.long() + den, 2 * den, rounding_mode="floor")
    return (2 * num * int(n) + den) // (2 * den)


def round_half_up(x: float) -> int:
    """floor(x + 1/2) of a measured (float) quantity, e.g. a mean token count."""
    return math.floor(float(x) + 0.5)


def _check_pruning_ratio(pruning_ratio: float) -> float:
    p = float(pruning_ratio)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
    return p


def kept_tokens(n: int, pruning_ratio: float) -> int:
    """Visual tokens kept out of `n` at pruning ratio p: K = max(1, floor((1 - p) * n + 1/2)), at most n (0 for n = 0).

    (1 - 0.9) * 576 = 57.6 -> 58 and (1 - 0.9) * 15 = 1.5 -> 2. The paper's code truncates instead (int(57.6) = 57);
    this project rounds.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n (number of visual tokens) must be an integer >= 0, got {n!r}")
    keep = 1 - exact_ratio(_check_pruning_ratio(pruning_ratio))
    return min(int(n), max(1, scale_half_up(int(n), keep)))


def kept_tokens_tensor(n: torch.Tensor, pruning_ratio: float) -> torch.Tensor:
    """`kept_tokens` elementwise over a LongTensor of per-image token counts (images of different sizes)."""
    if n.dtype.is_floating_point or n.dtype == torch.bool:
        raise TypeError(f"n must be an integer tensor of token counts, got dtype {n.dtype}")
    n = n.long()
    if bool((n < 0).any()):
        raise ValueError("n (numbers of visual tokens) must be >= 0")
    keep = 1 - exact_ratio(_check_pruning_ratio(pruning_ratio))
    return torch.minimum(scale_half_up(n, keep).clamp(min=1), n)
