"""The paper's Table 2 in miniature: Baseline vs NaivePrune (p = 0.9, r = 0) vs DualSpeed (p = 0.9, r = 0.1).

Each is trained on the embedded tiny world with the same recipe and seed (2 CPU processes, the project's own launch
scripts), then evaluated under normal inference (full tokens, no isolator) and pruned inference (p = 0.9 DivPrune,
without and, where trained, with the mode isolator). Prints a Markdown table — accuracy, % of Baseline, training
wall time and speed-up — and saves it with all raw numbers as JSON.

    python -m playground.table2 [--out checkpoints/table2] [--world playground/tiny]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

from playground.experiments import (BASELINE, DUALSPEED, DUALSPEED_AVGPOOL, DUALSPEED_FITPRUNE, DUALSPEED_LAYER_SKIP,
                                   MODES, NAIVE_PRUNE, Recipe, add_run_arguments, log, run_variant,
                                   world_and_out)

VARIANTS = (BASELINE, NAIVE_PRUNE, DUALSPEED)
EXTRA_VARIANTS = {"layer-skip": DUALSPEED_LAYER_SKIP, "avgpool": DUALSPEED_AVGPOOL, "fitprune": DUALSPEED_FITPRUNE}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown(results: dict[str, dict]) -> str:
    """Table 2 as Markdown: one row per method; accuracy per inference mode and relative to Baseline's normal."""
    base = results[BASELINE.name]
    base_acc = base["scores"]["normal"]["overall"]["accuracy"]
    base_time = base["train_s"]
    chance = base["scores"]["normal"]["overall"]["chance"]
    head = ("| Method | normal acc. | % of Baseline | pruned acc. | % of Baseline | pruned + isolator acc. "
            "| % of Baseline | training wall time (s) | speed-up |")
    lines = [head, "|" + "---|" * 9]
    for name, result in results.items():
        cells = [name]
        for mode in MODES:
            s = result["scores"].get(mode)
            acc = s["overall"]["accuracy"] if s else None
            rel = None if acc is None or not base_acc else acc / base_acc
            cells += [pct(acc), pct(rel)]
        cells += [f"{result['train_s']:.0f}", f"{base_time / result['train_s']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Accuracy in %, {base['scores']['normal']['overall']['total']} questions; chance level "
                 f"{pct(chance)}%. Per-category accuracy is in the JSON file.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m playground.table2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "checkpoints/table2")
    parser.add_argument("--extra", nargs="*", default=[], choices=sorted(EXTRA_VARIANTS),
                        help="extra rows (issue 8): layer-skip = fast SFT steps also skip half the decoder layers; avgpool = "
                             "average-pooling compressor in pretraining; fitprune = in-LLM pruning in SFT by a "
                             "recipe fitted after pretraining")
    args = parser.parse_args(argv)

    from playground.build_tiny_world import read_manifest

    world, out = world_and_out(args)
    recipe = Recipe(seed=args.seed)
    start = time.perf_counter()
    results = {}
    for variant in VARIANTS + tuple(EXTRA_VARIANTS[name] for name in args.extra):
        results[variant.name] = run_variant(variant, world, out, recipe, force=args.force)
    table = markdown(results)
    summary = {"table_markdown": table, "results": results, "world": str(world),
               "world_params": read_manifest(world)["params"], "machine": platform.platform(),
               "total_s": round(time.perf_counter() - start, 1)}
    (out / "table2.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table2.md").write_text(table + "\n")
    print(table)
    log(f"saved {out / 'table2.md'} and {out / 'table2.json'} ({summary['total_s']:.0f}s)")
    return summary


if __name__ == "__main__":
    main()
