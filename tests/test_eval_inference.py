"""Evaluation inference: batched generation, merged LoRA checkpoints, pruned inference and its isolator option.

One synthetic LoRA checkpoint (random, non-zero LoRA weights; projector and mode isolator in
non_lora_trainables.bin, as a DualSpeed LoRA run writes them) is built once and merged once for the module.
"""
import argparse
import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

import dualspeed_patch.patch as patch
from dualspeed_patch import kept_tokens
from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval import model_vqa_loader
from dualspeed_patch.pruned_inference import add_pruning_arguments, attach_trained_isolator, setup_pruned_inference
from llava.mm_utils import get_model_name_from_path
from llava.model import LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model, read_training_only_weights

from conftest import REPO, make_model_args  # noqa: E402

L_ISO = 4


def merge_lora(*args) -> None:
    """`scripts/merge_lora_weights.py`'s merge function (the script is not a package module)."""
    spec = importlib.util.spec_from_file_location("merge_lora_weights", REPO / "scripts" / "merge_lora_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.merge_lora(*args)


@pytest.fixture(scope="module", autouse=True)
def restore_patch_state():
    """Leave the DualSpeed patch as this module found it (pruned inference applies it process-wide)."""
    was_applied = getattr(LlavaLlamaForCausalLM.prepare_inputs_labels_for_multimodal, patch._PATCHED, False)
    yield
    if not was_applied:
        patch.remove()


@pytest.fixture(scope="module")
def checkpoints(tiny_llm_path, tiny_clip_path, tmp_path_factory):
    """(LoRA checkpoint dir, merged checkpoint dir, the isolator weights the run trained)."""
    from peft import LoraConfig, get_peft_model

    from dualspeed_patch import DualSpeedArguments, attach
    from llava.train import checkpoint

    root = tmp_path_factory.mktemp("eval_ckpt")
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(str(tiny_llm_path))
    model.get_model().initialize_vision_modules(make_model_args(tiny_clip_path))
    model.config.update(dict(mm_use_im_patch_token=False, mm_use_im_start_end=False, tokenizer_padding_side="right",
                             tokenizer_model_max_length=2048))  # as train() records them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        isolator = attach(model, DualSpeedArguments(dualspeed=True, mode_isolator_len=L_ISO)).isolator
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    lora.base_model.model.get_model().mm_projector.requires_grad_(True)
    isolator.requires_grad_(True)
    saved_extras = dict(checkpoint.EXTRA_TRAINABLE_FILES)
    checkpoint.EXTRA_TRAINABLE_FILES.clear()  # isolator only inside non_lora_trainables.bin
    try:
        lora_dir = root / "llava-tiny-lora"
        checkpoint.save_lora_checkpoint(lora, lora_dir, argparse.Namespace(lora_bias="none", should_save=True))
    finally:
        checkpoint.EXTRA_TRAINABLE_FILES.update(saved_extras)
    merged_dir = root / "llava-tiny-merged"
    merge_lora(str(lora_dir), str(tiny_llm_path), str(merged_dir), "float32")
    return lora_dir, merged_dir, isolator.weight.detach().clone()


@pytest.fixture(scope="module")
def merged_model(checkpoints):
    _, merged_dir, _ = checkpoints
    _, model, _, _ = load_pretrained_model(str(merged_dir), None, get_model_name_from_path(str(merged_dir)), device="cpu")
    return model


def eval_args(model_path: Path, **overrides) -> argparse.Namespace:
    """Arguments of `model_vqa_loader` as its command line gives them (greedy, short answers)."""
    argv = ["--model-path", str(model_path), "--device", "cpu", "--temperature", "0", "--max_new_tokens", "6"]
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-") if key not in ("max_new_tokens", "num_beams") else "--" + key
        argv += [flag] if value is True else [flag, str(value)]
    return model_vqa_loader.build_parser().parse_args(argv)


def probe(model, text_len: int = 6):
    """One image and `text_len` text tokens around its placeholder."""
    size = model.get_vision_tower().config.image_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX] + list(range(6, 6 + text_len - 2))])
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    return dict(input_ids=ids, images=images, attention_mask=torch.ones_like(ids))


