"""DualSpeed on Hugging Face's LlavaForConditionalGeneration equals DualSpeed on the LLaVA repository's model with
the same weights: the same LLM input in every visual mode, the same fast and slow losses and gradients."""
import warnings

import pytest
import torch

from dualspeed_patch import DualSpeedArguments, attach
from dualspeed_patch.hf import host_of, install, llm_inputs
from dualspeed_patch.inputs import FAST, FULL, PRUNED, multimodal_inputs
from dualspeed_patch.state import state_of
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from conftest import enable_dualspeed  # noqa: E402

N_IMAGE = 64  # visual tokens of the tiny CLIP (64 px, 8 px patches)


@pytest.fixture
def pair(tiny_llava, patched):
    """(LLaVA-repo model, Hugging Face Llava with the same weights), both fp32; vocabulary + 1 for the image token."""
    from playground.world_hf import hf_llava_from_llava

    llava = tiny_llava
    vocab = llava.config.vocab_size
    llava.resize_token_embeddings(vocab + 1, mean_resizing=False)
    hf = hf_llava_from_llava(llava, image_token_id=vocab).eval()
    return llava, hf


def llava_batch(image_token_id):
    """Row 0: text, image, answer; row 1: text only, right-padded. LLaVA's form (placeholder + a dummy image for
    the text-only row) and Hugging Face's (expanded image tokens, pixel values only for row 0)."""
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, 10, 11, 12, 13, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    labels = torch.tensor([[IGNORE_INDEX] * 4 + [7, 8, 9], [IGNORE_INDEX] * 2 + [11, 12, 13] + [IGNORE_INDEX] * 2])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    llava = dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)
    run = torch.full((N_IMAGE,), image_token_id)
    hf_ids = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([ids[0, :2], run, ids[0, 3:]]), ids[1, :5]], batch_first=True, padding_value=0)
    hf_mask = (torch.arange(hf_ids.shape[1]) < torch.tensor([[N_IMAGE + 6], [5]])).long()
    hf_labels = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([labels[0, :2], torch.full((N_IMAGE,), IGNORE_INDEX), labels[0, 3:]]), labels[1, :5]],
        batch_first=True, padding_value=IGNORE_INDEX)
    hf = dict(input_ids=hf_ids, attention_mask=hf_mask, labels=hf_labels, pixel_values=images[:1])
    return llava, hf


