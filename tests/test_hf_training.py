"""DualSpeed training of a Hugging Face Llava with the Hugging Face Trainer: the example script on 2 processes
(DeepSpeed ZeRO-3, LoRA, fast and slow steps mixed), what it saves, and inference from what it saved."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/hf/finetune_lora_dualspeed.py"


@pytest.fixture(scope="session")
def tiny_hf_llava(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's LLaMA and CLIP as a Hugging Face Llava + processor (fresh projector)."""
    from playground.world_hf import build_tiny_hf_llava

    models = tiny_world / "models"
    return build_tiny_hf_llava(models / "tiny-llama", models / "tiny-clip", tmp_path_factory.mktemp("hf") / "llava")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args: list, processes: int = 2, timeout: int = 420) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
           str(_port()), str(SCRIPT)] + args
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def script_args(model: Path, world: Path, out: Path, steps: int = 6) -> list:
    return ["--model_name_or_path", str(model), "--data_path", str(world / "sft.json"), "--image_folder",
            str(world / "images"), "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size",
            "2", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--save_steps", "3", "--report_to", "none", "--lora_r", "8", "--lora_alpha", "16", "--seed", "0",
            "--dualspeed", "True", "--pruning_ratio", "0.75", "--slow_mode_ratio", "0.5"]


