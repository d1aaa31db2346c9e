"""Bad inputs end a training launch in seconds, before the model loads, with one line naming the file or flag."""
import json
import subprocess
import sys
import time

import pytest

from test_train_e2e import REPO, pretrain_args


def launch(args, entry="dualspeed_patch/train_mem.py"):
    start = time.time()
    proc = subprocess.run([sys.executable, str(REPO / entry)] + args, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    return proc, time.time() - start


@pytest.mark.parametrize("case", ["missing_data", "empty_data", "missing_image", "isolator_path", "recipe_path",
                                  "bad_ratio"])
def test_bad_input_fails_before_the_model_loads(tiny_world, tmp_path, case):
    args = pretrain_args(tiny_world, tmp_path / "out", steps=1, save_steps=10)
    data = args.index("--data_path") + 1
    if case == "missing_data":
        args[data] = str(tmp_path / "nope.json")
        expected = f"data error: data file {tmp_path / 'nope.json'} does not exist"
    elif case == "empty_data":
        (tmp_path / "empty.json").write_text("[]")
        args[data] = str(tmp_path / "empty.json")
        expected = f"data error: data file {tmp_path / 'empty.json'} holds no samples"
    elif case == "missing_image":
        records = json.loads((tiny_world / "pretrain.json").read_text())[:8]
        for index in (1, 3, 4, 6):
            records[index]["image"] = f"gone{index}.png"
        (tmp_path / "d.json").write_text(json.dumps(records))
        args[data] = str(tmp_path / "d.json")
        shown = "; ".join(f"image file {tiny_world / 'images' / f'gone{i}.png'} of sample index {i} "
                          f"(id {records[i]['id']!r}) does not exist" for i in (1, 3, 4))
        expected = f"data error: data file {tmp_path / 'd.json'}: 4 of 8 samples' images are missing: {shown}; " \
                   "and 1 more"
    elif case == "isolator_path":
        args += ["--dualspeed", "True", "--mode_isolator_path", str(tmp_path / "nope.bin")]
        expected = f"error: --mode_isolator_path {tmp_path / 'nope.bin'}: no such file"
    elif case == "recipe_path":
        args += ["--dualspeed", "True", "--fitprune_recipe", str(tmp_path / "recipe.json")]
        expected = f"error: --fitprune_recipe {tmp_path / 'recipe.json'}: no such file"
    else:
        args += ["--dualspeed", "True", "--pruning_ratio", "1.5"]
        expected = "error: DualSpeedArguments.pruning_ratio must be in [0, 1), got 1.5"
    proc, seconds = launch(args)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower() and "Warning" not in line]
    assert lines == [expected], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Trainable parameters" not in proc.stdout + proc.stderr
    assert seconds < 60
