"""Vectorised splicing of per-image visual sequences into a text batch (DualSpeed's LLM input builder).

Each image placeholder (IMAGE_TOKEN_INDEX) is replaced by its image's visual sequence, whose length may differ
per image (pruned to K_i tokens plus the isolator, or the full packed sequence). Every output position is
computed by a dense lookup (which source token, which offset inside it), so there is no loop over samples or
tokens, and one host synchronisation per batch (the padded output length).
"""
from typing import Optional, Tuple

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200


def image_index_per_token(is_image: torch.Tensor, text_only_consumes_image: bool = True) -> torch.Tensor:
    """[B, L] bool -> [B, L] index of the image each placeholder consumes.

    LLaVA's convention: images are consumed in reading order, and a sample without any placeholder consumes one
    (the dummy image the data pipeline gives text-only samples), which is skipped. Hugging Face's Llava batches
    hold images only for the samples that have them (`text_only_consumes_image=False`).
    """
    per_sample = is_image.sum(dim=1)
    consumed = per_sample.clamp(min=1) if text_only_consumes_image else per_sample
    first = torch.cumsum(consumed, dim=0) - consumed
    return first.unsqueeze(1) + torch.cumsum(is_image.long(), dim=1) - 1


def splice_visual_tokens(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    labels: Optional[torch.Tensor],
    text_embeds: torch.Tensor,
    visual: torch.Tensor,
    visual_lengths: torch.Tensor,
    max_length: Optional[int] = None,
    padding_side: str = "right",
    text_only_consumes_image: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the LLM input batch.

    Args:
        input_ids: [B, L] with IMAGE_TOKEN_INDEX placeholders; `attention_mask` [B, L] marks real tokens.
        text_embeds: [B, L, H] embeddings of input_ids (placeholder rows are ignored).
        visual: [I, S, H] visual sequences, image i valid in its first `visual_lengths[i]` rows.
        text_only_consumes_image: see `image_index_per_token`.
    Returns:
        (inputs_embeds [B, T, H], attention_mask [B, T] bool, position_ids [B, T], labels [B, T]) with visual
        positions labelled IGNORE_INDEX, truncated to `max_length` and padded on `padding_side`.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & real
    image_idx = image_index_per_token(is_image, text_only_consumes_image).clamp(min=0, max=max(visual.shape[0] - 1, 0))
    width = torch.where(is_image, visual_lengths[image_idx], real.long())
    ends = torch.cumsum(width, dim=1)
    lengths = ends[:, -1]
    if max_length is not None:
        lengths = lengths.clamp(max=max_length)
    out_len = int(lengths.max())  # the one host sync: the padded output length

    steps = torch.arange(out_len, device=device).unsqueeze(0).expand(batch, -1)
    pad = (out_len - lengths).unsqueeze(1) if padding_side == "left" else torch.zeros_like(lengths).unsqueeze(1)
    pos = steps - pad
    valid = (pos >= 0) & (pos < lengths.unsqueeze(1))
    pos = pos.clamp(min=0)
    src = torch.searchsorted(ends, pos.contiguous(), right=True).clamp(max=length - 1)
    offset = pos - (ends.gather(1, src) - width.gather(1, src))
    from_image = is_image.gather(1, src) & valid
    from_text = ~is_image.gather(1, src) & valid

    hidden = text_embeds.shape[-1]
    token_rows = text_embeds.gather(1, src.unsqueeze(-1).expand(-1, -1, hidden))
    img = image_idx.gather(1, src)
    vis_rows = visual[img, offset.clamp(max=visual.shape[1] - 1)]
    embeds = torch.where(from_image.unsqueeze(-1), vis_rows.to(token_rows.dtype), token_rows)
    embeds = embeds * valid.unsqueeze(-1).to(embeds.dtype)
    # Keep the projector in the graph even when no placeholder used it (ZeRO-3 expects every parameter used).
    embeds = embeds + visual[:, :1, :1].sum().to(embeds.dtype) * 0

    new_labels = torch.where(from_text, labels.gather(1, src), torch.full_like(src, IGNORE_INDEX))
    position_ids = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
    return embeds, valid, position_ids, new_labels