def test_same_weights_give_the_same_logits_without_dualspeed(pair):
    llava, hf = pair
    lb, hb = llava_batch(hf.config.image_token_id)
    with torch.no_grad():
        a = llava(**lb).logits
        b = hf(**hb).logits
    # Compare at the real positions of row 0 (LLaVA's splice and Hugging Face's masked scatter agree).
    assert a.shape[1] == b.shape[1] == N_IMAGE + 6
    torch.testing.assert_close(a[0], b[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(a[1, :5], b[1, :5], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", [FULL, PRUNED, FAST])
def test_host_builds_the_llava_input_in_every_visual_mode(pair, mode):
    llava, hf = pair
    args = DualSpeedArguments(dualspeed=True, pruning_ratio=0.75, mode_isolator_len=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach(llava, args)
        attach(install(hf), args)
    host = host_of(hf)
    with torch.no_grad():
        host.hf.model.mode_isolator.weight.copy_(llava.get_model().mode_isolator.weight)
    lb, hb = llava_batch(hf.config.image_token_id)
    _, pos_a, mask_a, _, emb_a, lab_a = multimodal_inputs(llava, state_of(llava), mode, lb["input_ids"], None,
                                                          lb["attention_mask"], None, lb["labels"], lb["images"])
    images, sizes = host.images(hb["pixel_values"])
    ids, mask = host.placeholder_ids(hb["input_ids"], hb["attention_mask"], host.full_lengths(images, sizes))
    _, pos_b, mask_b, _, emb_b, lab_b = multimodal_inputs(host, state_of(hf), mode, ids, None, mask, None,
                                                          hb["labels"], images)
    kept = {FULL: N_IMAGE, PRUNED: 16, FAST: 3 + 16}[mode]
    assert emb_a.shape == emb_b.shape == (2, kept + 6, 128)
    torch.testing.assert_close(emb_b, emb_a, atol=1e-6, rtol=1e-6)
    assert torch.equal(mask_a.bool(), mask_b.bool()) and torch.equal(lab_a, lab_b)
    built = llm_inputs(hf, hb["input_ids"], hb["pixel_values"], hb["attention_mask"], mode=mode, padding_side="right")
    torch.testing.assert_close(built["inputs_embeds"], emb_a, atol=1e-6, rtol=1e-6)


def mirror(llava, hf) -> None:
    """Attach the LLaVA model's DualSpeed settings to the HF model (same schedule seed), copy its isolator, train."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach(install(hf), state_of(llava).args, seed=0)
    hf.train()
    with torch.no_grad():
        hf.model.mode_isolator.weight.copy_(llava.get_model().mode_isolator.weight)


def at_step(step: int, *models) -> None:
    """Steer every model's mode schedule to global step `step`."""
    for model in models:
        state_of(model).schedule.at(step)


def _steps(schedule):
    slow = next(s for s in range(100) if schedule.at(s).is_slow())
    fast = next(s for s in range(100) if not schedule.at(s).is_slow())
    return slow, fast


@pytest.mark.parametrize("which", ["fast", "slow"])
def test_fast_and_slow_steps_equal_the_llava_path(pair, which):
    """Same loss and the same gradients on the projector, the isolator and the LLM's first layer."""
    llava, hf = pair
    enable_dualspeed(llava, 4, slow_ratio=0.5)
    mirror(llava, hf)
    slow, fast = _steps(state_of(llava).schedule)
    step = slow if which == "slow" else fast
    at_step(step, llava, hf)
    lb, hb = llava_batch(hf.config.image_token_id)
    loss_a = llava(**lb).loss
    loss_a.backward()
    loss_b = hf(**hb).loss
    loss_b.backward()
    assert torch.isfinite(loss_a) and loss_a.item() > 0
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    projector = (llava.get_model().mm_projector[0].weight, hf.model.multi_modal_projector.linear_1.weight)
    q_proj = (llava.get_model().layers[0].self_attn.q_proj.weight,
              hf.model.language_model.layers[0].self_attn.q_proj.weight)
    for a, b in (projector, q_proj):
        assert a.grad is not None and a.grad.abs().sum() > 0
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4)
    iso_a, iso_b = llava.get_model().mode_isolator.weight.grad, hf.model.mode_isolator.weight.grad
    if which == "fast":  # fast mode trains the isolator
        assert iso_a.abs().sum() > 0
        torch.testing.assert_close(iso_b, iso_a, atol=1e-6, rtol=1e-4)
    else:  # the slow step's student never sees it, and its teacher runs without gradient
        assert iso_a is None and iso_b is None
    logged = state_of(hf).metrics.pop()
    expected = state_of(llava).metrics.pop()
    assert set(logged) == set(expected) and len(logged) == (2 if which == "fast" else 4)
    for key in expected:
        assert abs(logged[key] - expected[key]) < 1e-5, key


def test_image_token_count_mismatch_is_named(pair):
    _, hf = pair
    host = host_of(hf)
    _, hb = llava_batch(hf.config.image_token_id)
    ids = hb["input_ids"].clone()
    ids[0, 3] = 5  # one image token fewer than the image's 64 visual tokens
    images, sizes = host.images(hb["pixel_values"])
    with pytest.raises(ValueError, match=r"63 in total, expected \[64\] per image"):
        host.placeholder_ids(ids, hb["attention_mask"], host.full_lengths(images, sizes))


def test_plain_forward_is_untouched_without_dualspeed_training(pair):
    _, hf = pair
    _, hb = llava_batch(hf.config.image_token_id)
    with torch.no_grad():
        before = hf(**hb).logits
        install(hf)
        hf.train()  # training mode, but no DualSpeed schedule attached: Hugging Face's own forward
        after = hf(**hb).logits
    torch.testing.assert_close(after, before)
    import inspect

    from dualspeed_patch.hf import uninstall

    params = list(inspect.signature(hf.forward).parameters)  # what the Trainer inspects (columns, loss kwargs)
    assert params[:2] == ["input_ids", "pixel_values"] and "labels" in params and "kwargs" in params
    assert hf.forward.__func__ is not type(hf).forward  # a bound method of its own, as accelerate expects
    uninstall(hf)
    assert hf.forward.__func__ is type(hf).forward


# ---------------------------------------------------------------- LLaVA-NeXT (anyres) through LlavaNextForConditionalGeneration


@pytest.fixture
def next_pair(tiny_llm_path, tiny_clip_path, patched):
    """(LLaVA-NeXT model of tests/test_next.py, Hugging Face LlavaNext with its weights), vocabulary + 1."""
    from playground.world_hf import hf_llava_from_llava
    from test_next import next_llava

    llava = next_llava(tiny_llm_path, tiny_clip_path)
    vocab = llava.config.vocab_size
    llava.resize_token_embeddings(vocab + 1, mean_resizing=False)
    with torch.no_grad():
        llava.get_model().image_newline.normal_()
    return llava, hf_llava_from_llava(llava, image_token_id=vocab).eval()


def next_batches(llava, image_token_id, names=("wide", "tall", "square")):
    """LLaVA's NeXT batch of tests/test_next.py (3 image rows + a text-only row with a dummy image) and the same
    batch as Hugging Face's processor writes it: each image's packed length in image tokens, views padded to the
    batch's largest count, sizes as (height, width), no dummy image."""
    from test_next import UNPAD_LEN, next_batch

    lb = next_batch(llava, names)
    rows = []
    for r in range(len(names)):
        ids = lb["input_ids"][r]
        rows.append(torch.cat([ids[:2], torch.full((UNPAD_LEN[names[r]],), image_token_id), ids[3:]]))
    rows.append(lb["input_ids"][-1][:5])
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)
    lengths = torch.tensor([len(row) for row in rows])
    mask = (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long()
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r in range(len(names)):
        labels[r, lengths[r] - 3:lengths[r]] = lb["labels"][r, 4:]
    labels[-1, 2:5] = lb["labels"][-1, 2:5]
    views = lb["images"][:len(names)]
    padded = torch.zeros(len(names), max(v.shape[0] for v in views), 3, 64, 64)
    for i, v in enumerate(views):
        padded[i, :v.shape[0]] = v
    sizes = torch.tensor([(h, w) for w, h in lb["image_sizes"][:len(names)]])
    return lb, dict(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=padded, image_sizes=sizes)


def test_next_same_weights_give_the_same_logits(next_pair):
    llava, hf = next_pair
    lb, hb = next_batches(llava, hf.config.image_token_id)
    with torch.no_grad():
        a = llava(**lb).logits
        b = hf(**hb).logits
    for r in range(3):
        n = int(hb["attention_mask"][r].sum())
        torch.testing.assert_close(b[r, :n], a[r, :n], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["fast", "slow"])
def test_next_fast_and_slow_steps_equal_the_llava_path(next_pair, which):
    """Pruning after NeXT packing: the same packed sequences, kept tokens and losses on both hosts."""
    llava, hf = next_pair
    enable_dualspeed(llava, 4, slow_ratio=0.5)
    mirror(llava, hf)
    step = _steps(state_of(llava).schedule)[0 if which == "slow" else 1]
    at_step(step, llava, hf)
    lb, hb = next_batches(llava, hf.config.image_token_id)
    loss_a = llava(**lb).loss
    loss_a.backward()
    loss_b = hf(**hb).loss
    loss_b.backward()
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    grad_a, grad_b = llava.get_model().image_newline.grad, hf.model.image_newline.grad
    if which == "slow":  # the student sees every newline
        assert grad_a is not None and grad_a.abs().sum() > 0
    assert (grad_a is None) == (grad_b is None)
    if grad_a is not None:
        torch.testing.assert_close(grad_b, grad_a, atol=1e-6, rtol=1e-4)
    proj_a, proj_b = llava.get_model().mm_projector[2].weight.grad, hf.model.multi_modal_projector.linear_2.weight.grad
    assert proj_a.abs().sum() > 0
    torch.testing.assert_close(proj_b, proj_a, atol=1e-6, rtol=1e-4)


def next_processor(hf, tiny_llm_path):
    """Hugging Face's LlavaNextProcessor for the tiny CLIP (64-px tiles, the pinpoints of tests/test_next.py)."""
    import transformers
    from transformers import AutoTokenizer, LlavaNextProcessor

    pil = getattr(transformers, "LlavaNextImageProcessorPil", None)  # (no torchvision here)
    images = (pil or transformers.LlavaNextImageProcessor)(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_pad=True,
        image_grid_pinpoints=hf.config.image_grid_pinpoints)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llm_path))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.pad_token = tokenizer.unk_token
    assert tokenizer.convert_tokens_to_ids("<image>") == hf.config.image_token_id
    return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, image_token="<image>",
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


def test_next_processor_writes_as_many_image_tokens_as_the_packing_yields(next_pair, tiny_llm_path):
    """For odd sizes too: Hugging Face's processor and DualSpeed's packing (its unpad rounding) agree, and a fast
    step runs on the processor's own batch."""
    from test_next import noise_image

    _, hf = next_pair
    processor = next_processor(hf, tiny_llm_path)
    sizes = [(100, 40), (48, 112), (50, 112), (120, 120), (64, 64), (77, 31), (200, 90), (33, 129), (127, 65)]
    images = [noise_image(size, seed) for seed, size in enumerate(sizes)]
    batch = processor(images=images, text=["USER: <image>\nWhat is it? ASSISTANT: a"] * len(sizes),
                      return_tensors="pt", padding=True)
    host = install(hf)
    views, llava_sizes = host.images(batch["pixel_values"], batch["image_sizes"])
    assert llava_sizes == sizes
    written = (batch["input_ids"] == hf.config.image_token_id).sum(1)
    assert host.full_lengths(views, llava_sizes).tolist() == written.tolist()
    assert written.tolist()[:4] == [166, 176, 208, 336]  # the closed forms of tests/test_next.py
    args = DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach(host, args, seed=0)
    hf.train()
    loss = hf(**batch, labels=torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE_INDEX)).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("settings", [{"vtp_method": "fastervlm"}, {"vtp_method": "avgpool"},
                                      {"vtp_method": "random"},
                                      {"layer_skip_ratio": 0.5, "layer_skip_schedule": "uniform"}],
                         ids=["fastervlm", "avgpool", "random", "layer_skip"])
