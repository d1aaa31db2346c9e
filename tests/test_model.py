"""The LLaVA model: image-token splicing, state-dict names, projector types, forward/generate plumbing."""
import inspect

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_projector.builder import build_vision_projector
from types import SimpleNamespace


def _images(model, n):
    size = model.get_vision_tower().config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_state_dict_keys_match_upstream(tiny_llava):
    keys = set(tiny_llava.state_dict())
    assert {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight"} <= keys
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "model.mm_projector.1.weight" not in keys  # GELU has no weights; indices follow upstream


def test_image_tokens_are_spliced_in_place(tiny_llava):
    model = tiny_llava
    n = model.get_vision_tower().num_patches
    ids = torch.tensor([[1, 5, 6, IMAGE_TOKEN_INDEX, 7, 8, 9]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]])
    images = _images(model, 1)
    with torch.no_grad():
        _, pos, mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, torch.ones_like(ids, dtype=torch.bool), None, labels, images
        )
        visual = model.encode_images(images)[0]
        text = model.get_model().embed_tokens(torch.tensor([1, 5, 6, 7, 8, 9]))
    assert embeds.shape == (1, 6 + n, model.config.hidden_size)
    assert pos is None and mask.shape == (1, 6 + n) and bool(mask.all())
    torch.testing.assert_close(embeds[0, 3 : 3 + n], visual)
    torch.testing.assert_close(embeds[0, :3], text[:3])
    torch.testing.assert_close(embeds[0, 3 + n :], text[3:])
    assert (new_labels[0, : 3 + n] == IGNORE_INDEX).all()
    assert new_labels[0, 3 + n :].tolist() == [7, 8, 9]


def test_text_only_sample_in_mixed_batch(tiny_llava):
    model = tiny_llava
    n = model.get_vision_tower().num_patches
    pad = 0
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6], [1, 7, 8, pad]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    images = _images(model, 2)  # the second is the dummy image of the text-only sample
    with torch.no_grad():
        _, _, new_mask, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, mask, None, labels, images
        )
    assert embeds.shape[1] == 3 + n
    assert new_mask.sum(1).tolist() == [3 + n, 3]
    assert new_labels[1].tolist()[:3] == [IGNORE_INDEX, 7, 8]
    assert (new_labels[1, 3:] == IGNORE_INDEX).all()
    assert (embeds[1, 3:] == 0).all()


def test_forward_loss_equals_manual_ce_and_accepts_trainer_kwargs(tiny_llava):
    model = tiny_llava
    assert "images" in inspect.signature(model.forward).parameters
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6, 7]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7]])
    images = _images(model, 1)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, images=images, attention_mask=torch.ones_like(ids),
                    num_items_in_batch=torch.tensor(2))
        logits = out.logits[0]
    n = model.get_vision_tower().num_patches
    # targets 6 and 7 sit at spliced positions 2+n and 3+n; predicted from the previous position
    manual = torch.nn.functional.cross_entropy(logits[[1 + n, 2 + n]], torch.tensor([6, 7]))
    torch.testing.assert_close(out.loss, manual)


def test_generate_returns_new_tokens_only(tiny_llava):
    model = tiny_llava
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6]])
    # min_new_tokens: an early EOS from the tiny weights must not shorten the answer this test measures
    out = model.generate(ids, images=_images(model, 1), max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 4)  # the 4 prompt ids are not returned


@pytest.mark.parametrize("kind,layers", [("linear", 1), ("mlp2x_gelu", 3), ("mlp3x_gelu", 5)])
def test_projector_types(kind, layers):
    proj = build_vision_projector(SimpleNamespace(mm_projector_type=kind, mm_hidden_size=8, hidden_size=16))
    x = torch.randn(2, 3, 8)
    assert proj(x).shape == (2, 3, 16)
    assert (len(proj) if isinstance(proj, torch.nn.Sequential) else 1) == layers
    identity = build_vision_projector(SimpleNamespace(mm_projector_type="identity", mm_hidden_size=8, hidden_size=8))
    assert identity(x) is x
    with pytest.raises(ValueError, match="mlpx"):
        build_vision_projector(SimpleNamespace(mm_projector_type="mlpx", mm_hidden_size=8, hidden_size=8))
