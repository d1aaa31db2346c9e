"""Dropping visual tokens between the LLM's decoder layers (layer-wise pruning, e.g. FitPrune), without editing
transformers: hooks on the decoder layers of one forward pass.

`LayerPruning(llm, tokens, policy)` is a context manager around one call of the LLM base model (`model.get_model()`).
After each layer the policy names, the layer's attention probabilities are recomputed from its q / k projections
(`dualspeed_patch.visual_attention`), the policy decides which visual tokens stay, and the layer's output is
compacted to the kept positions, in their original order. Every later layer then gets the matching attention mask
(rebuilt by transformers for the compacted sequence, so SDPA, eager and FlashAttention masks all work), rotary
embeddings and position ids gathered at the kept tokens' *original* positions. Text tokens, mode-isolator vectors and
padding are never dropped. Rows of a batch may lose different numbers of tokens (a text-only row loses none): a row
shorter than the batch is followed by empty slots, masked as keys and labelled IGNORE_INDEX.

`run.gather_labels(labels)` maps the labels of the uncompacted input onto the final positions, so the LM head and
the loss only see kept positions and next-token targets stay aligned.

Requirements: LLaMA-style decoder layers called as `layer(hidden_states, attention_mask=..., position_embeddings=(cos,
sin), position_ids=...)` with `self_attn.q_proj` / `k_proj` (transformers >= 4.48), and, under gradient checkpointing,
transformers' checkpointing of the layer's `forward` (not its `__call__`), so these hooks run once per forward and
never inside a recomputation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

import torch

from .splice import IGNORE_INDEX, splice_visual_tokens
from .visual_attention import VisualScores, head_max_attention, visual_scores


@dataclass
class TokenMap:
    """What every position of an LLM input batch [B, T] holds.

    visual: prunable visual tokens; image: index of the image a visual token belongs to (-1 elsewhere);
    query: text tokens whose attention ranks visual tokens (text that is not supervised answer text);
    real: positions that are neither padding nor empty slots.
    """

    visual: torch.Tensor
    image: torch.Tensor
    query: torch.Tensor
    real: torch.Tensor

    def gather(self, index: torch.Tensor, slot: torch.Tensor) -> "TokenMap":
        """The map at positions `index` [B, T'] of the current sequence; `slot` [B, T'] marks non-empty slots."""
        visual = self.visual.gather(1, index) & slot
        return TokenMap(
            visual=visual,
            image=torch.where(visual, self.image.gather(1, index), torch.full_like(index, -1)),
            query=self.query.gather(1, index) & slot,
            real=self.real.gather(1, index) & slot,
        )


def map_tokens(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    labels: Optional[torch.Tensor],
    visual_lengths: torch.Tensor,
    width: int,
    prefix: int = 0,
    max_length: Optional[int] = None,
    padding_side: str = "right",
) -> TokenMap:
    """The `TokenMap` of the LLM input that `splice_visual_tokens` builds from the same arguments.

    Image i's spliced sequence has `visual_lengths[i]` rows of which the first `prefix` are mode-isolator vectors
    (never pruned, not visual); `width` is the padded width of the visual tensor. `labels` are the *spliced* labels
    [B, T] (answer text is supervised and is not a query); None makes every text token a query. The layout comes from
    splicing a 3-channel marker (visual, image index + 1, isolator) through the very same splice, so it cannot drift
    from the real input.
    """
    images = visual_lengths.shape[0]
    device = input_ids.device
    rows = torch.arange(width, device=device).unsqueeze(0)
    inside = rows < visual_lengths.unsqueeze(1)
    marker = torch.stack(
        [
            (inside & (rows >= prefix)).float(),
            (torch.arange(images, device=device).unsqueeze(1) + 1).float().expand(images, width),
            (inside & (rows < prefix)).float(),
        ],
        dim=-1,
    )
    text = torch.zeros(*input_ids.shape, 3, device=device)
    spliced, real, _, _ = splice_visual_tokens(input_ids, attention_mask, None, text, marker, visual_lengths,
                                               max_length=max_length, padding_side=padding_side)
    visual = (spliced[..., 0] > 0.5) & real
    isolator = (spliced[..., 2] > 0.5) & real
    image = torch.where(visual, spliced[..., 1].round().long() - 1, torch.full_like(real, -1, dtype=torch.long))
    query = real & ~visual & ~isolator
    if labels is not None:
        if labels.shape != real.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not match the spliced input {tuple(real.shape)}")
        query = query & (labels == IGNORE_INDEX)
    return TokenMap(visual=visual, image=image, query=query, real=real)


def rank_in_group(values: torch.Tensor, group: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Rank [B, T] of each token among the tokens of its row with the same `group` id, ordered by `values`
    (0 = largest when `descending`; ties keep position order). Tokens with group < 0 share one group of their own,
    sorted after the others; their ranks carry no meaning."""
    order, start = _group_sort(values, group, descending)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions - start)


