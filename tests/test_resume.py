"""Resuming after a crash: checkpoints say when they were written completely, automatic resume takes the newest
complete one (2 DeepSpeed processes), and a seed reproduces a run from its first step."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava.train.resume import COMPLETE_MARKER, checkpoints, latest_complete_checkpoint, resume_target
from test_distributed import REPO, torchrun
from test_train_e2e import pretrain_args


def make_checkpoint(root: Path, step: int, complete: bool, state: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if state:
        (path / "trainer_state.json").write_text("{}")
    if complete:
        (path / COMPLETE_MARKER).write_text("")
    return path


def test_newest_complete_checkpoint_wins_and_partial_ones_are_named(tmp_path, caplog):
    make_checkpoint(tmp_path, 2, complete=True)
    ten = make_checkpoint(tmp_path, 10, complete=True)
    make_checkpoint(tmp_path, 12, complete=False)  # killed after trainer_state.json, before the marker
    make_checkpoint(tmp_path, 14, complete=False, state=False)  # killed early
    (tmp_path / "checkpoint-x").mkdir()  # not a step folder
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-12", "checkpoint-14"]
    with caplog.at_level("WARNING"):
        assert latest_complete_checkpoint(tmp_path) == ten
    assert "checkpoint-14" in caplog.text and "checkpoint-12" in caplog.text
    assert resume_target(tmp_path, None) == str(ten)
    assert resume_target(tmp_path, "True") == str(ten)
    assert resume_target(tmp_path, False) is None
    with pytest.raises(ValueError, match="checkpoint-14: the checkpoint was not written completely"):
        resume_target(tmp_path, str(tmp_path / "checkpoint-14"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        resume_target(tmp_path, str(tmp_path / "checkpoint-99"))


def test_checkpoints_without_markers_fall_back_to_trainer_state(tmp_path):
    """Checkpoints written before the marker existed: the newest holding trainer_state.json."""
    old = make_checkpoint(tmp_path, 4, complete=False)
    make_checkpoint(tmp_path, 6, complete=False, state=False)
    assert latest_complete_checkpoint(tmp_path) == old
    assert latest_complete_checkpoint(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resume_target(tmp_path / "empty", "True")


def test_two_process_run_resumes_from_the_last_complete_checkpoint(tiny_world, tmp_path):
    out = tmp_path / "run"
    deepspeed = ["--deepspeed", str(REPO / "scripts/zero2.json")]
    torchrun(pretrain_args(tiny_world, out, steps=4, save_steps=2) + deepspeed)
    assert all((out / f"checkpoint-{s}" / COMPLETE_MARKER).is_file() for s in (2, 4))
    # A kill during the save of step 6: some of its files, no trainer state, no marker.
    partial = out / "checkpoint-6"
    shutil.copytree(out / "checkpoint-4", partial)
    (partial / "trainer_state.json").unlink()
    (partial / COMPLETE_MARKER).unlink()
    proc = torchrun(pretrain_args(tiny_world, out, steps=8, save_steps=2) + deepspeed)
    log = proc.stdout + proc.stderr
    assert f"Resuming from {out / 'checkpoint-4'}" in log
    assert "checkpoint-6: it was not written completely" in log
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    steps_logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps_logged[:4] == [1, 2, 3, 4] and steps_logged[4:] == [5, 6, 7, 8]  # replayed nothing, skipped nothing
    assert all((out / f"checkpoint-{s}" / COMPLETE_MARKER).is_file() for s in (6, 8))  # step 6 rewritten whole


def first_losses(tiny_world, out: Path, seed: str) -> list:
    args = pretrain_args(tiny_world, out, steps=2, save_steps=100)
    args[args.index("--seed") + 1] = seed
    args += ["--dualspeed", "True", "--mode_isolator_len", "4"]  # a method's module (the isolator) is built too
    proc = subprocess.run([sys.executable, str(REPO / "dualspeed_patch/train_mem.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                            "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def test_same_seed_same_first_losses_other_seed_differs(tiny_world, tmp_path):
    """The projector and the isolator are created after the seed is set: two launches with one seed start from the
    same weights and give the same first losses; another seed gives other weights."""
    a = first_losses(tiny_world, tmp_path / "a", "0")
    b = first_losses(tiny_world, tmp_path / "b", "0")
    c = first_losses(tiny_world, tmp_path / "c", "1")
    assert len(a) == 2 and a == b
    assert c[0] != a[0]


class Pickled:
    """Not a tensor: weights-only loading refuses to rebuild it."""


def test_weights_only_rejection_names_the_file(tmp_path):
    import torch

    from llava.train.checkpoint import load_state_file

    path = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.0.weight": Pickled()}, path)
    import pickle

    with pytest.raises(pickle.UnpicklingError, match=f"{path}: refused by weights-only loading"):
        load_state_file(path)


def test_pretraining_checkpoint_holds_no_frozen_weights_and_resumes_bit_for_bit(tiny_world, tmp_path):
    """2-process ZeRO-2 DualSpeed pretraining (fast and slow steps: slow mode allowed in pretraining here). The
    DeepSpeed checkpoint keeps only trainable weights (projector, isolator); resuming from step 2 of a 4-step run
    reproduces steps 3-4 exactly: same losses, same modes, same final projector and isolator."""
    import torch

    run = ["--dualspeed", "True", "--mode_isolator_len", "4", "--slow_mode_in_pretraining", "True",
           "--slow_mode_ratio", "0.5", "--deepspeed", str(REPO / "scripts/zero2.json")]
    straight = tmp_path / "straight"
    torchrun(pretrain_args(tiny_world, straight, steps=4, save_steps=2) + run, entry="dualspeed_patch/train_mem.py")
    states = torch.load(straight / "checkpoint-2" / "global_step2" / "mp_rank_00_model_states.pt", weights_only=False)
    assert sorted(states["module"]) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                        "model.mm_projector.2.bias", "model.mm_projector.2.weight",
                                        "model.mode_isolator.weight"]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    proc = torchrun(pretrain_args(tiny_world, resumed, steps=4, save_steps=2) + run, entry="dualspeed_patch/train_mem.py")
    assert f"Resuming from {resumed / 'checkpoint-2'}" in proc.stdout + proc.stderr

    def tail(out):
        logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [{k: v for k, v in e.items() if k == "loss" or k.endswith(("_ce", "/kl"))} | {"step": e["step"]}
                for e in logs if "loss" in e and e["step"] > 2]

    assert tail(resumed) == tail(straight) and len(tail(straight)) == 2
    for name in ("mm_projector.bin", "mode_isolator.bin"):
        a, b = (torch.load(out / name, weights_only=True) for out in (straight, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
