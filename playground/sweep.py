"""The paper's Fig. 5 in miniature: accuracy vs training speed-up over pruning ratios and slow-mode ratios.

Two DualSpeed series on the tiny world, against one Baseline trained with the same recipe and seed:
pruning ratio p in {0.5, 0.7, 0.9, 0.95} at r = 0.1, and slow-mode ratio r in {0, 0.05, 0.1, 0.2, 0.5} at p = 0.9
(the shared point p = 0.9, r = 0.1 is trained once). Every run is evaluated under normal inference. Saves
`sweep.json` and, when matplotlib is installed, `sweep.png` (accuracy vs speed-up, one line per series).

    python -m playground.sweep [--out checkpoints/sweep] [--max-sft-samples 1000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from playground.experiments import (BASELINE, DUALSPEED, Recipe, Variant, add_run_arguments, choice_accuracy, log,
                                   run_variant, world_and_out)

PRUNING_RATIOS = (0.5, 0.7, 0.9, 0.95)
SLOW_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.5)


def sweep_variants(pruning_ratios=PRUNING_RATIOS, slow_ratios=SLOW_RATIOS) -> dict[str, list[Variant]]:
    """The two series; a (p, r) point that appears in both is the same Variant (trained once)."""
    def point(p: float, r: float) -> Variant:
        if (p, r) == (DUALSPEED.pruning_ratio, DUALSPEED.slow_ratio):
            return DUALSPEED  # the paper's point: Table 2's run serves when the sweep shares its output folder
        return Variant(f"DualSpeed-p{p:g}-r{r:g}", dualspeed=True, pruning_ratio=p, slow_ratio=r)

    return {"pruning ratio (r = 0.1)": [point(p, 0.1) for p in pruning_ratios],
            "slow-mode ratio (p = 0.9)": [point(0.9, r) for r in slow_ratios]}


def summarise(result: dict, baseline: dict) -> dict:
    """One plotted point: accuracy (most likely answer choice, normal inference), % of Baseline and the speed-up
    of the training loops over the Baseline's."""
    acc, base = choice_accuracy(result["scores"]), choice_accuracy(baseline["scores"])
    return {"accuracy": acc, "pct_of_baseline": acc / base if base else None,
            "speedup": baseline["train_loop_s"] / result["train_loop_s"], "train_s": result["train_s"],
            "train_loop_s": result["train_loop_s"]}


def plot(points: dict[str, list[dict]], baseline_acc: float, path: Path) -> bool:
    """Accuracy vs speed-up, one line per series; False (and a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib): skipping the plot, the JSON has every number")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for series, rows in points.items():
        xs = [r["speedup"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        ax.plot(xs, ys, marker="o", label=series)
        for row, x, y in zip(rows, xs, ys):
            ax.annotate(row["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(100 * baseline_acc, color="gray", linestyle="--", label="Baseline")
    ax.set_xlabel("training speed-up over Baseline (training loops)")
    ax.set_ylabel("accuracy, normal inference (%)")
    ax.set_title("DualSpeed on the tiny world (Fig. 5 in miniature)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m playground.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, "checkpoints/sweep")
    parser.add_argument("--max-pretrain-samples", type=int, default=None, help="train on the first N pretraining records")
    parser.add_argument("--max-sft-samples", type=int, default=None, help="train on the first N SFT records")
    parser.add_argument("--pruning-ratios", type=float, nargs="+", default=list(PRUNING_RATIOS))
    parser.add_argument("--slow-ratios", type=float, nargs="+", default=list(SLOW_RATIOS))
    args = parser.parse_args(argv)

    world, out = world_and_out(args)
    recipe = Recipe(seed=args.seed, max_pretrain_samples=args.max_pretrain_samples,
                    max_sft_samples=args.max_sft_samples)
    start = time.perf_counter()
    baseline = run_variant(BASELINE, world, out, recipe, modes=("normal",), force=args.force)
    series = sweep_variants(tuple(args.pruning_ratios), tuple(args.slow_ratios))
    done: dict[str, dict] = {}
    points: dict[str, list[dict]] = {}
    for name, variants in series.items():
        points[name] = []
        for variant in variants:
            if variant.name not in done:
                done[variant.name] = run_variant(variant, world, out, recipe, modes=("normal",), force=args.force)
            row = summarise(done[variant.name], baseline)
            row.update(label=f"p={variant.pruning_ratio:g} r={variant.slow_ratio:g}",
                       pruning_ratio=variant.pruning_ratio, slow_ratio=variant.slow_ratio)
            points[name].append(row)
    base_acc = choice_accuracy(baseline["scores"])
    summary = {"baseline": {"accuracy": base_acc, "train_s": baseline["train_s"],
                            "train_loop_s": baseline["train_loop_s"]}, "series": points,
               "recipe": vars(args) | {"world": str(world), "out": str(out)},
               "total_s": round(time.perf_counter() - start, 1)}
    summary["recipe"] = {k: str(v) if isinstance(v, Path) else v for k, v in summary["recipe"].items()}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    plotted = plot(points, base_acc, out / "sweep.png")
    print(f"Baseline: {100 * base_acc:.1f}% (training loops {baseline['train_loop_s']:.0f}s)")
    for name, rows in points.items():
        print(f"\n{name}")
        print("| p | r | accuracy | % of Baseline | speed-up |\n|---|---|---|---|---|")
        for r in rows:
            rel = "–" if r["pct_of_baseline"] is None else f"{100 * r['pct_of_baseline']:.1f}"
            print(f"| {r['pruning_ratio']:g} | {r['slow_ratio']:g} | {100 * r['accuracy']:.1f} | {rel} | "
                  f"{r['speedup']:.2f}× |")
    log(f"saved {out / 'sweep.json'}" + (f" and {out / 'sweep.png'}" if plotted else "")
        + f" ({summary['total_s']:.0f}s)")
    return summary


if __name__ == "__main__":
    main()
