"""Report of bench/step_costs.py: the targets, their PASS/MISS verdicts and the Markdown tables.

Pure formatting of the result dictionary that step_costs.main assembles (no timing, no torch), written next to
the JSON as step_costs.md.
"""
from __future__ import annotations

from typing import List, Optional

from step_costs_hf import HF_RATIOS
from step_costs_rows import OPTION_ROWS, SELECTION_PRUNERS

TARGETS = {
    "fast_over_oracle": 1.03,
    "slow_over_reference": 1.10,
    "divprune_share": 0.01,
    "e2e_relative_error": 0.05,
}


def verdicts(result: dict) -> List[dict]:
    """Every target with its measured value and PASS/MISS (`kind`: ratio, share or error, for formatting)."""
    out = []

    def add(target: str, kind: str, value: float, limit: float, ok: bool) -> None:
        out.append({"target": target, "kind": kind, "value": value, "limit": limit, "pass": bool(ok)})

    for key, cell in result["cells"].items():
        r = cell["ratios"]
        v = r["fast_over_oracle"]["value"]
        add(f"fast ≤ 1.03 × oracle [{key}]", "ratio", v, TARGETS["fast_over_oracle"], v <= TARGETS["fast_over_oracle"])
        if "slow_over_reference" in r:
            v = r["slow_over_reference"]["value"]
            add(f"slow ≤ 1.10 × (baseline + pruned forward) [{key}]", "ratio", v, TARGETS["slow_over_reference"],
                v <= TARGETS["slow_over_reference"])
        if key.startswith("llava15/") and "share/divprune" in r:
            v = r["share/divprune"]["value"]
            add(f"DivPrune selection < 1% of fast step [{key}]", "share", v, TARGETS["divprune_share"],
                v < TARGETS["divprune_share"])
    for stage, e in result["e2e"].items():
        v = e["relative_error"]
        add(f"end-to-end speed-up within 5% of predicted [llava15/{stage}]", "error", v, TARGETS["e2e_relative_error"],
            abs(v) <= TARGETS["e2e_relative_error"])
    return out


def _ms(row: Optional[dict]) -> str:
    if row is None:
        return "—"
    return f"{row['median'] * 1e3:.1f} [{row['min'] * 1e3:.1f}–{row['max'] * 1e3:.1f}]"


def _ratio(r: Optional[dict], digits: int = 3) -> str:
    if r is None:
        return "—"
    spread = f" [{r['min']:.{digits}f}–{r['max']:.{digits}f}]" if "min" in r else ""
    return f"{r['value']:.{digits}f}{spread}"