def logits_of(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def greedy_ids(model, batch, steps: int = 5):
    with torch.no_grad():
        return model.generate(batch["input_ids"], images=batch["images"], do_sample=False, max_new_tokens=steps,
                              min_new_tokens=steps, pad_token_id=0)


@pytest.mark.parametrize("mode", [{}, {"pruning_ratio": 0.5, "use_mode_isolator": True}], ids=["plain", "fast"])
def test_batched_generation_equals_batch_one(tiny_world, checkpoints, tmp_path, capsys, mode):
    _, merged_dir, _ = checkpoints
    source = [json.loads(line) for line in open(tiny_world / "eval" / "questions.jsonl")][:7]
    fillers = ["", " Please look carefully at every part of the picture before answering.", " Think.", ""]
    questions = [dict(q, text=q["text"] + fillers[i % len(fillers)] * (i % 3)) for i, q in enumerate(source)]
    questions.append({"question_id": "text-only", "text": "Say something about shapes."})
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers = {}
    for batch_size in (1, 4):
        out = tmp_path / f"answers_b{batch_size}.jsonl"
        model_vqa_loader.eval_model(eval_args(merged_dir, image_folder=tiny_world / "images", question_file=qfile,
                                              answers_file=out, batch_size=batch_size, **mode))
        answers[batch_size] = [json.loads(line) for line in open(out)]
    assert [a["question_id"] for a in answers[4]] == [q["question_id"] for q in questions]
    assert [a["text"] for a in answers[4]] == [a["text"] for a in answers[1]]
    assert len({len(q["text"]) for q in questions}) >= 6
    assert f"answered {len(questions)} questions in" in capsys.readouterr().out


def test_merged_checkpoint_equals_lora_on_its_base(tiny_llm_path, checkpoints, merged_model):
    lora_dir, merged_dir, _ = checkpoints
    _, unmerged, _, _ = load_pretrained_model(str(lora_dir), str(tiny_llm_path), "llava-tiny-lora", device="cpu")
    plain, info = LlavaLlamaForCausalLM.from_pretrained(str(merged_dir), output_loading_info=True)
    # As upstream: the frozen CLIP tower is built lazily and loads from config.mm_vision_tower, so its saved copy
    # is the only thing from_pretrained leaves unused.
    assert not info["missing_keys"], info["missing_keys"]
    assert all(k.startswith("model.vision_tower.") for k in info["unexpected_keys"]), info["unexpected_keys"]
    plain.get_vision_tower().load_model()
    plain.eval()
    # lmms-eval's calls (newer and older wrappers): no model base, their keyword conventions
    name = get_model_name_from_path(str(merged_dir))
    _, lmms, _, _ = load_pretrained_model(str(merged_dir), None, name, device_map="", multimodal=True,
                                          attn_implementation="sdpa", torch_dtype="float32", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlashAttention-2 asked for but absent: SDPA
        _, lmms_old, _, _ = load_pretrained_model(str(merged_dir), None, name, device_map="",
                                                  use_flash_attention_2=True, device="cpu")
    batch = probe(unmerged)
    expected = logits_of(unmerged, batch)
    for model in (merged_model, plain, lmms, lmms_old):
        torch.testing.assert_close(logits_of(model, batch), expected, atol=1e-5, rtol=1e-5)


def test_lora_checkpoint_without_base_is_a_clear_error(checkpoints):
    lora_dir, _, _ = checkpoints
    with pytest.raises(ValueError, match="LoRA checkpoint .* no model_base"):
        load_pretrained_model(str(lora_dir), None, "llava-tiny-lora", device="cpu")


def test_isolator_is_found_in_lora_merged_and_full_checkpoints(tiny_llm_path, checkpoints, merged_model, tmp_path):
    lora_dir, merged_dir, trained = checkpoints
    assert (merged_dir / "mode_isolator.bin").is_file()
    for directory in (lora_dir, merged_dir):
        found, _ = read_training_only_weights(str(directory))
        torch.testing.assert_close(found["model.mode_isolator.weight"], trained, rtol=0, atol=0)
    full_dir = tmp_path / "llava-full"
    model = LlavaLlamaForCausalLM.from_pretrained(str(merged_dir))
    attach_trained_isolator(model, str(merged_dir))
    model.save_pretrained(full_dir)  # a full checkpoint holding the isolator in its safetensors
    found, source = read_training_only_weights(str(full_dir))
    assert source.endswith(".safetensors")
    torch.testing.assert_close(found["model.mode_isolator.weight"], trained, rtol=0, atol=0)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("with_isolator", [False, True])
def test_pruned_inference_input_length(checkpoints, merged_model, ratio, with_isolator):
    _, merged_dir, trained = checkpoints
    model = merged_model
    batch = probe(model, text_len=6)
    n_visual = model.get_vision_tower().num_patches
    overrides = dict(pruning_ratio=ratio, use_mode_isolator=with_isolator) if with_isolator else dict(pruning_ratio=ratio)
    args = eval_args(merged_dir, **overrides)
    seen = []
    hook = model.get_model().register_forward_pre_hook(
        lambda module, a, kw: seen.append(kw["inputs_embeds"] is not None and kw["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        with setup_pruned_inference(model, args):
            greedy_ids(model, batch, steps=2)
    finally:
        hook.remove()
    text = batch["input_ids"].shape[1] - 1  # every token but the image placeholder
    assert text == 6
    expected = text + kept_tokens(n_visual, ratio) + (L_ISO if with_isolator else 0)
    assert seen[0] == expected
    if with_isolator:
        torch.testing.assert_close(model.get_model().mode_isolator.weight, trained, rtol=0, atol=0)


def test_normal_inference_is_plain_llava_bit_for_bit(merged_model):
    model = merged_model
    batch = probe(model)
    patch.remove()
    plain_logits, plain_ids = logits_of(model, batch), greedy_ids(model, batch)
    args = eval_args(Path("unused"))
    context = setup_pruned_inference(model, args)
    assert not getattr(LlavaLlamaForCausalLM.prepare_inputs_labels_for_multimodal, patch._PATCHED, False)
    with context:
        assert torch.equal(logits_of(model, batch), plain_logits)
    patch.apply()
    with setup_pruned_inference(model, args):
        assert torch.equal(logits_of(model, batch), plain_logits)
        assert torch.equal(greedy_ids(model, batch), plain_ids)


def test_mode_isolator_option_needs_a_trained_isolator(tiny_llava, tiny_llm_path):
    args = argparse.Namespace(pruning_ratio=0.9, vtp_method="divprune", use_mode_isolator=True,
                              model_path=str(tiny_llm_path))
    with pytest.raises(ValueError, match="holds no trained mode isolator"):
        setup_pruned_inference(tiny_llava, args)
    with pytest.raises(ValueError, match="needs --pruning-ratio"):
        setup_pruned_inference(tiny_llava, argparse.Namespace(pruning_ratio=None, use_mode_isolator=True))


def test_pruning_flags_are_validated():
    parser = argparse.ArgumentParser()
    add_pruning_arguments(parser)
    assert parser.parse_args([]).pruning_ratio is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--vtp-method", "no-such-pruner"])