def test_fast_step_options_equal_the_llava_path(pair, settings):
    """Other plug-ins ([CLS]-attention context, a compressor, seeded randomness) and layer skipping on both hosts."""
    llava, hf = pair
    enable_dualspeed(llava, 4, slow_ratio=0.0, **settings)
    mirror(llava, hf)
    at_step(3, llava, hf)
    lb, hb = llava_batch(hf.config.image_token_id)
    loss_a, loss_b = llava(**lb).loss, hf(**hb).loss
    assert torch.isfinite(loss_a)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    logged, expected = state_of(hf).metrics.pop(), state_of(llava).metrics.pop()
    if "layer_skip_ratio" in settings:
        assert logged["dualspeed/skipped_layers"] == expected["dualspeed/skipped_layers"] == 2.0


def test_instruction_aware_pruner_needs_a_clip_text_tower_on_hf(pair):
    _, hf = pair
    with pytest.raises(ValueError, match="cdpruner.*CLIP's text tower.*--clip_text_tower"):
        attach(install(hf), DualSpeedArguments(dualspeed=True, vtp_method="cdpruner"))


@pytest.mark.parametrize("which", ["fast", "slow"])
def test_cdpruner_with_instructions_equals_the_llava_path(pair, tiny_clip_path, which):
    """CDPruner's relevance from each sample's instruction: LLaVA reads its tower's CLIP checkpoint, the HF model the
    same checkpoint through --clip_text_tower; instructions per sample, mapped to the HF batch's images."""
    llava, hf = pair
    enable_dualspeed(llava, 4, slow_ratio=0.5, vtp_method="cdpruner", clip_text_tower=str(tiny_clip_path))
    mirror(llava, hf)
    assert state_of(hf).text_scorer is not None
    at_step(_steps(state_of(llava).schedule)[0 if which == "slow" else 1], llava, hf)
    lb, hb = llava_batch(hf.config.image_token_id)
    texts = ["a red circle", "say hi"]
    loss_a = llava(**lb, instructions=texts).loss
    loss_b = hf(**hb, instructions=texts).loss
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    assert state_of(hf).instructions == ["a red circle"]  # the text-only sample holds no image
    other = hf(**hb, instructions=["a green square", "say hi"]).loss  # the instruction changes what is kept
    assert which == "slow" or not torch.allclose(other, loss_b)


@pytest.mark.parametrize("which", ["fast", "slow"])
def test_fitprune_in_llm_pruning_equals_the_llava_path(pair, tmp_path, which):
    """The in-LLM method (pruning between decoder layers, by recipe) on Hugging Face's language model."""
    from dualspeed_patch.fitprune import FitPruneRecipe

    llava, hf = pair
    recipe = tmp_path / "recipe.json"
    FitPruneRecipe(visual_tokens=64, remaining=(64, 40, 20, 10), flops_budget=0.6, flops_ratio=0.55).save(str(recipe))
    enable_dualspeed(llava, 4, slow_ratio=0.5, vtp_method="fitprune", fitprune_recipe=str(recipe))
    mirror(llava, hf)
    step = _steps(state_of(llava).schedule)[0 if which == "slow" else 1]
    at_step(step, llava, hf)
    lb, hb = llava_batch(hf.config.image_token_id)
    loss_a, loss_b = llava(**lb).loss, hf(**hb).loss
    assert torch.isfinite(loss_a)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
