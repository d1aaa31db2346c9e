"""DualSpeed on the real tiny LLaVA: the patched input builder, fast/slow modes, isolator, KL, gradients."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import dualspeed_patch.patch as patch
from dualspeed_patch import kept_tokens
from dualspeed_patch.isolator import ISOLATOR_FILE, attach_isolator, get_isolator, read_isolator_file
from dualspeed_patch.pruners import divprune_select
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.llava_arch import LlavaMetaForCausalLM
from dualspeed_patch.state import state_of
from dualspeed_patch import step as ds_step

from conftest import enable_dualspeed  # noqa: E402

L_ISO = 4


@pytest.fixture
def ds_model(tiny_llava, patched):
    """Tiny LLaVA in training mode with DualSpeed on (p = 0.9, l = 4) and a schedule we steer by hand."""
    model = tiny_llava
    return enable_dualspeed(model, L_ISO)


def batch(model, text_only_second=True):
    """Row 0: text + image + answer; row 1: text-only (dummy image) with padding."""
    size = model.get_vision_tower().config.image_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, 10, 11, 12, 13, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2], dtype=torch.long)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9],
                           [IGNORE_INDEX, IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, IGNORE_INDEX]])
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)


def slow_and_fast_steps(schedule):
    """(global_step, slow?) for the first steps of a schedule, to steer tests into each mode."""
    slow = next(s for s in range(100) if schedule.at(s).is_slow())
    fast = next(s for s in range(100) if not schedule.at(s).is_slow())
    return slow, fast


def test_apply_is_idempotent_and_keeps_signatures(tiny_llava, patched):
    cls = type(tiny_llava)
    prepare = LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal
    forward = cls.forward
    patch.apply()
    assert LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal is prepare
    assert cls.forward is forward
    params = inspect.signature(cls.forward).parameters
    assert {"images", "labels", "kwargs"} <= set(params)
    assert list(inspect.signature(prepare).parameters)[:8] == [
        "self", "input_ids", "position_ids", "attention_mask", "past_key_values", "labels", "images", "image_sizes"]


def test_full_mode_equals_llava(tiny_llava):
    b = batch(tiny_llava)
    args = (b["input_ids"], None, b["attention_mask"], None, b["labels"], b["images"])
    with torch.no_grad():
        expected = tiny_llava.prepare_inputs_labels_for_multimodal(*args)
        patch.apply()
        try:
            got = tiny_llava.prepare_inputs_labels_for_multimodal(*args)
        finally:
            patch.remove()
    assert got[0] is None and expected[0] is None
    torch.testing.assert_close(got[4], expected[4])
    assert torch.equal(got[5], expected[5]) and torch.equal(got[2], expected[2])


def test_fast_mode_input_layout(ds_model):
    model = ds_model
    b = batch(model)
    n = model.get_vision_tower().num_patches
    k = kept_tokens(n, 0.9)
    with torch.no_grad(), patch.visual_mode(model, patch.FAST):
        _, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
            b["input_ids"], None, b["attention_mask"], None, b["labels"], b["images"])
        features = model.encode_images(b["images"][:1])
    assert mask.sum(1).tolist() == [6 + L_ISO + k, 5]  # text + (K + l) per image; text-only row unchanged
    torch.testing.assert_close(embeds[0, 2 : 2 + L_ISO], get_isolator(model).weight)  # isolator right after the text
    kept = divprune_select(features, k)[0]
    torch.testing.assert_close(embeds[0, 2 + L_ISO : 2 + L_ISO + k], features[0, kept])
    assert (labels[0, : 2 + L_ISO + k] == IGNORE_INDEX).all() and labels[0, -3:].tolist() == [7, 8, 9]


def test_fast_step_trains_isolator_and_projector(ds_model):
    model = ds_model
    _, fast = slow_and_fast_steps(state_of(model).schedule)
    state_of(model).schedule.at(fast)
    out = model(**batch(model))
    out.loss.backward()
    assert get_isolator(model).weight.grad.abs().sum() > 0
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0


def _answer_logits(model, b, mode):
    with torch.no_grad(), patch.visual_mode(model, mode):
        _, _, mask, _, embeds, labels = model.prepare_inputs_labels_for_multimodal(
            b["input_ids"], None, b["attention_mask"], None, b["labels"], b["images"])
        logits = model.lm_head(model.get_model()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)
    supervised = labels[:, 1:] != IGNORE_INDEX
    return logits[:, :-1][supervised].double(), labels[:, 1:][supervised]


@pytest.mark.parametrize("alpha,temperature", [(1.0, 1.0), (0.5, 2.0)])
def test_slow_step_loss_is_ce_plus_hand_computed_kl(ds_model, alpha, temperature):
    model = ds_model.eval()  # no dropout; slow_step itself does not depend on the training flag
    state_of(model).args.distill_alpha, state_of(model).args.distill_temperature = alpha, temperature
    slow, _ = slow_and_fast_steps(state_of(model).schedule)
    state_of(model).schedule.at(slow)
    b = batch(model)
    loss, metrics = ds_step.slow_step(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])

    student, targets = _answer_logits(model, b, patch.FULL)
    teacher, _ = _answer_logits(model, b, patch.FAST)
    ce = F.cross_entropy(student, targets)
    p = torch.softmax(teacher / temperature, -1)
    q = torch.softmax(student / temperature, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean() * temperature**2
    assert metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx((ce + alpha * kl).item(), rel=1e-4)
    assert kl.item() > 0


def test_slow_step_with_alpha_zero_is_plain_ce_and_isolator_gets_no_gradient(ds_model):
    model = ds_model.eval()
    state_of(model).args.distill_alpha = 0.0
    b = batch(model)
    loss, _ = ds_step.slow_step(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    with patch.visual_mode(model, patch.FULL):
        plain = model(**b).loss
    torch.testing.assert_close(loss, plain)
    state_of(model).args.distill_alpha = 1.0
    loss, _ = ds_step.slow_step(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    loss.backward()
    assert get_isolator(model).weight.grad is None  # the teacher (the only isolator user) has no graph
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0


def test_teacher_pass_builds_no_graph(ds_model):
    model = ds_model
    seen = []
    handle = model.get_model().register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state.requires_grad))
    slow, _ = slow_and_fast_steps(state_of(model).schedule)
    state_of(model).schedule.at(slow)
    try:
        out = model(**batch(model))
    finally:
        handle.remove()
    assert out.loss.requires_grad
    assert sorted(seen) == [False, True]  # teacher without graph, student with


@pytest.mark.parametrize("slow", [True, False])
def test_text_only_batches_in_both_modes(ds_model, slow):
    model = ds_model
    b = batch(model)
    b["input_ids"] = torch.tensor([[1, 5, 6, 7, 8, 9, 9], [1, 10, 11, 12, 13, 0, 0]])
    step = slow_and_fast_steps(state_of(model).schedule)[0 if slow else 1]
    state_of(model).schedule.at(step)
    out = model(**b)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.get_model().mm_projector[0].weight.grad is not None


def test_inference_ignores_the_schedule(ds_model):
    model = ds_model.eval()
    b = batch(model)
    with torch.no_grad():
        got = model(**b).logits
        patch.remove()
        try:
            expected = model(**b).logits
        finally:
            patch.apply()
    torch.testing.assert_close(got, expected)


def test_isolator_file_round_trip_and_fresh_init_warning(tiny_llava, tmp_path):
    with pytest.warns(UserWarning, match="fresh isolator"):
        iso = attach_isolator(tiny_llava, 3)
    path = tmp_path / ISOLATOR_FILE
    torch.save({"model.mode_isolator.weight": iso.weight.detach() * 2}, path)
    loaded = attach_isolator(tiny_llava, 3, str(path))
    torch.testing.assert_close(loaded.weight, iso.weight.detach() * 2)
    assert read_isolator_file(str(path)).shape == (3, tiny_llava.config.hidden_size)
    with pytest.raises(ValueError, match="expected \\(5, "):
        attach_isolator(tiny_llava, 5, str(path))
    assert attach_isolator(tiny_llava, 0) is None


def test_fast_ce_is_logged_per_token_whatever_the_trainer_divides_by(ds_model):
    """Under gradient accumulation / several processes the Trainer passes num_items_in_batch (tokens over all
    micro-batches and ranks) and the loss is divided by it; the logged fast_ce stays the micro-batch's per-token
    mean, on the slow step's scale."""
    from dualspeed_patch.callback import DualSpeedMetrics

    model = ds_model
    state_of(model).schedule.at(slow_and_fast_steps(state_of(model).schedule)[1])  # a fast step
    state_of(model).metrics = recorder = DualSpeedMetrics()
    b = batch(model)
    local = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())  # 6 answer tokens
    with torch.no_grad():
        mean_loss = model(**b).loss
        scaled_loss = model(**b, num_items_in_batch=torch.tensor(4 * local)).loss  # e.g. 2 ranks x 2 micro-batches
    assert scaled_loss.item() == pytest.approx(mean_loss.item() / 4, rel=1e-5)
    logged = recorder.pop()["dualspeed/fast_ce"]
    assert logged == pytest.approx(mean_loss.item(), rel=1e-5)  # both calls recorded the per-token mean
