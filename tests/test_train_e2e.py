"""End-to-end training on the tiny world: the files each stage writes, resuming, and reloading them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.train.train import train

REPO = Path(__file__).resolve().parents[1]


def common_args(world: Path, out: Path, data: str, steps: int, save_steps: int) -> list:
    return [
        "--model_name_or_path", str(world / "models/tiny-llama"),
        "--vision_tower", str(world / "models/tiny-clip"),
        "--data_path", str(world / data), "--image_folder", str(world / "images"),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", str(out), "--max_steps", str(steps), "--save_strategy", "steps",
        "--save_steps", str(save_steps), "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--lazy_preprocess", "True", "--report_to", "none", "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--model_max_length", "512", "--seed", "0", "--data_seed", "0",
    ]


def pretrain_args(world, out, steps=4, save_steps=2):
    return common_args(world, out, "pretrain.json", steps, save_steps) + ["--version", "plain", "--tune_mm_mlp_adapter", "True"]


def lora_args(world, out, adapter, steps=4, save_steps=2):
    return common_args(world, out, "sft.json", steps, save_steps) + [
        "--version", "v1", "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0",
        "--pretrain_mm_mlp_adapter", str(adapter), "--mm_projector_lr", "1e-4", "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True",
    ]


def probe_batch(model):
    size = model.get_vision_tower().config.image_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8]])
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    return dict(input_ids=ids, images=images, attention_mask=torch.ones_like(ids))


def logits_of(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    trainer = train(argv=pretrain_args(tiny_world, out))
    return out, trainer.model


@pytest.fixture(scope="module")
def lora_run(tiny_world, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    trainer = train(argv=lora_args(tiny_world, out, pretrained[0] / "mm_projector.bin"))
    return out, trainer.model


def test_pretraining_writes_only_the_projector(pretrained):
    out, model = pretrained
    files = set(os.listdir(out))
    assert {"mm_projector.bin", "config.json"} <= files
    assert not any(f.endswith(".safetensors") for f in files)
    weights = torch.load(out / "mm_projector.bin", weights_only=True)
    assert set(weights) == {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
                            "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
    torch.testing.assert_close(weights["model.mm_projector.0.weight"], model.get_model().mm_projector[0].weight.detach())
    assert (out / "checkpoint-2" / "mm_projector.bin").is_file()


def test_projector_only_checkpoint_reloads_with_identical_logits(tiny_world, pretrained):
    out, model = pretrained
    _, loaded, processor, _ = load_pretrained_model(str(out), str(tiny_world / "models/tiny-llama"), "llava-pretrain", device="cpu")
    batch = probe_batch(loaded)
    torch.testing.assert_close(logits_of(loaded, batch), logits_of(model, batch))
    assert processor is not None


def test_lora_checkpoints_hold_non_lora_trainables(lora_run):
    out, _ = lora_run
    for d in (out / "checkpoint-2", out):
        files = set(os.listdir(d))
        assert {"non_lora_trainables.bin", "config.json", "adapter_config.json"} <= files, d
        assert any(f.startswith("adapter_model") for f in files)
    weights = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert "base_model.model.model.mm_projector.0.weight" in weights
    assert not any("lora_" in k for k in weights)


def test_lora_checkpoint_reloads_with_identical_logits(tiny_world, lora_run, tmp_path):
    out, model = lora_run
    base = str(tiny_world / "models/tiny-llama")
    _, loaded, _, _ = load_pretrained_model(str(out), base, "llava-lora", device="cpu")
    batch = probe_batch(loaded)
    expected = logits_of(model, batch)
    torch.testing.assert_close(logits_of(loaded, batch), expected, atol=1e-4, rtol=1e-4)
    # merged full checkpoint: plain from_pretrained path, no base needed
    merged = tmp_path / "llava-merged"
    subprocess.run([sys.executable, str(REPO / "scripts/merge_lora_weights.py"), "--model-path", str(out),
                    "--model-base", base, "--save-model-path", str(merged), "--dtype", "float32"], check=True, cwd=REPO)
    _, full, _, _ = load_pretrained_model(str(merged), None, "llava-merged", device="cpu")
    torch.testing.assert_close(logits_of(full, batch), logits_of(loaded, batch))


def test_lora_resume_restores_projector_and_reproduces_run(tiny_world, pretrained, lora_run, tmp_path):
    out, model = lora_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # copy only the mid-run checkpoint, then finish the run from it
    subprocess.run(["cp", "-r", str(out / "checkpoint-2"), str(resumed)], check=True)
    trainer = train(argv=lora_args(tiny_world, resumed, pretrained[0] / "mm_projector.bin")
                    + ["--resume_from_checkpoint", str(resumed / "checkpoint-2")])
    assert trainer.state.global_step == 4
    a = dict(model.named_parameters())
    b = dict(trainer.model.named_parameters())
    for name in ("base_model.model.model.mm_projector.0.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"):
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("problem,expected", [
    ("missing_image", r"data error: .*image file .*nowhere\.png of sample index 1 \(id 'bad-1'\) does not exist"),
    ("image_count", r"data error: .*sample index 1 \(id 'bad-1'\).*<image>"),
])
def test_bad_data_gives_one_clear_error(tiny_world, tmp_path, problem, expected):
    import json
    import re

    records = json.loads((tiny_world / "pretrain.json").read_text())[:2]
    records[1]["id"] = "bad-1"
    if problem == "missing_image":
        records[1]["image"] = "nowhere.png"
    else:
        records[1]["conversations"][0]["value"] = "<image>\n<image>\n"
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(records))
    args = pretrain_args(tiny_world, tmp_path / "out", steps=1, save_steps=10)
    args[args.index("--data_path") + 1] = str(data)
    args[args.index("--per_device_train_batch_size") + 1] = "2"
    proc = subprocess.run([sys.executable, str(REPO / "llava/train/train_mem.py")] + args, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(expected, last), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
