"""Table-2 / sweep plumbing on the tiny world: table layout from real-shaped results, series, subsets, log parsing."""
import json

import pytest

from playground.experiments import BASELINE, DUALSPEED, NAIVE_PRUNE, modes_for, same_run, subset, train_runtime
from playground.sweep import summarise, sweep_variants
from playground.table2 import markdown, summarize


def fake_result(acc_by_mode: dict, train_s: float, loop_s: float | None = None) -> dict:
    scores = {m: {"overall": {"accuracy": a, "chance": 0.25, "total": 4},
                  "choices": {"color": {}, "overall": {"chance": 0.25, "questions": 4,
                                                       "accuracy_true": {"mean": a}}}}
              for m, a in acc_by_mode.items()}
    return {"scores": scores, "train_s": train_s, "train_loop_s": loop_s or train_s / 2}


def write_choices(run, mode: str, correct: list, nll: list, shuffled_nll: list) -> None:
    folder = run / "eval" / f"choices-{mode}"
    folder.mkdir(parents=True)
    rows = [{"question_id": i, "category": "color", "true": {"correct": c, "nll": n}, "shuffled": {"nll": s}}
            for i, (c, n, s) in enumerate(zip(correct, nll, shuffled_nll))]
    (folder / "choices.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table2_numbers_from_per_question_files(tmp_path):
    runs, results = {}, {}
    specs = {"Baseline": ({"normal": [1, 1, 1, 0], "pruned": [1, 0, 0, 0]}, 400.0, 200.0),
             "NaivePrune": ({"normal": [1, 0, 0, 0], "pruned": [1, 1, 0, 0]}, 160.0, 50.0),
             "DualSpeed": ({"normal": [1, 1, 1, 0], "pruned": [1, 1, 0, 0], "pruned+isolator": [1, 1, 1, 0]},
                           200.0, 80.0)}
    for name, (by_mode, wall, loop) in specs.items():
        run = tmp_path / "seed-1" / name
        for mode, correct in by_mode.items():
            write_choices(run, mode, correct, [0.5, 1.0, 1.5, 3.0], [2.0, 2.0, 2.0, 2.0])
        runs[name] = [run]
        results[name] = [fake_result({m: sum(c) / 4 for m, c in by_mode.items()}, wall, loop)]
    table = summarize(runs, results)
    assert table["NaivePrune"]["normal"]["accuracy"]["mean"] == 0.25
    assert table["NaivePrune"]["pruned"]["accuracy"]["mean"] == 0.5
    assert table["DualSpeed"]["normal"]["nll"]["mean"] == 1.5
    assert table["DualSpeed"]["normal"]["info_gain"]["mean"] == 0.5  # 2.0 - 1.5
    assert (table["NaivePrune"]["speedup_loop"], table["NaivePrune"]["speedup_wall"]) == (4.0, 2.5)
    assert "pruned+isolator" not in table["NaivePrune"]
    lines = markdown(table, 0.25, 4).splitlines()
    naive = [c.strip() for c in next(l for l in lines if l.startswith("| NaivePrune")).strip("|").split("|")]
    # 25 % normal = 33.3 % of Baseline's 75 %; pruned 50 %; no isolator mode; 200 / 50 loop, 400 / 160 wall
    assert naive[:3] == ["NaivePrune", "1", "25.0 [0.0, 75.0]"] and naive[3] == "33.3"
    assert naive[4].startswith("50.0 [") and naive[5] == "–" and naive[-3:] == ["50", "4.00×", "2.50×"]
    assert any(l.startswith("| DualSpeed | pruned+isolator | 75.0 [") for l in lines)
    assert "chance 25.0%" in "\n".join(lines)


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
    assert len(names) == 8  # p=0.9, r=0.1 is in both series and trained once: Table 2's DualSpeed run
    assert by_p[2] is by_r[2] is DUALSPEED
    settings = {"variant": {"name": "DualSpeed"}, "recipe": {"seed": 42}, "world": "w", "modes": ["normal", "pruned"]}
    assert same_run(settings, {**settings, "modes": ["normal"]})
    assert not same_run({**settings, "modes": ["normal"]}, settings)
    assert not same_run(settings, {**settings, "recipe": {"seed": 43}, "modes": ["normal"]})
    point = summarise(fake_result({"normal": 0.6}, 100.0), fake_result({"normal": 0.8}, 250.0))
    assert point == {"accuracy": 0.6, "pct_of_baseline": pytest.approx(0.75), "speedup": 2.5, "train_s": 100.0,
                     "train_loop_s": 50.0}


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
