"""The paper's Table 2 in miniature: Baseline vs NaivePrune (p = 0.9, r = 0) vs DualSpeed (p = 0.9, r = 0.1).

Each is trained on the embedded tiny world with the same recipe (2 CPU processes, the project's own launch scripts)
once per seed, then evaluated under normal inference (full tokens, no isolator) and pruned inference (p = 0.9
DivPrune, without and, where trained, with the mode isolator). Accuracy is that of the most likely answer choice;
answer NLL and visual information gain (NLL with shuffled images minus NLL with the true ones) come from the same
scoring. Intervals are 95% bootstrap intervals over seeds and questions. Prints Markdown tables and saves them with
all raw numbers as JSON.

    python -m playground.table2 [--out checkpoints/table2] [--world playground/tiny] [--seeds 42 43]
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

from playground.experiments import (BASELINE, DUALSPEED, DUALSPEED_AVGPOOL, DUALSPEED_FITPRUNE, DUALSPEED_LAYER_SKIP,
                                   MODES, NAIVE_PRUNE, Recipe, add_run_arguments, log, run_variant,
                                   world_and_out)

VARIANTS = (BASELINE, NAIVE_PRUNE, DUALSPEED)
EXTRA_VARIANTS = {"layer-skip": DUALSPEED_LAYER_SKIP, "avgpool": DUALSPEED_AVGPOOL, "fitprune": DUALSPEED_FITPRUNE}


@functools.lru_cache(maxsize=None)
def choice_rows(run: Path, mode: str) -> tuple[dict, ...]:
    """The per-question rows `model_vqa_choices` wrote for a run in one inference mode (read once)."""
    with (run / "eval" / f"choices-{mode}" / "choices.jsonl").open() as f:
        return tuple(json.loads(line) for line in f)


def question_values(runs: list[Path], mode: str, field: str, category: str | None = None) -> list[list[float]]:
    """Per-question values of one measure for each run (seed): "correct", "nll" or "gain" (shuffled - true NLL)."""
    values = []
    for run in runs:
        rows = [r for r in choice_rows(run, mode) if category is None or r["category"] == category]
        if field == "gain":
            values.append([r["shuffled"]["nll"] - r["true"]["nll"] for r in rows])
        else:
            values.append([float(r["true"][field]) for r in rows])
    return values


def estimate(runs: list[Path], mode: str, field: str, category: str | None = None) -> dict:
    """Mean over seeds of a per-question measure, with its 95% interval over seeds and questions."""
    from llava.eval.intervals import bootstrap_ci_runs

    values = question_values(runs, mode, field, category)
    mean = sum(sum(v) / len(v) for v in values) / len(values)
    low, high = bootstrap_ci_runs(values)
    return {"mean": mean, "ci95": [low, high], "seeds": len(values)}


def fmt(e: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if e is None:
        return "–"
    return f"{scale * e['mean']:.{digits}f} [{scale * e['ci95'][0]:.{digits}f}, {scale * e['ci95'][1]:.{digits}f}]"


def summarize(runs: dict[str, list[Path]], results: dict[str, list[dict]]) -> dict:
    """Every number the tables show, per method: estimates per inference mode, timings and speed-ups."""
    table = {}
    base_loop = sum(r["train_loop_s"] for r in results[BASELINE.name]) / len(results[BASELINE.name])
    base_wall = sum(r["train_s"] for r in results[BASELINE.name]) / len(results[BASELINE.name])
    for name, dirs in runs.items():
        modes = [m for m in MODES if m in results[name][0]["scores"]]
        loop = sum(r["train_loop_s"] for r in results[name]) / len(results[name])
        wall = sum(r["train_s"] for r in results[name]) / len(results[name])
        row = {"seeds": len(dirs), "train_loop_s": loop, "train_wall_s": wall,
               "speedup_loop": base_loop / loop, "speedup_wall": base_wall / wall,
               "generated_accuracy_normal": sum(r["scores"]["normal"]["overall"]["accuracy"]
                                                for r in results[name]) / len(results[name])}
        for mode in modes:
            row[mode] = {"accuracy": estimate(dirs, mode, "correct"), "nll": estimate(dirs, mode, "nll"),
                         "info_gain": estimate(dirs, mode, "gain")}
        categories = sorted(results[name][0]["scores"]["normal"]["choices"])
        row["per_category"] = {c: {mode: {"accuracy": estimate(dirs, mode, "correct", c),
                                          "info_gain": estimate(dirs, mode, "gain", c)} for mode in modes}
                               for c in categories if c != "overall"}
        table[name] = row
    return table


def markdown(table: dict, chance: float, n_questions: int) -> str:
    """Table 2 (accuracy per inference mode, NLL, information gain, speed-ups) and the per-type table."""
    base = table[BASELINE.name]["normal"]["accuracy"]["mean"]
    lines = ["| Method | seeds | normal acc. % | % of Baseline | pruned acc. % | pruned + isolator acc. % "
             "| answer NLL (normal) | info gain (normal, nats) | generated acc. % (normal) | training loop (s) "
             "| speed-up (loop) | speed-up (wall) |", "|" + "---|" * 12]
    for name, row in table.items():
        normal = row["normal"]
        lines.append("| " + " | ".join([
            name, str(row["seeds"]), fmt(normal["accuracy"]), f"{100 * normal['accuracy']['mean'] / base:.1f}",
            fmt(row.get("pruned", {}).get("accuracy")), fmt(row.get("pruned+isolator", {}).get("accuracy")),
            fmt(normal["nll"], 1, 3), fmt(normal["info_gain"], 1, 3), f"{100 * row['generated_accuracy_normal']:.1f}",
            f"{row['train_loop_s']:.0f}", f"{row['speedup_loop']:.2f}×", f"{row['speedup_wall']:.2f}×"]) + " |")
    lines += ["", f"Accuracy: most likely answer choice, {n_questions} held-out questions, chance {100 * chance:.1f}%; "
              "[95% bootstrap interval over seeds and questions]. Training loop: the Trainer's train_runtime of both "
              "stages; wall: the two stages' processes, start-up included.", ""]
    categories = list(next(iter(table.values()))["per_category"])
    lines.append("| Method | inference | " + " | ".join(f"{c} acc. % | {c} info gain" for c in categories) + " |")
    lines.append("|" + "---|" * (2 + 2 * len(categories)))
    for name, row in table.items():
        for mode in MODES:
            if mode not in row:
                continue
            cells = []
            for c in categories:
                e = row["per_category"][c][mode]
                cells += [fmt(e["accuracy"]), fmt(e["info_gain"], 1, 2)]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m playground.table2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "checkpoints/table2")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds of every row (default: --seed alone)")
    parser.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRA_VARIANTS),
                        help="extra rows (first seed only): layer-skip = fast SFT steps also skip half the decoder "
                             "layers; avgpool = average-pooling compressor in pretraining; fitprune = in-LLM pruning "
                             "in SFT by a recipe fitted after pretraining")
    args = parser.parse_args(argv)

    from playground.build_tiny_world import read_manifest

    world, out = world_and_out(args)
    seeds = args.seeds or [args.seed]
    start = time.perf_counter()
    runs: dict[str, list[Path]] = {}
    results: dict[str, list[dict]] = {}
    for k, seed in enumerate(seeds):
        variants = VARIANTS + (tuple(EXTRA_VARIANTS[name] for name in args.extra) if k == 0 else ())
        for variant in variants:
            result = run_variant(variant, world, out / f"seed-{seed}", Recipe(seed=seed), force=args.force)
            runs.setdefault(variant.name, []).append(out / f"seed-{seed}" / variant.name)
            results.setdefault(variant.name, []).append(result)
    table = summarize(runs, results)
    overall = results[BASELINE.name][0]["scores"]["normal"]["choices"]["overall"]
    text = markdown(table, overall["chance"], overall["questions"])
    summary = {"table_markdown": text, "table": table, "results": results, "seeds": seeds, "world": str(world),
               "world_params": read_manifest(world)["params"], "machine": platform.platform(),
               "total_s": round(time.perf_counter() - start, 1)}
    (out / "table2.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table2.md").write_text(text + "\n")
    print(text)
    log(f"saved {out / 'table2.md'} and {out / 'table2.json'} ({summary['total_s']:.0f}s)")
    return summary


if __name__ == "__main__":
    main()