def cumsum_in_group(values: torch.Tensor, group: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """Inclusive running sum [B, T] of `values` over each token's group, in the group's order by `values`
    (smallest first unless `descending`): token j gets the sum of its group's values ranked up to and including j."""
    order, start = _group_sort(values, group, descending)
    ordered = values.gather(1, order)
    running = ordered.cumsum(dim=1)
    before_group = (running - ordered).gather(1, start)
    return torch.empty_like(values).scatter_(1, order, running - before_group)


def _group_sort(values: torch.Tensor, group: torch.Tensor, descending: bool):
    """Each row's positions sorted by (group, value), and for every sorted entry the sorted index where its group
    starts. Two stable argsorts: by value, then by group."""
    key = torch.where(group >= 0, group, torch.full_like(group, torch.iinfo(torch.long).max))
    by_value = values.argsort(dim=1, descending=descending, stable=True)
    order = by_value.gather(1, key.gather(1, by_value).argsort(dim=1, stable=True))
    sorted_key = key.gather(1, order)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    first = torch.ones_like(sorted_key, dtype=torch.bool)
    first[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
    start = torch.where(first, positions, torch.zeros_like(positions)).cummax(dim=1).values
    return order, start


def compact_index(keep: torch.Tensor, width: int) -> torch.Tensor:
    """Ascending kept positions of each row, [B, width]; rows with fewer kept positions repeat their last one.
    `width` must be at least the largest number kept in a row (no host synchronisation here)."""
    length = keep.shape[1]
    positions = torch.arange(length, device=keep.device).expand_as(keep)
    ordered = torch.where(keep, positions, torch.full_like(positions, length)).sort(dim=1).values[:, :width]
    present = ordered < length
    last = torch.where(present, ordered, torch.full_like(ordered, -1)).amax(dim=1, keepdim=True).clamp(min=0)
    return torch.where(present, ordered, last)


Decision = Union[None, torch.Tensor, tuple]


class PruningPolicy(Protocol):
    """Decides, after a layer, which visual tokens stay.

    `layers`: the layer indices after which it may prune (attention is recomputed only there).
    Called as `policy(layer, scores, tokens)` with the layer's `VisualScores` and the current `TokenMap`; returns
    None (keep everything), a keep mask [B, T] over the visual tokens, or `(mask, width)` where `width` is the
    compacted sequence length if known on the host (it saves a host synchronisation).
    """

    layers: frozenset

    def __call__(self, layer: int, scores: VisualScores, tokens: TokenMap) -> Decision: ...


@dataclass
class _Stage:
    """Layer inputs for the compacted sequence: attention mask, rotary (cos, sin), position ids."""

    attention_mask: object
    position_embeddings: tuple
    position_ids: torch.Tensor


class LayerPruning:
    """Context manager: prune visual tokens between the decoder layers of `llm` during the enclosed forward.

    `llm` is the LLaVA base model (LlamaModel-like: `.layers`, `.config`); `tokens` the `TokenMap` of its input;
    `policy` a `PruningPolicy`. After the forward: `index` [B, T'] holds the original position of each final slot,
    `tokens` the final map, `kept[layer]` the original positions present after each pruning layer and `gather_labels`
    maps labels to the final positions. One pass per instance.
    """

    def __init__(self, llm, tokens: TokenMap, policy: PruningPolicy):
        self.llm = llm
        self.layers = list(llm.layers)
        self.tokens = tokens
        self.policy = policy
        batch, length = tokens.real.shape
        self.index = torch.arange(length, device=tokens.real.device).expand(batch, length)
        self.slot = torch.ones(batch, length, dtype=torch.bool, device=tokens.real.device)
        self.kept: dict[int, torch.Tensor] = {}
        self._original: Optional[tuple] = None
        self._stage: Optional[_Stage] = None
        self._layer_rope: Optional[tuple] = None
        self._q: Optional[torch.Tensor] = None
        self._k: Optional[torch.Tensor] = None
        self._handles: list = []
        bad = sorted(layer for layer in policy.layers if not 0 <= layer < len(self.layers))
        if bad:
            raise ValueError(f"pruning layers {bad} are outside the LLM's {len(self.layers)} decoder layers")

    # ------------------------------------------------------------------ hook management

    def __enter__(self) -> "LayerPruning":
        _check_checkpointing(self.llm, self.layers)
        for number, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._before(number), with_kwargs=True))
            if number in self.policy.layers:
                attention = layer.self_attn
                self._handles.append(attention.q_proj.register_forward_hook(self._capture("_q")))
                self._handles.append(attention.k_proj.register_forward_hook(self._capture("_k")))
                self._handles.append(layer.register_forward_hook(self._after(number), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _capture(self, name: str) -> Callable:
        def hook(module, args, output):
            setattr(self, name, output.detach())

        return hook

    def _before(self, number: int) -> Callable:
        def hook(module, args, kwargs):
            if self._original is None:
                if kwargs.get("position_embeddings") is None:
                    raise RuntimeError(
                        "layer-wise visual-token pruning needs decoder layers called with position_embeddings=(cos, "
                        "sin) (transformers >= 4.48); this model's layers compute rotary embeddings themselves"
                    )
                self._original = (kwargs.get("attention_mask"), kwargs["position_embeddings"],
                                  kwargs.get("position_ids"))
            if self._stage is not None:
                kwargs = dict(kwargs, attention_mask=self._stage.attention_mask,
                              position_embeddings=self._stage.position_embeddings,
                              position_ids=self._stage.position_ids)
            self._layer_rope = kwargs["position_embeddings"]
            return args, kwargs

        return hook

    def _after(self, number: int) -> Callable:
        def hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            attention = module.self_attn
            config = self.llm.config
            head_dim = getattr(attention, "head_dim", None) or config.hidden_size // config.num_attention_heads
            q, k, (cos, sin) = self._q, self._k, self._layer_rope
            self._q = self._k = None
            if q is None or k is None:
                raise RuntimeError(f"layer {number}: q_proj / k_proj outputs were not captured")
            probs = head_max_attention(q, k, cos, sin, self.tokens.real, head_dim, getattr(attention, "scaling", None))
            scores = visual_scores(probs, self.tokens.visual, self.tokens.image, self.tokens.query)
            del probs
            decision = self.policy(number, scores, self.tokens)
            if decision is None:
                return None
            keep_visual, width = decision if isinstance(decision, tuple) else (decision, None)
            hidden = self._compact(number, hidden, keep_visual, width)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    # ------------------------------------------------------------------ compaction

    def _compact(self, number: int, hidden: torch.Tensor, keep_visual: torch.Tensor,
                 width: Optional[int]) -> torch.Tensor:
        """Keep every non-visual token and the visual tokens the policy keeps, in order; empty slots of the previous
        stage are dropped and the shorter rows refilled with empty slots at the end."""
        keep = self.slot & (~self.tokens.visual | keep_visual.bool())
        counts = keep.sum(dim=1)
        if width is None:
            width = int(counts.max())  # host synchronisation: policies that know the width pass it
        local = compact_index(keep, width)
        self.slot = torch.arange(width, device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
        self.tokens = self.tokens.gather(local, self.slot)
        self.index = self.index.gather(1, local)
        self.kept[number] = torch.where(self.slot, self.index, torch.full_like(self.index, -1))
        hidden = hidden.gather(1, local.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        self._stage = self._make_stage(hidden)
        return hidden

    def _make_stage(self, hidden: torch.Tensor) -> _Stage:
        from transformers.masking_utils import create_causal_mask

        _, (cos, sin), position_ids = self._original
        batch = hidden.shape[0]
        if position_ids is None:
            position_ids = torch.arange(cos.shape[1], device=hidden.device).unsqueeze(0)
        positions = position_ids.expand(batch, -1).gather(1, self.index)
        rope = tuple(t.expand(batch, -1, -1).gather(1, self.index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
                     for t in (cos, sin))
        # the cache goes by position: its keyword was renamed (past_key_values -> cache) within transformers 5
        mask = create_causal_mask(self.llm.config, hidden, self.tokens.real,
                                  None, position_ids=positions)
        return _Stage(attention_mask=mask, position_embeddings=rope, position_ids=positions)

    # ------------------------------------------------------------------ results

    def gather_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of the uncompacted input [B, T] at the final positions [B, T']; empty slots get IGNORE_INDEX."""
        gathered = labels.gather(1, self.index)
        return torch.where(self.slot, gathered, torch.full_like(gathered, IGNORE_INDEX))


def _check_checkpointing(llm, layers) -> None:
    """Refuse gradient checkpointing that would re-run the hooks inside a recomputation (older transformers
    checkpoint the decoder layer's `__call__`; current ones checkpoint its `forward`, outside module hooks)."""
    if not llm.training:
        return
    active = bool(getattr(llm, "gradient_checkpointing", False)) or any(
        getattr(layer, "gradient_checkpointing", False) for layer in layers)
    if not active:
        return
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        GradientCheckpointingLayer = None
    forward_wrapped = (GradientCheckpointingLayer is not None and "__call__" not in GradientCheckpointingLayer.__dict__
                       and all(isinstance(layer, GradientCheckpointingLayer) for layer in layers))
    if not forward_wrapped:
        raise RuntimeError(
            "layer-wise visual-token pruning under gradient checkpointing needs a transformers version that "
            "checkpoints the decoder layer's forward (hooks outside the recomputation); upgrade transformers or "
            "turn --gradient_checkpointing off"
        )


__all__ = [
    "LayerPruning",
    "PruningPolicy",
    "TokenMap",
    "compact_index",
    "cumsum_in_group",
    "map_tokens",
    "rank_in_group",
]
