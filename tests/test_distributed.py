"""Two-process DeepSpeed runs on CPU (gloo), launched with torchrun exactly as the scripts launch them."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_e2e import lora_args, pretrain_args

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, timeout: int = 420, entry: str = "llava/train/train_mem.py") -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / entry)] + args
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def zero2_pretrain(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_pretrain")
    torchrun(pretrain_args(tiny_world, out, steps=3, save_steps=2) + ["--deepspeed", str(REPO / "scripts/zero2.json")])
    return out


def test_zero2_pretraining_two_processes(zero2_pretrain):
    weights = torch.load(zero2_pretrain / "mm_projector.bin", weights_only=True)
    assert set(weights) == {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
                            "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
    assert (zero2_pretrain / "checkpoint-2" / "mm_projector.bin").is_file()


def test_zero3_lora_two_processes(tiny_world, zero2_pretrain, tmp_path):
    out = tmp_path / "ds_lora"
    proc = torchrun(lora_args(tiny_world, out, zero2_pretrain / "mm_projector.bin", steps=3, save_steps=2)
                    + ["--deepspeed", str(REPO / "scripts/zero3.json")])
    assert "'train_runtime'" in proc.stdout or "train_runtime" in proc.stdout + proc.stderr
    for d in (out, out / "checkpoint-2"):
        assert (d / "non_lora_trainables.bin").is_file() and (d / "adapter_config.json").is_file(), d
    weights = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    w = weights["base_model.model.model.mm_projector.0.weight"]
    assert w.ndim == 2 and w.numel() > 0  # gathered whole from the ZeRO-3 partitions


DUALSPEED = ["--dualspeed", "True", "--pruning_ratio", "0.9", "--mode_isolator_len", "4", "--vtp_method", "divprune"]


@pytest.fixture(scope="module")
def dualspeed_pretrain(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_dualspeed_pretrain")
    torchrun(pretrain_args(tiny_world, out, steps=3, save_steps=2) + DUALSPEED
             + ["--deepspeed", str(REPO / "scripts/zero2.json")], entry="dualspeed_patch/train_mem.py")
    return out


def test_dualspeed_zero2_pretraining_writes_projector_and_isolator(dualspeed_pretrain, tiny_world):
    for d in (dualspeed_pretrain, dualspeed_pretrain / "checkpoint-2"):
        assert set(torch.load(d / "mm_projector.bin", weights_only=True)) == {
            "model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
        iso = torch.load(d / "mode_isolator.bin", weights_only=True)
        assert list(iso) == ["model.mode_isolator.weight"] and iso["model.mode_isolator.weight"].shape == (4, 128)
    config = json.loads((dualspeed_pretrain / "config.json").read_text())
    assert config["dualspeed"] is True and config["dualspeed_pruning_ratio"] == 0.9


def test_dualspeed_zero3_lora_with_slow_steps(tiny_world, dualspeed_pretrain, tmp_path):
    out = tmp_path / "ds_dualspeed_lora"
    proc = torchrun(lora_args(tiny_world, out, dualspeed_pretrain / "mm_projector.bin", steps=4, save_steps=2)
                    + DUALSPEED + ["--slow_mode_ratio", "0.5", "--deepspeed", str(REPO / "scripts/zero3.json")],
                    entry="dualspeed_patch/train_mem.py")
    log = proc.stdout + proc.stderr
    assert f"mode isolator loaded from {dualspeed_pretrain / 'mode_isolator.bin'}" in log
    assert "dualspeed/slow_ce" in log and "dualspeed/fast_ce" in log  # both modes ran (seeded schedule, r = 0.5)
    for d in (out, out / "checkpoint-2"):
        assert (d / "mode_isolator.bin").is_file() and (d / "non_lora_trainables.bin").is_file(), d
    weights = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert weights["base_model.model.model.mode_isolator.weight"].shape == (4, 128)


def test_shutdown_process_group_leaves_no_group_on_either_rank(tmp_path):
    script = tmp_path / "shutdown.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "from llava.train.distributed import shutdown_process_group\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "shutdown_process_group()\n"
        "shutdown_process_group()  # a second call is a no-op\n"
        "import pathlib, sys\n"
        "pathlib.Path(sys.argv[1], f'rank{rank}.txt').write_text(str(dist.is_initialized()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["False", "False"]  # one file per rank


def test_dualspeed_loss_terms_are_per_token_means_on_two_processes(tiny_world, dualspeed_pretrain, tmp_path):
    """fast_ce, slow_ce, teacher_ce and kl are logged as per-answer-token means whatever the Trainer divides its loss
    by (2 processes x 2 accumulated micro-batches here). teacher_ce is the cross-entropy of the same fast-mode input
    fast_ce measures, so the two agree in scale; a fast_ce divided by the global token count would be ~4x smaller."""
    out = tmp_path / "scales"
    args = lora_args(tiny_world, out, dualspeed_pretrain / "mm_projector.bin", steps=6, save_steps=100)
    args[args.index("--per_device_train_batch_size") + 1] = "2"
    torchrun(args + DUALSPEED + ["--slow_mode_ratio", "0.5", "--gradient_accumulation_steps", "2",
                                 "--deepspeed", str(REPO / "scripts/zero2.json")], entry="dualspeed_patch/train_mem.py")
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]

    def mean(key):
        values = [entry[key] for entry in logs if key in entry]
        assert values, f"{key} never logged"
        return sum(values) / len(values)

    fast, teacher, slow, loss = mean("dualspeed/fast_ce"), mean("dualspeed/teacher_ce"), mean("dualspeed/slow_ce"), mean("loss")
    assert 0.6 < fast / teacher < 1.6, (fast, teacher)
    assert 0.6 < fast / loss < 1.6 and 0.4 < slow / fast < 2.5, (fast, slow, loss)
    assert mean("dualspeed/kl") >= 0.0
