"""End to end, the model learns from the image: the real DualSpeed scripts (2 CPU processes) train briefly on the
tiny world, and the held-out answer NLL with the true images falls below the NLL with shuffled images.

A bug that silently stops learning (a frozen projector, visual tokens dropped, labels all ignored, an isolator
spliced in the wrong place) leaves the two NLLs equal and fails this test.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list, env: dict, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def test_dualspeed_scripts_learn_to_use_the_image(tiny_world, tmp_path):
    model = tiny_world / "models" / "tiny-llama"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               MODEL=str(model), VISION_TOWER=str(tiny_world / "models" / "tiny-clip"),
               IMAGE_FOLDER=str(tiny_world / "images"), NUM_GPUS="2", BF16="False", TF32="False",
               GRADIENT_CHECKPOINTING="False", NUM_WORKERS="0", REPORT_TO="none")
    env.pop("LAUNCHER", None)
    common = ["--save_strategy", "no", "--logging_steps", "10", "--seed", "0", "--data_seed", "0"]
    run(["bash", "scripts/v1_5/pretrain_dualspeed.sh", "--max_steps", "40", "--learning_rate", "2e-3", *common],
        dict(env, DATA_PATH=str(tiny_world / "pretrain.json"), OUTPUT_DIR=str(tmp_path / "pretrain"),
             GLOBAL_BATCH="32", PER_DEVICE_BATCH="16", MASTER_PORT=str(free_port())))
    run(["bash", "scripts/v1_5/finetune_lora_dualspeed.sh", "--max_steps", "40", "--version", "tiny_world",
         "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", "2e-3", "--mm_projector_lr", "2e-3", *common],
        dict(env, ZERO_CONFIG="./scripts/zero2.json", DATA_PATH=str(tiny_world / "sft.json"),
             PRETRAIN_DIR=str(tmp_path / "pretrain"), OUTPUT_DIR=str(tmp_path / "llava-lora"),
             GLOBAL_BATCH="16", PER_DEVICE_BATCH="8", MASTER_PORT=str(free_port())))
    questions = (tiny_world / "eval" / "questions.jsonl").read_text().splitlines()[:150]
    (tmp_path / "questions.jsonl").write_text("\n".join(questions) + "\n")
    run([sys.executable, "-m", "llava.eval.model_vqa_choices", "--model-path", str(tmp_path / "llava-lora"),
         "--model-base", str(model), "--image-folder", str(tiny_world / "images"),
         "--question-file", str(tmp_path / "questions.jsonl"),
         "--key-file", str(tiny_world / "eval" / "answers_key.jsonl"), "--conv-mode", "tiny_world",
         "--shuffled-images", "--out-dir", str(tmp_path / "eval"), "--device", "cpu"], env)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["per_category"]
    overall = summary["overall"]
    assert overall["questions"] == 150
    # the image lowers the answer NLL, with a 95% interval that excludes no gain ...
    assert overall["info_gain"]["ci95"][0] > 0.2, overall
    assert overall["nll_true"]["mean"] < overall["nll_shuffled"]["mean"] - 0.2
    # ... and answers follow it: above chance with the true images, near chance with another question's image
    assert overall["accuracy_true"]["mean"] > overall["chance"] + 0.2, overall
    assert abs(overall["accuracy_shuffled"]["mean"] - overall["chance"]) < 0.12, overall
