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


def test_generate_is_greedy_decoding_of_the_spliced_prompt_without_deprecation_warnings(tiny_llava):
    """generate (KV cache, images carried per step) picks the same tokens as re-running the full sequence."""
    import warnings

    model = tiny_llava
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6]])
    images = _images(model, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.generate(ids, images=images, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    with torch.no_grad():
        embeds = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images)[4]
        expected = []
        for _ in range(4):
            token = model(inputs_embeds=embeds, use_cache=False).logits[0, -1].argmax()
            expected.append(int(token))
            embeds = torch.cat([embeds, model.get_model().embed_tokens(token.view(1, 1))], dim=1)
    assert out[0].tolist() == expected


def test_generate_refuses_inputs_embeds(tiny_llava):
    with pytest.raises(NotImplementedError, match="inputs_embeds"):
        tiny_llava.generate(torch.tensor([[1, 5]]), inputs_embeds=torch.zeros(1, 2, 8))


@pytest.mark.parametrize("kind,keys", [
    ("linear", {"weight", "bias"}),
    ("mlp2x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias"}),
    ("mlp3x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
    ("identity", set()),
])
def test_projector_parameter_names_follow_llava_checkpoints(kind, keys):
    proj = build_vision_projector(SimpleNamespace(mm_projector_type=kind, mm_hidden_size=8, hidden_size=16))
    assert set(proj.state_dict()) == keys
    if kind.startswith("mlp"):
        assert [type(m).__name__ for m in proj][:3] == ["Linear", "GELU", "Linear"]
        assert proj[0].in_features == 8 and all(m.out_features == 16 for m in proj if hasattr(m, "out_features"))


def test_projector_rejects_an_mlp_without_layers():
    with pytest.raises(ValueError, match="mlp0x_gelu"):
        build_vision_projector(SimpleNamespace(mm_projector_type="mlp0x_gelu", mm_hidden_size=8, hidden_size=8))


def test_initialize_vision_modules_records_the_vision_config(tiny_llava, tiny_clip_path):
    from tests.conftest import make_model_args

    config = tiny_llava.config
    assert config.mm_vision_tower == str(tiny_clip_path) and config.use_mm_proj is True
    assert (config.mm_projector_type, config.mm_vision_select_layer, config.mm_vision_select_feature,
            config.mm_patch_merge_type) == ("mlp2x_gelu", -2, "patch", "flat")
    assert config.mm_hidden_size == tiny_llava.get_vision_tower().hidden_size
    args = SimpleNamespace(**vars(make_model_args(tiny_clip_path)))
    del args.mm_vision_select_layer  # an argument object without a required field is named in the error
    with pytest.raises(ValueError, match="mm_vision_select_layer"):
        tiny_llava.get_model().initialize_vision_modules(args)


def test_vision_tower_list_input_matches_the_batch(tiny_llava):
    tower = tiny_llava.get_vision_tower()
    images = _images(tiny_llava, 2)
    batch = tower(images)
    listed = tower(list(images))
    assert isinstance(listed, list) and [f.shape for f in listed] == [batch.shape[1:]] * 2
    for feature, row in zip(listed, batch):
        torch.testing.assert_close(feature, row)


def test_select_best_resolution_follows_the_anyres_rule_and_is_shared_with_the_patch():
    """Most original pixels kept after an aspect-preserving fit, then least waste, first listed on a tie."""
    import random

    import dualspeed_patch.anyres as patch_anyres
    from llava.mm_utils import select_best_resolution

    def reference(size, candidates):
        best, best_kept, best_waste = None, -1, None
        for w, h in candidates:
            scale = min(w / size[0], h / size[1])
            kept = min(int(size[0] * scale) * int(size[1] * scale), size[0] * size[1])
            if kept > best_kept or (kept == best_kept and w * h - kept < best_waste):
                best, best_kept, best_waste = (w, h), kept, w * h - kept
        return best

    rng = random.Random(0)
    pinpoints = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
    for _ in range(300):
        size = (rng.randint(1, 2000), rng.randint(1, 2000))
        candidates = rng.sample(pinpoints, rng.randint(1, len(pinpoints)))
        assert select_best_resolution(size, candidates) == reference(size, candidates)
    assert select_best_resolution((100, 100), [(200, 200), (200, 200)]) == (200, 200)
    assert select_best_resolution((10, 10), [[20, 20], [40, 40]]) == (20, 20)  # ties on kept: less waste
    with pytest.raises(ValueError, match="candidate"):
        select_best_resolution((10, 10), [])
    assert patch_anyres.select_best_resolution is select_best_resolution


def test_initialize_vision_tokenizer_adds_image_tokens_at_the_mean(tiny_llava, tiny_clip_path, tiny_tokenizer):
    import copy

    from tests.conftest import make_model_args

    model, tokenizer = tiny_llava, copy.deepcopy(tiny_tokenizer)
    before = len(tokenizer)
    args = make_model_args(tiny_clip_path, mm_use_im_patch_token=True, mm_use_im_start_end=True,
                           tune_mm_mlp_adapter=True)
    model.requires_grad_(False)
    model.initialize_vision_tokenizer(args, tokenizer)
    assert len(tokenizer) == before + 3 and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        torch.testing.assert_close(emb[-2:], emb[:-2].mean(dim=0, keepdim=True).expand(2, -1))
    assert model.get_input_embeddings().weight.requires_grad
    assert not model.get_output_embeddings().weight.requires_grad
