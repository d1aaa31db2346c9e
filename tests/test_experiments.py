"""Table-2 / sweep plumbing on the tiny world: table layout from real-shaped results, series, subsets, log parsing."""
import json

import pytest

from playground.experiments import BASELINE, DUALSPEED, NAIVE_PRUNE, modes_for, subset, train_runtime
from playground.sweep import summarise, sweep_variants
from playground.table2 import markdown


def fake_result(acc_by_mode: dict, train_s: float) -> dict:
    scores = {m: {"overall": {"accuracy": a, "chance": 0.257, "total": 300}} for m, a in acc_by_mode.items()}
    return {"scores": scores, "train_s": train_s}


def test_table2_markdown_relative_numbers():
    results = {
        "Baseline": fake_result({"normal": 0.80, "pruned": 0.60}, 400.0),
        "NaivePrune": fake_result({"normal": 0.72, "pruned": 0.76}, 160.0),
        "DualSpeed": fake_result({"normal": 0.79, "pruned": 0.70, "pruned+isolator": 0.75}, 200.0),
    }
    lines = markdown(results).splitlines()
    naive = next(l for l in lines if l.startswith("| NaivePrune"))
    cells = [c.strip() for c in naive.strip("|").split("|")]
    # 0.72 / 0.80 = 90.0 %, 0.76 / 0.80 = 95.0 %, no isolator mode, 400 / 160 = 2.50x
    assert cells == ["NaivePrune", "72.0", "90.0", "76.0", "95.0", "–", "–", "160", "2.50×"]
    dual = [c.strip() for c in next(l for l in lines if l.startswith("| DualSpeed")).strip("|").split("|")]
    assert dual[1:3] == ["79.0", "98.8"] and dual[5:7] == ["75.0", "93.8"] and dual[-1] == "2.00×"
    assert "chance level 25.7%" in lines[-1]


def test_isolator_mode_only_for_runs_trained_with_one():
    wanted = ("normal", "pruned", "pruned+isolator")
    assert modes_for(BASELINE, wanted) == ["normal", "pruned"]
    assert modes_for(NAIVE_PRUNE, wanted) == ["normal", "pruned"]  # NaivePrune: r = 0 and no isolator
    assert modes_for(DUALSPEED, wanted) == list(wanted)
    assert (NAIVE_PRUNE.pruning_ratio, NAIVE_PRUNE.slow_ratio) == (0.9, 0.0)
    assert (DUALSPEED.pruning_ratio, DUALSPEED.slow_ratio) == (0.9, 0.1)


def test_sweep_series_share_the_common_point():
    series = sweep_variants()
    by_p, by_r = series["pruning ratio (r = 0.1)"], series["slow-mode ratio (p = 0.9)"]
    assert [v.pruning_ratio for v in by_p] == [0.5, 0.7, 0.9, 0.95]
    assert [v.slow_ratio for v in by_r] == [0.0, 0.05, 0.1, 0.2, 0.5]
    names = {v.name for v in by_p} | {v.name for v in by_r}
    assert len(names) == 8  # p=0.9, r=0.1 is in both series and trained once
    point = summarise(fake_result({"normal": 0.6}, 100.0), fake_result({"normal": 0.8}, 250.0))
    assert point == {"accuracy": 0.6, "pct_of_baseline": pytest.approx(0.75), "speedup": 2.5, "train_s": 100.0}


def test_subset_and_runtime_parsing(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": i} for i in range(5)]))
    assert subset(data, None, tmp_path / "s.json") == data
    assert json.loads(subset(data, 3, tmp_path / "s.json").read_text()) == [{"id": 0}, {"id": 1}, {"id": 2}]
    with pytest.raises(ValueError, match="fewer than the 9"):
        subset(data, 9, tmp_path / "s.json")
    log = tmp_path / "sft.log"
    log.write_text("step\n{'train_runtime': '35.79', 'train_loss': '0.95'}\n")
    assert train_runtime(log) == 35.79
    log.write_text("no summary")
    assert train_runtime(log) is None
