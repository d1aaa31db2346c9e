"""Assertions on the two runs of scripts/check_upstream_flow.sh (argument: its OUT directory); prints PASS lines."""
import json
import sys
from pathlib import Path

import torch

KEY = "model.mode_isolator.weight"


def isolator(path: Path) -> torch.Tensor:
    weights = torch.load(path, map_location="cpu", weights_only=True)
    assert set(weights) == {KEY}, f"{path}: keys {sorted(weights)}"
    assert weights[KEY].shape == (4, 128), f"{path}: shape {tuple(weights[KEY].shape)} (not gathered whole?)"
    return weights[KEY].float()


def logged(run: Path) -> set:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return {key for entry in history for key in entry if key.startswith("dualspeed/")}


def main(out: Path) -> None:
    pre, lora = out / "pretrain", out / "lora"
    for run, checkpoints in ((pre, ["checkpoint-2"]), (lora, ["checkpoint-2", "checkpoint-4"])):
        for where in [run] + [run / c for c in checkpoints]:
            isolator(where / "mode_isolator.bin")
        print(f"PASS  {run.name}: mode_isolator.bin [4, 128] in output_dir and {', '.join(checkpoints)}")
    assert (pre / "mm_projector.bin").is_file() and (lora / "non_lora_trainables.bin").is_file()
    log = (lora.parent / "lora.log").read_text()
    source = pre / "mode_isolator.bin"
    assert f"DualSpeed: mode isolator loaded from {source}" in log, "the LoRA stage did not load the isolator"
    print(f"PASS  lora: loaded the isolator from {source}")
    start, end = isolator(source), isolator(lora / "mode_isolator.bin")
    assert not torch.equal(start, end), "the isolator did not change during LoRA training"
    non_lora = torch.load(lora / "non_lora_trainables.bin", map_location="cpu", weights_only=True)
    torch.testing.assert_close(non_lora[f"base_model.model.{KEY}"].float(), end)
    print("PASS  lora: isolator trained; mode_isolator.bin == its entry in upstream's non_lora_trainables.bin")
    assert {"dualspeed/fast_ce", "dualspeed/slow_share"} <= logged(pre), logged(pre)
    want = {"dualspeed/fast_ce", "dualspeed/slow_ce", "dualspeed/kl", "dualspeed/teacher_ce", "dualspeed/slow_share"}
    assert want <= logged(lora), logged(lora)
    assert "'dualspeed/fast_ce'" in log, "metrics not printed by the Trainer's progress callback"
    print(f"PASS  metrics in the Trainer's log history and printed logs: {sorted(logged(lora))}")
    print("PASS: upstream flow")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