def hf_lines(result: dict) -> List[str]:
    """The Hugging Face rows' table (--hf): their times and HF_RATIOS; nothing when no cell has them."""
    cells = {k: c for k, c in result["cells"].items() if "hf_baseline" in c["rows"]}
    if not cells:
        return []
    names = list(HF_RATIOS)
    lines = ["", "Hugging Face Llava (dualspeed_patch.hf host adapter), same weights and batch, timed in the same rounds:",
             "", "| counts | stage | model | hf baseline ms | hf fast ms | hf slow ms | "
             + " | ".join(name.replace("_over_", " / ").replace("_", " ") for name in names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for key, c in cells.items():
        count, stage = key.split("/")
        rows, r = c["rows"], c["ratios"]
        lines.append(f"| {count} | {stage} | {c['hf_model']} | {_ms(rows['hf_baseline'])} | {_ms(rows['hf_fast'])} | "
                     f"{_ms(rows.get('hf_slow'))} | " + " | ".join(_ratio(r.get(name)) for name in names) + " |")
    return lines


def markdown(result: dict) -> str:
    """The result as Markdown tables (ms: median [min–max] over calls; ratios: median [min–max] over rounds)."""
    cfg = result["config"]
    clock = cfg["clock"]
    lines = [
        f"Model: LLM {cfg['llm_parameters'] / 1e6:.1f}M parameters (hidden {cfg['hidden']}, {cfg['layers']} layers, "
        f"vocab {cfg['vocab']}), tiny CLIP, fp32, {cfg['threads']} thread(s); p = {cfg['pruning_ratio']}, "
        f"isolator l = {cfg['isolator_len']}, r = {cfg['slow_ratio']}, LoRA r = {cfg['lora_r']}; "
        f"{cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up round(s), cheap variants timed "
        f"{cfg['cheap_repeats']}× per round; times on the {clock} clock. Times: median [min–max] over calls; "
        "ratios: taken within each round, median [min–max] over rounds.",
        "",
    ]
    lines += [f"- {note}" for note in result["notes"]] + [""]
    lines += ["| counts | stage | batch | seq full → fast | baseline ms | fast ms | oracle ms | plain short ms | slow ms | "
              "pruned fwd ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        rows = c["rows"]
        lines.append(f"| {count} | {stage} | {c['batch']} | {c['sequence_full']} → {c['sequence_fast']} | "
                     f"{_ms(rows['baseline'])} | {_ms(rows['fast'])} | {_ms(rows['oracle'])} | {_ms(rows['plain_short'])} | "
                     f"{_ms(rows.get('slow'))} | "
                     f"{_ms(rows.get('pruned_forward'))} |")
    lines += ["", "| counts | stage | fast / oracle (≤ 1.03) | slow / (baseline + pruned fwd) (≤ 1.10) | "
              "oracle / plain short | predicted speed-up | limit: baseline / oracle |", "|---|---|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        r = c["ratios"]
        pred = f"{r['predicted_speedup']['value']:.2f}× (r = {r['predicted_speedup']['slow_ratio']})"
        lines.append(f"| {count} | {stage} | {_ratio(r['fast_over_oracle'])} | {_ratio(r.get('slow_over_reference'))} | "
                     f"{_ratio(r['oracle_over_plain_short'])} | {pred} | {r['limit_speedup']['value']:.2f}× |")
    lines += ["", "| counts | stage | pruner | selection ms | share of fast step |", "|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        for name in SELECTION_PRUNERS:
            if f"select/{name}" in c["rows"]:
                share = c["ratios"][f"share/{name}"]
                lines.append(f"| {count} | {stage} | {name} | {_ms(c['rows'][f'select/{name}'])} | "
                             f"{share['value'] * 100:.2f}% [{share['min'] * 100:.2f}–{share['max'] * 100:.2f}] |")
    lines += ["", "| counts | stage | fast-mode variant | step ms | step / baseline step |", "|---|---|---|---|---|"]
    for key, c in result["cells"].items():
        count, stage = key.split("/")
        for name in ["fast", *OPTION_ROWS]:
            if name in c["rows"]:
                lines.append(f"| {count} | {stage} | {name} | {_ms(c['rows'][name])} | "
                             f"{_ratio(c['ratios'][f'{name}_over_baseline'])} |")
    for key, c in result["cells"].items():
        if "fitprune_recipe" in c:
            r = c["fitprune_recipe"]
            lines.append(f"\nFitPrune recipe [{key}]: fitted in-process on the timed batch for a budget of "
                         f"{r['flops_budget']:.3f} of the LLM FLOPs (estimate {r['flops_ratio']:.3f}); of "
                         f"{r['visual_tokens']} visual tokens, {r['remaining']} remain after each layer.")
    lines += hf_lines(result)
    if result["e2e"]:
        lines += ["", f"| stage (LLaVA-1.5 counts) | timed steps (slow) | baseline s ({clock}) | DualSpeed s ({clock}) | "
                  "measured speed-up | "
                  "predicted | measured / predicted − 1 |", "|---|---|---|---|---|---|---|"]
        for stage, e in result["e2e"].items():
            wall = e.get("measured_speedup_wall", e["measured_speedup"])
            lines.append(f"| {stage} | {e['timed_steps']} ({e['slow_steps_timed']}) | {e['baseline'][clock]['seconds']:.2f} | "
                         f"{e['dualspeed'][clock]['seconds']:.2f} | {e['measured_speedup']:.2f}× (wall {wall:.2f}×) | "
                         f"{e['predicted_speedup']:.2f}× | {e['relative_error'] * 100:+.1f}% |")
    profiled = {k: c["profile"] for k, c in result["cells"].items() if "profile" in c}
    if profiled:
        phases = list(next(iter(profiled.values()))["baseline"])
        lines += ["", "Where the time goes (one profiled step, ms; cProfile inclusive times):", "",
                  "| counts | stage | step | " + " | ".join(phases) + " |", "|---|---|---|" + "---|" * len(phases)]
        for key, prof in profiled.items():
            count, stage = key.split("/")
            for row, ph in prof.items():
                lines.append(f"| {count} | {stage} | {row} | " + " | ".join(f"{ph[p] * 1e3:.1f}" for p in phases) + " |")
    lines += ["", "| target | value | limit | verdict |", "|---|---|---|---|"]
    for v in result["targets"]:
        if v["kind"] == "ratio":
            value, limit = f"{v['value']:.3f}", f"{v['limit']:.2f}"
        elif v["kind"] == "share":
            value, limit = f"{v['value'] * 100:.2f}%", f"< {v['limit'] * 100:.0f}%"
        else:
            value, limit = f"{v['value'] * 100:+.1f}%", f"±{v['limit'] * 100:.0f}%"
        lines.append(f"| {v['target']} | {value} | {limit} | {'PASS' if v['pass'] else 'MISS'} |")
    return "\n".join(lines) + "\n"