@pytest.fixture(scope="module")
def zero3_run(tiny_hf_llava, tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf_zero3") / "run"
    run_script(script_args(tiny_hf_llava, tiny_world, out) + ["--deepspeed", str(REPO / "scripts/zero3.json")])
    return out


def test_zero3_lora_with_mixed_modes_trains_and_saves(zero3_run):
    from safetensors import safe_open
    from safetensors.torch import load_file

    history = json.loads((zero3_run / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    assert any("dualspeed/fast_ce" in h for h in steps) and any("dualspeed/kl" in h for h in steps)
    assert all(h["dualspeed/kl"] >= 0 for h in steps if "dualspeed/kl" in h)
    for directory in (zero3_run, zero3_run / "checkpoint-3", zero3_run / "checkpoint-6"):
        assert (directory / "adapter_model.safetensors").is_file()
        with safe_open(str(directory / "mode_isolator.safetensors"), framework="pt") as f:
            assert list(f.keys()) == ["model.mode_isolator.weight"]
            assert json.loads(f.metadata()["dualspeed"])["pruning_ratio"] == 0.75
    final = load_file(str(zero3_run / "mode_isolator.safetensors"))["model.mode_isolator.weight"]
    middle = load_file(str(zero3_run / "checkpoint-3/mode_isolator.safetensors"))["model.mode_isolator.weight"]
    assert final.shape == (4, 128) and torch.isfinite(final).all()
    assert not torch.equal(final, middle)  # trained between the two checkpoints (fast steps use it)
    assert torch.equal(final, load_file(str(zero3_run / "checkpoint-6/mode_isolator.safetensors"))[
        "model.mode_isolator.weight"])
    adapter = load_file(str(zero3_run / "adapter_model.safetensors"))
    assert any("multi_modal_projector" in k for k in adapter)  # the projector is trained and saved with LoRA
    assert not any("mode_isolator" in k for k in adapter)
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(torch.isfinite(v).all() for v in lora_b) and any(v.abs().sum() > 0 for v in lora_b)


def test_zero2_run_starts_from_a_trained_isolator(zero3_run, tiny_hf_llava, tiny_world, tmp_path):
    """ZeRO-2 through the Trainer, fast and slow steps, the isolator loaded from an earlier run's safetensors file."""
    from safetensors.torch import load_file

    source = zero3_run / "mode_isolator.safetensors"
    proc = run_script(script_args(tiny_hf_llava, tiny_world, tmp_path / "run", steps=4)
                      + ["--deepspeed", str(REPO / "scripts/zero2.json"), "--mode_isolator_path", str(source)])
    assert f"mode isolator loaded from {source}" in proc.stdout
    assert "fresh isolator" not in proc.stderr
    history = json.loads((tmp_path / "run/trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    assert any("dualspeed/kl" in h for h in steps) and any("dualspeed/fast_ce" in h for h in steps)
    start = load_file(str(source))["model.mode_isolator.weight"]
    end = load_file(str(tmp_path / "run/mode_isolator.safetensors"))["model.mode_isolator.weight"]
    assert end.shape == start.shape and not torch.equal(end, start)  # loaded, then trained further
    assert (end - start).abs().max() < 0.1  # (a fresh isolator would be a new random draw, far from the file)


def test_saved_run_loads_for_plain_and_pruned_inference(zero3_run, tiny_hf_llava, tiny_world):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dualspeed_patch.hf import generate, llm_inputs, load_dualspeed
    from dualspeed_patch.inputs import FAST, PRUNED

    processor = AutoProcessor.from_pretrained(str(zero3_run))
    model = LlavaForConditionalGeneration.from_pretrained(str(tiny_hf_llava))
    model = PeftModel.from_pretrained(model, str(zero3_run)).eval()
    image = Image.open(next((tiny_world / "images/eval").glob("*.png"))).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What colour?"}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True,
                                           return_tensors="pt")
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert plain.shape[1] > inputs["input_ids"].shape[1]
    state = load_dualspeed(model, str(zero3_run))
    assert state.args.pruning_ratio == 0.75 and state.isolator.weight.shape == (4, 128)
    full = llm_inputs(model, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    fast = llm_inputs(model, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], mode=FAST)
    pruned = llm_inputs(model, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], mode=PRUNED)
    assert full["inputs_embeds"].shape[1] - fast["inputs_embeds"].shape[1] == 64 - 16 - 4
    assert fast["inputs_embeds"].shape[1] - pruned["inputs_embeds"].shape[1] == 4
    new = generate(model, inputs, mode=FAST, max_new_tokens=4, do_sample=False)
    assert new.shape == (1, 4)
    # Plain inference of the same model object is still Hugging Face's own (identical generation).
    with torch.no_grad():
        again = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(again, plain)


def test_full_fine_tuning_saves_a_plain_model_and_the_isolator_beside_it(tiny_hf_llava, tmp_path):
    """Without LoRA, the saved model.safetensors holds exactly Hugging Face's keys (no isolator)."""
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration, TrainingArguments

    from dualspeed_patch import DualSpeedArguments
    from dualspeed_patch.hf import DualSpeedTrainer

    model = LlavaForConditionalGeneration.from_pretrained(str(tiny_hf_llava))
    model.save_pretrained(str(tmp_path / "plain"))
    expected = set(load_file(str(tmp_path / "plain/model.safetensors")))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    ds = DualSpeedArguments(dualspeed=True, pruning_ratio=0.5, mode_isolator_len=2)
    with pytest.warns(UserWarning, match="fresh isolator"):
        trainer = DualSpeedTrainer(model=model, args=args, dualspeed_args=ds)
    assert trainer.dualspeed_callback is not None and "model.mode_isolator.weight" in dict(model.named_parameters())
    trainer.save_model(str(tmp_path / "saved"))
    trainer.dualspeed_callback.save_isolator(str(tmp_path / "saved"), args)
    saved = load_file(str(tmp_path / "saved/model.safetensors"))
    assert set(saved) == expected and not any("mode_isolator" in k for k in saved)
    assert load_file(str(tmp_path / "saved/mode_isolator.safetensors"))["model.mode_isolator.weight"].shape == (2, 128)


def test_next_batches_of_the_example_collate_train_with_mixed_modes(tiny_llm_path, tiny_clip_path, tmp_path):
    """LLaVA-NeXT through the Trainer: the example script's collate pads each image's views to the batch's most;
    images of different grids and a text-only sample in one batch, fast and slow steps."""
    import importlib.util
    import warnings

    from transformers import TrainingArguments

    from dualspeed_patch import DualSpeedArguments
    from dualspeed_patch.hf import DualSpeedTrainer
    from playground.world_hf import hf_llava_from_llava
    from test_hf_llava import next_processor
    from test_next import next_llava, noise_image

    spec = importlib.util.spec_from_file_location("hf_example", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    sys.modules["hf_example"] = example  # (its dataclasses look their module up)
    spec.loader.exec_module(example)
    llava = next_llava(tiny_llm_path, tiny_clip_path)
    llava.resize_token_embeddings(llava.config.vocab_size + 1, mean_resizing=False)
    hf = hf_llava_from_llava(llava, image_token_id=llava.config.vocab_size - 1)
    processor = next_processor(hf, tiny_llm_path)
    items = []
    for seed, size in enumerate([(100, 40), (120, 120), None, (48, 112)]):
        text = "USER: <image>\nWhat is it? ASSISTANT: a thing" if size else "USER: Say hi. ASSISTANT: hi there"
        enc = processor(images=[noise_image(size, seed)] if size else None, text=[text], return_tensors="pt")
        item = {"input_ids": enc["input_ids"][0], "labels": enc["input_ids"][0].clone()}
        item["labels"][:-3] = -100
        item.update({k: enc[k] for k in ("pixel_values", "image_sizes") if k in enc})
        items.append(item)
    batch = example.collate(items, processor.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (3, 5, 3, 64, 64) and batch["image_sizes"].tolist()[1] == [120, 120]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=4, logging_steps=1,
                             per_device_train_batch_size=4, learning_rate=1e-3, remove_unused_columns=False,
                             save_strategy="no")
    ds = DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=0.5, mode_isolator_len=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DualSpeedTrainer(model=hf, args=args, train_dataset=items, dualspeed_args=ds,
                                   data_collator=lambda rows: example.collate(rows, processor.tokenizer.pad_token_id))
        trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert any("dualspeed/kl" in h for h in logged) and any("dualspeed/fast_ce" in h for h in logged)


def test_tiny_chat_template_tokenizes_as_llava_preprocess(tiny_world):
    """The tiny HF processor's chat template + the example's messages give LLaVA's `preprocess` tokens and labels
    (each image's run of tokens collapsed to LLaVA's placeholder), over image, text-only and multi-turn samples."""
    import importlib.util

    from PIL import Image
    from transformers import AutoTokenizer

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.train.data import preprocess
    from playground.world_hf import IMAGE_TOKEN, tiny_processor

    spec = importlib.util.spec_from_file_location("hf_example", SCRIPT)
    example = importlib.util.module_from_spec(spec)
    sys.modules["hf_example"] = example
    spec.loader.exec_module(example)
    models = tiny_world / "models"
    processor = tiny_processor(models / "tiny-llama", models / "tiny-clip", 8)
    tokenizer = AutoTokenizer.from_pretrained(str(models / "tiny-llama"), use_fast=False)
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    records = json.loads((tiny_world / "sft.json").read_text())[:120]
    kinds = {("image" in r, len(r["conversations"]) > 2) for r in records}
    assert {(True, False), (False, False)} <= kinds
    for record in records:
        image = Image.new("RGB", (64, 64)) if record.get("image") else None
        llava = preprocess([record["conversations"]], tokenizer, "tiny_world", has_image=image is not None)
        encoded = processor.apply_chat_template(example.to_messages(record, image), tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True, return_tensors="pt")
        ids, supervised = encoded["input_ids"][0], encoded["assistant_masks"][0].bool()
        is_image = ids == image_id
        first = is_image & ~torch.cat([torch.tensor([False]), is_image[:-1]])
        keep = ~is_image | first
        collapsed = torch.where(first, IMAGE_TOKEN_INDEX, ids)[keep]
        labels = torch.where(supervised & ~is_image, ids, IGNORE_INDEX)[keep]
        assert collapsed.tolist() == llava["input_ids"][0].tolist(), record["id"]
        assert labels.tolist() == llava["labels"][0].tolist(), record["id"]
