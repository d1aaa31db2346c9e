"""CDPruner and FasterVLM: contract, CDPruner against a plain log-det greedy, the [CLS]-attention hook against
eager attention on the tiny CLIP tower, and the CLIP relevance context."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import transformers

from dualspeed_patch.pruners import available_pruners, cdpruner_select, fastervlm_select, prune_indices
from dualspeed_patch.vision_context import (
    ClipTextScorer,
    capture_cls_attention,
    clip_relevance,
    encoder_layer_for_select_layer,
    encoder_layers,
    read_checkpoint_tensors,
)


def reference_dpp(features, q, keep, valid_idx):
    """Greedy MAP of det(L_Y), L = diag(q) S diag(q), on one image: try every candidate, float64 log-det."""
    x = features.double()[valid_idx]
    w = q.double()[valid_idx]
    unit = x / x.norm(dim=-1, keepdim=True)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(1.0)  # exactly, so equally relevant tokens tie (lowest index wins)
    kernel = w[:, None] * similarity * w[None, :]
    chosen = []
    for _ in range(min(keep, len(valid_idx))):
        best, pick = -math.inf, None
        for i in range(len(valid_idx)):
            if i in chosen:
                continue
            subset = chosen + [i]
            sign, logdet = torch.linalg.slogdet(kernel[subset][:, subset])
            value = logdet.item() if sign > 0 else -math.inf
            if value > best:
                best, pick = value, i
        chosen.append(pick)
    return sorted(valid_idx[i] for i in chosen)


def random_case(b, n, d, seed, ragged):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    q = 0.1 + 0.9 * torch.rand(b, n, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    if ragged:
        valid[1:] = torch.rand(b - 1, n, generator=g) < 0.7
        valid[1:, :2] = True
    return x, q, valid


@pytest.mark.parametrize(
    "b,n,d,keep,ragged",
    [(1, 20, 16, 6, False), (3, 30, 16, [8, 5, 10], True), (3, 24, 32, 12, True), (2, 64, 32, [16, 5], False)],
)
def test_cdpruner_matches_reference_logdet_greedy(b, n, d, keep, ragged):
    x, q, valid = random_case(b, n, d, seed=17 * b + n, ragged=ragged)
    keep_arg = torch.tensor(keep) if isinstance(keep, list) else keep
    keeps = keep if isinstance(keep, list) else [keep] * b
    for relevance in (q, None):  # conditional DPP, then the pure-diversity DPP (q = 1)
        idx, mask = prune_indices("cdpruner", x, keep_arg, valid if ragged else None, relevance=relevance)
        for row in range(b):
            valid_idx = valid[row].nonzero().flatten().tolist()
            w = q[row] if relevance is not None else torch.ones(n)
            assert idx[row][mask[row]].tolist() == reference_dpp(x[row], w, keeps[row], valid_idx)


def test_cdpruner_unit_relevance_is_pure_diversity():
    x, _, valid = random_case(3, 40, 24, seed=5, ragged=True)
    plain = cdpruner_select(x, 9, valid)
    assert torch.equal(cdpruner_select(x, 9, valid, relevance=torch.ones(3, 40)), plain)
    assert torch.equal(cdpruner_select(x, 9, valid, relevance=torch.full((3, 40), 0.5)), plain)  # scale-free
    # A different q changes the selection (so the test above is not vacuous).
    assert not torch.equal(cdpruner_select(x, 9, valid, relevance=torch.rand(3, 40, generator=torch.Generator().manual_seed(1))), plain)


def test_most_relevant_token_is_kept():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 16, 32, generator=g)
    patch_embeds = torch.randn(2, 16, 8, generator=g)
    text = torch.randn(2, 8, generator=g)
    patch_embeds[:, 7] = 5.0 * text  # token 7 points exactly at the instruction -> q = 1
    patch_embeds[1, 11] = 2.0 * text[1]  # row 1: a second, equally relevant token
    q = clip_relevance(patch_embeds, text)
    assert q[:, 7].tolist() == [1.0, 1.0]
    assert cdpruner_select(feats, 1).tolist() == [[0], [0]]  # diversity alone: every token ties, lowest index
    assert cdpruner_select(feats, 1, relevance=q).tolist() == [[7], [7]]
    assert 7 in cdpruner_select(feats, 4, relevance=q)[0].tolist()
    assert {7, 11} <= set(cdpruner_select(feats, 2, relevance=q)[1].tolist())


def test_cdpruner_exhaustion_fills_by_relevance():
    e = torch.eye(3)
    # Row 0: tokens along e1, e1, e2, e1, e3, e2. Greedy: 3 (q=1), 5 (best e2), 4 (e3); then the chosen set spans
    # every remaining token (residual 0), so the last slots go by relevance: 1 (0.9), then 2 (0.6); 0 is dropped.
    x0 = torch.stack([e[0], e[0], e[1], e[0], e[2], e[1]])
    q0 = torch.tensor([0.5, 0.9, 0.6, 1.0, 0.7, 0.8])
    # Row 1: zero relevance everywhere -> exhausted from the start -> lowest indices.
    x = torch.stack([x0, torch.randn(6, 3)])
    q = torch.stack([q0, torch.zeros(6)])
    assert cdpruner_select(x, 5, relevance=q).tolist() == [[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]
    assert cdpruner_select(x, 3, relevance=q).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert cdpruner_select(x, 6, relevance=q).tolist() == [list(range(6))] * 2
    # Zero feature vectors have no volume either; they come last, by index.
    z = torch.zeros(1, 4, 2)
    z[0, 2] = torch.tensor([1.0, 1.0])
    assert cdpruner_select(z, 2).tolist() == [[0, 2]]


@pytest.mark.parametrize("name", ["cdpruner", "fastervlm"])
@pytest.mark.parametrize("b", [1, 3])
def test_contract_sorted_unique_in_range_and_valid(name, b):
    g = torch.Generator().manual_seed(11 + b)
    n = 37
    x = torch.randn(b, n, 12, generator=g)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1:, 29:] = False  # ragged: shorter images, right-padded
    if b > 1:
        valid[2, ::3] = False
    keep = torch.tensor([9, 0, 40][:b])
    context = dict(relevance=torch.rand(b, n, generator=g), cls_attention=torch.rand(b, n, generator=g))
    idx, mask = prune_indices(name, x, keep, valid, **context)
    counts = torch.minimum(keep, valid.sum(1))
    assert idx.dtype == torch.long and idx.shape == (b, int(counts.max()))
    assert mask.sum(1).tolist() == counts.tolist()
    for row in range(b):
        real = idx[row][mask[row]]
        assert real.tolist() == sorted(set(real.tolist()))
        assert bool(valid[row, real].all())
        assert bool(((idx[row] >= 0) & (idx[row] < n)).all())
        if mask[row].any():
            assert (idx[row][~mask[row]] == real[-1]).all()


def test_fastervlm_top_k_exact_and_needs_context():
    x = torch.zeros(2, 5, 3)
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5, 0.05], [0.2, 0.2, 0.2, 0.9, 0.2]])
    valid = torch.tensor([[True, False, True, True, True], [True] * 5])
    # Row 0: token 1 is invalid, so 3 then 2. Row 1: 3, then the tie at 0.2 goes to the lowest index.
    assert fastervlm_select(x, 2, valid, cls_attention=scores).tolist() == [[2, 3], [0, 3]]
    assert fastervlm_select(x, torch.tensor([1, 3]), cls_attention=scores).tolist() == [[1, 1, 1], [0, 1, 3]]
    with pytest.raises(ValueError, match="capture_cls_attention"):
        prune_indices("fastervlm", x, 2)
    with pytest.raises(ValueError, match="cls_attention"):
        prune_indices("fastervlm", x, 2, cls_attention=scores[:, :4])
    assert {"cdpruner", "fastervlm"} <= set(available_pruners())


def test_encoder_layer_for_select_layer():
    assert encoder_layer_for_select_layer(-2, 24) == 22
    assert encoder_layer_for_select_layer(-1, 24) == 23
    assert encoder_layer_for_select_layer(1, 24) == 0
    assert encoder_layer_for_select_layer(24, 24) == 23
    for bad in (0, -25, 25):
        with pytest.raises(ValueError, match="select_layer"):
            encoder_layer_for_select_layer(bad, 24)


def _vision(path, attn):
    return transformers.CLIPVisionModel.from_pretrained(str(path), attn_implementation=attn).eval()


def test_cls_attention_hook_matches_eager_and_leaves_outputs_unchanged(tiny_clip_path):
    eager, sdpa = _vision(tiny_clip_path, "eager"), _vision(tiny_clip_path, "sdpa")
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    n_layers = len(encoder_layers(sdpa))
    layer = encoder_layer_for_select_layer(-2, n_layers)
    layer_out = {}
    handle = sdpa.encoder.layers[layer].register_forward_hook(lambda m, a, out: layer_out.setdefault("x", out))
    with torch.no_grad():
        reference = eager(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        plain = sdpa(pixel_values=pixels, output_hidden_states=True)
        with capture_cls_attention(sdpa, layer) as cap:
            hooked = sdpa(pixel_values=pixels, output_hidden_states=True)
        with capture_cls_attention(eager, layer) as cap_eager:
            eager_hooked = eager(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    handle.remove()
    assert layer == 2 and torch.equal(layer_out["x"], plain.hidden_states[-2])  # layer 2 makes hidden_states[-2]
    expected = reference.attentions[-2][:, :, 0, 1:].mean(dim=1)  # [CLS] row, patch columns, head mean
    assert cap.cls_attention.shape == (3, 64)
    torch.testing.assert_close(cap.cls_attention, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(cap_eager.cls_attention, expected, rtol=0, atol=1e-6)
    for a, b in zip(plain.hidden_states, hooked.hidden_states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.last_hidden_state, hooked.last_hidden_state)
    for a, b in zip(reference.hidden_states + reference.attentions, eager_hooked.hidden_states + eager_hooked.attentions):
        assert torch.equal(a, b)
    assert not sdpa.encoder.layers[layer].self_attn._forward_pre_hooks  # removed on exit
    # FasterVLM on the captured scores keeps the eager reference's top-16 patches.
    feats = torch.randn(3, 64, 8)
    idx, _ = prune_indices("fastervlm", feats, 16, cls_attention=cap.cls_attention)
    assert idx.tolist() == expected.topk(16, dim=1).indices.sort(dim=1).values.tolist()


def test_cls_attention_through_llava_vision_tower(tiny_clip_path):
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    args = SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    tower = CLIPVisionTower(str(tiny_clip_path), args)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    layer = encoder_layer_for_select_layer(tower.select_layer, tower.config.num_hidden_layers)
    with capture_cls_attention(tower, layer, include_cls=True) as cap:
        features = tower(pixels)
    scores = cap.cls_attention
    assert features.shape == (2, 64, 128) and scores.shape == (2, 65)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))  # the full softmax row
    assert encoder_layers(tower) is tower.vision_tower.vision_model.encoder.layers
    with pytest.raises(IndexError, match="layer_index"):
        with capture_cls_attention(tower, 4):
            pass


def test_clip_relevance_hand_made():
    # cos with the text direction (1, 0): 1, 0, -1, 1/sqrt(2), 0.6.
    patches = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0], [3.0, 4.0]]]).repeat(3, 1, 1)
    text = torch.tensor([[1.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    valid = torch.tensor([[True] * 5, [True, True, False, True, True], [True] * 5])
    q = clip_relevance(patches, text, torch.tensor([True, True, False]), valid)
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.5, 0.0, (c + 1) / 2, 0.8], [1.0, 0.0, 0.0, c, 0.6], [1.0] * 5])
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-6)
    assert clip_relevance(patches, None, valid=valid).tolist() == valid.float().tolist()
    flat = clip_relevance(torch.ones(1, 4, 2), torch.tensor([[1.0, -1.0]]))  # all equally relevant
    assert flat.tolist() == [[1.0] * 4]
    negated = clip_relevance(patches[:1], text[:1], negate=True)
    torch.testing.assert_close(negated, 1 - expected[:1], rtol=0, atol=1e-6)


def test_clip_text_scorer_on_tiny_clip(tiny_clip_path, tmp_path):
    scorer = ClipTextScorer(tiny_clip_path)
    full = transformers.CLIPModel.from_pretrained(str(tiny_clip_path)).eval()
    question = "What is in the photo?"
    with torch.no_grad():
        embeds, has_text = scorer.text_embeds([f"<image>\n{question}", None, "  <image>  ", "a " * 200])
        alone, _ = scorer.text_embeds([question])
        long_alone, _ = scorer.text_embeds(["a " * 200])
        truncated, _ = scorer.text_embeds(["a " * 75])  # 75 words + start + end = CLIP's 77 tokens
        expected_text = full.get_text_features(**scorer.tokenizer([question], return_tensors="pt")).pooler_output
        hidden = torch.randn(4, 64, 128)
        expected_image = full.visual_projection(full.vision_model.post_layernorm(hidden))
        q = scorer.relevance([question, None, "", "a red square"], hidden)
    assert has_text.tolist() == [True, False, False, True]
    assert torch.equal(alone[0], expected_text[0])
    torch.testing.assert_close(embeds[0], expected_text[0])  # batched with padding: same up to rounding
    assert embeds[1:3].abs().sum() == 0
    assert torch.equal(long_alone, truncated)
    torch.testing.assert_close(embeds[3], truncated[0])
    assert torch.equal(scorer.image_embeds(hidden), expected_image)
    assert q[[1, 2]].tolist() == [[1.0] * 64] * 2
    assert q[[0, 3]].amin(dim=1).tolist() == [0.0, 0.0] and q[[0, 3]].amax(dim=1).tolist() == [1.0, 1.0]

    vision_only = tmp_path / "vision-only"
    vision_only.mkdir()
    (vision_only / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="full CLIP checkpoint"):
        ClipTextScorer(vision_only)
    with pytest.raises(KeyError, match="no_such.weight"):
        read_checkpoint_tensors(tiny_clip_path, ["visual_projection.weight", "no_such.weight"])
