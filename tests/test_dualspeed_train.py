"""Short single-process DualSpeed LoRA runs on the tiny world, one per pruning plug-in, both modes exercised."""
import pytest

import dualspeed_patch.patch as patch
from dualspeed_patch.train import train
from test_train_e2e import lora_args


@pytest.fixture
def unpatch_after():
    yield
    patch.remove()


@pytest.mark.parametrize("method", ["divprune", "cdpruner", "fastervlm", "random", "uniform"])
def test_lora_run_with_each_pruner(tiny_world, tmp_path, method, unpatch_after):
    args = lora_args(tiny_world, tmp_path / method, adapter="", steps=2, save_steps=100)  # seed 0: step 0 slow, step 1 fast
    i = args.index("--pretrain_mm_mlp_adapter")
    del args[i : i + 2]
    args += ["--dualspeed", "True", "--vtp_method", method, "--slow_mode_ratio", "0.5", "--per_device_train_batch_size", "2"]
    trainer = train(argv=args)
    history = {k for entry in trainer.state.log_history for k in entry}
    assert {"dualspeed/fast_ce", "dualspeed/slow_ce", "dualspeed/kl"} <= history
    assert all(v == v for entry in trainer.state.log_history for k, v in entry.items() if k.startswith("dualspeed/"))
    assert (tmp_path / method / "mode_isolator.bin").is_file()
