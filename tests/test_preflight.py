"""Training scripts check paths and hardware once, before launching: one line per problem, exit status 2."""
import argparse
import os
import subprocess
import time
from pathlib import Path

from llava.train.preflight import problems

REPO = Path(__file__).resolve().parents[1]


def args_for(world: Path, **overrides) -> argparse.Namespace:
    values = dict(model=str(world / "models/tiny-llama"), vision_tower=str(world / "models/tiny-clip"),
                  data_path=str(world / "pretrain.json"), image_folder=str(world / "images"), pretrain_dir=None,
                  bf16="False", tf32="False")
    values.update(overrides)
    return argparse.Namespace(**values)


def test_a_complete_setup_has_no_problem(tiny_world):
    assert problems(args_for(tiny_world), gpu=False) == []


def test_each_problem_is_one_line_naming_the_variable(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    found = problems(args_for(tiny_world, data_path=str(tmp_path / "nope.json"), image_folder=str(tmp_path / "imgs"),
                              model="someorg/some-llm", vision_tower=str(tmp_path / "clip"),
                              pretrain_dir=str(tmp_path), bf16="True", tf32="True"), gpu=False)
    assert found == [
        f"DATA_PATH={tmp_path / 'nope.json'}: no such file",
        f"IMAGE_FOLDER={tmp_path / 'imgs'}: no such directory",
        f"PRETRAIN_DIR={tmp_path}: no mm_projector.bin there (run the pretraining stage first)",
        "MODEL=someorg/some-llm is not a local directory, not in the Hugging Face cache, and the hub cannot be "
        "reached: download it first or point the variable at a local copy",
        f"VISION_TOWER={tmp_path / 'clip'}: no such model directory",
        "BF16=True and TF32=True: needs a CUDA GPU and this machine has none; set BF16=False TF32=False",
    ]
    assert problems(args_for(tiny_world, bf16="True"), gpu=True) == []


def test_script_fails_in_seconds_before_launching(tiny_world, tmp_path):
    """The real script on this machine (no GPU) with BF16=True and a missing data file: two lines, no process
    launched, no model loaded."""
    env = dict(os.environ, MODEL=str(tiny_world / "models/tiny-llama"), VISION_TOWER=str(tiny_world / "models/tiny-clip"),
               DATA_PATH=str(tmp_path / "missing.json"), IMAGE_FOLDER=str(tiny_world / "images"),
               OUTPUT_DIR=str(tmp_path / "out"), NUM_GPUS="2", GLOBAL_BATCH="8", PER_DEVICE_BATCH="4", BF16="True",
               TF32="False", HF_HUB_OFFLINE="1")
    start = time.time()
    proc = subprocess.run(["bash", "scripts/v1_5/pretrain_dualspeed.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: DATA_PATH={tmp_path / 'missing.json'}: no such file",
                      "error: BF16=True: needs a CUDA GPU and this machine has none; set BF16=False"]
    assert "Traceback" not in proc.stderr and "Model args" not in proc.stdout + proc.stderr
    assert time.time() - start < 60
    assert not (tmp_path / "out").exists()
