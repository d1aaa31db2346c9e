"""An analytic FLOPs model of a LLaMA-style decoder stack, for budgeting layer-wise visual-token pruning.

Cost of one decoder layer on a sequence of n tokens (2 FLOPs per multiply-accumulate):

    linear(n)    = 2 n (d·(h·e) + 2·d·(h_kv·e) + (h·e)·d + 3·d·f)   q, k, v, o projections and the gated MLP
    attention(n) = 4 n² (h·e)                                        Q·Kᵀ and A·V over all n keys

with d the hidden size, f the MLP width, h / h_kv the query / key-value heads and e the head size. The attention
term counts the full n×n products (as FitPrune's own estimate does); a causal kernel skips about half of them, which
lowers every configuration's cost alike and does not change which recipe fits a budget much. Norms, softmax, rotary
embeddings, the embedding lookup and the LM head are left out: they are small, or (LM head) depend on the number of
answer tokens rather than on the visual tokens. A stack's cost is the sum over its layers of the cost at the
sequence length each layer sees, so pruning visual tokens after layer l makes every later layer cheaper.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class LlmShape:
    """The sizes of a decoder stack that its FLOPs depend on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"LlmShape.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_config(cls, config: Any) -> "LlmShape":
        """Read the sizes from a transformers LLaMA-style config (head_dim defaults to hidden / heads)."""
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden_size=int(config.hidden_size),
            intermediate_size=int(config.intermediate_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def layer_flops(shape: LlmShape, tokens: float) -> float:
    """FLOPs of one decoder layer on a sequence of `tokens` tokens (module docstring has the formula)."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens!r}")
    d, f = shape.hidden_size, shape.intermediate_size
    q_width, kv_width = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_token = 2 * (d * q_width + 2 * d * kv_width + q_width * d + 3 * d * f)
    return per_token * tokens + 4 * q_width * tokens * tokens


def stack_flops(shape: LlmShape, fixed_tokens: float, visual_tokens: int, remaining: Sequence[int]) -> float:
    """FLOPs of the whole stack when `remaining[l]` visual tokens are left after layer l.

    Layer 0 sees all `visual_tokens`; layer l > 0 sees `remaining[l - 1]`; `fixed_tokens` (text, isolator) are
    never pruned and count at every layer. `remaining` must have one entry per layer.
    """
    if len(remaining) != shape.num_layers:
        raise ValueError(f"remaining has {len(remaining)} entries, the model has {shape.num_layers} layers")
    seen = [visual_tokens, *list(remaining)[:-1]]
    return sum(layer_flops(shape, fixed_tokens + v) for v in seen)


def flops_ratio(shape: LlmShape, fixed_tokens: float, visual_tokens: int, remaining: Sequence[int]) -> float:
    """`stack_flops` of the pruned recipe over that of the unpruned stack on the same input (1.0 = no saving)."""
    full = stack_flops(shape, fixed_tokens, visual_tokens, [visual_tokens] * shape.num_layers)
    if full <= 0:
        raise ValueError("the unpruned stack has zero FLOPs (no tokens at all)")
    return stack_flops(shape, fixed_tokens, visual_tokens, remaining) / full
