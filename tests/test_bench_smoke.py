"""Smoke test of the step-cost benchmark: `bench/step_costs.py --quick --hf` runs end to end and reports every row,
the Hugging Face rows (hf_baseline / hf_fast / hf_slow) included."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELECTORS = {f"select/{name}" for name in ("divprune", "random", "uniform", "cdpruner", "fastervlm")}
BASE_ROWS = {"baseline", "fast", "oracle", "plain_short"} | SELECTORS
PRETRAIN_ROWS = BASE_ROWS | {"fast+avgpool"}
SFT_ROWS = BASE_ROWS | {"slow", "pruned_forward", "fast+layerskip", "fast+fitprune"}
HF_ROWS = {"pretrain": {"hf_baseline", "hf_fast"}, "sft": {"hf_baseline", "hf_fast", "hf_slow"}}
HF_RATIOS = {"hf_baseline_over_baseline", "hf_fast_over_hf_baseline", "hf_fast_over_fast"}  # + hf_slow_over_slow (SFT)
HF_MODELS = {"llava15": "LlavaForConditionalGeneration", "next": "LlavaNextForConditionalGeneration"}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_run_reports_every_row(tmp_path):
    out = tmp_path / "step_costs.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "step_costs.py"), "--quick", "--hf", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert set(result["cells"]) == {"llava15/pretrain", "llava15/sft", "next/pretrain", "next/sft"}
    for key, cell in result["cells"].items():
        count, stage = key.split("/")
        assert set(cell["rows"]) == (SFT_ROWS if stage == "sft" else PRETRAIN_ROWS) | HF_ROWS[stage], key
        # the Hugging Face model of the cell's kind, fed the same sequence (image tokens expanded in the text)
        assert cell["hf_model"] == HF_MODELS[count] and cell["hf_sequence_full"] == cell["sequence_full"], key
        for name, row in cell["rows"].items():
            assert row["n"] == 1 and all(finite(row[k]) and row[k] > 0 for k in ("median", "min", "max")), (key, name)
        ratios = cell["ratios"]
        expected = {"fast_over_oracle", "oracle_over_plain_short", "limit_speedup", "predicted_speedup"} | {
            f"share/{s.split('/')[1]}" for s in SELECTORS} | {
            f"{name}_over_baseline" for name in cell["rows"] if name.startswith("fast")}
        expected |= HF_RATIOS
        if stage == "sft":
            expected |= {"slow_over_reference", "hf_slow_over_slow"}
        assert set(ratios) == expected, key
        assert all(finite(r["value"]) and r["value"] > 0 for r in ratios.values()), key
        assert ratios["predicted_speedup"]["slow_ratio"] == (0.1 if stage == "sft" else 0.0)
        if stage == "sft":  # a valid recipe for this cell's model and token counts, within its budget
            recipe = cell["fitprune_recipe"]
            assert recipe["visual_tokens"] == cell["visual_tokens"] and len(recipe["remaining"]) == 4, key
            assert recipe["flops_ratio"] <= recipe["flops_budget"] and recipe["flops_budget"] >= 0.5, key
        else:
            assert "fitprune_recipe" not in cell, key

    # --quick: 4 x 4 patches per view. LLaVA-1.5: 16 tokens, K = round(1.6) = 2. NeXT (anyres, 2 x 2 tiles,
    # spatial_unpad): 16 base + 8 x 8 tiles + 8 newlines = 88 tokens, K = round(8.8) = 9. + 4 isolator vectors;
    # text 12 (pretrain) / 24 (SFT) tokens, one of them the image placeholder.
    c15, cnext = result["cells"]["llava15/pretrain"], result["cells"]["next/sft"]
    assert (c15["visual_tokens"], c15["kept_tokens"], c15["views_per_image"]) == (16, 2, 1)
    assert (c15["sequence_full"], c15["sequence_fast"]) == (27, 17)
    assert (cnext["visual_tokens"], cnext["kept_tokens"], cnext["views_per_image"]) == (88, 9, 5)
    assert (cnext["sequence_full"], cnext["sequence_fast"]) == (111, 36)

    assert set(result["e2e"]) == {"pretrain", "sft"}
    for stage, e in result["e2e"].items():
        assert (e["steps"], e["warmup_steps"], e["timed_steps"]) == (3, 2, 1)
        assert all(finite(e[k]) for k in ("measured_speedup", "measured_speedup_wall", "predicted_speedup", "relative_error"))
        for run in ("baseline", "dualspeed"):
            assert e[run]["cpu"]["per_step"]["n"] == 1 and finite(e[run]["cpu"]["seconds"]) and e[run]["cpu"]["seconds"] > 0
        assert e["baseline"]["slow_steps_run_total"] is None
        assert e["dualspeed"]["slow_steps_run_total"] == e["slow_steps_expected_total"]
    # Pretraining: fast mode on every step. SFT: the seed puts both modes in the 2 warm-up steps and, at r = 0.1
    # over 1 timed step, no slow step in the timed part.
    assert result["e2e"]["pretrain"]["dualspeed"]["slow_steps_run_total"] == 0
    assert result["e2e"]["sft"]["dualspeed"]["slow_steps_run_total"] == 1
    assert result["e2e"]["sft"]["slow_steps_timed"] == 0

    assert len(result["targets"]) == 10
    assert all(isinstance(t["pass"], bool) and finite(t["value"]) for t in result["targets"])
    table = out.with_suffix(".md").read_text()
    # 2 step tables + 5 selectors + fast, fast+layerskip and fast+fitprune against the baseline step
    assert table.count("| llava15 | sft |") == 11 and "LLaVA-NeXT: anyres" in table  # + the Hugging Face table
    assert table.count("| llava15 | sft | LlavaForConditionalGeneration |") == 1
    assert table.count("| next | pretrain | LlavaNextForConditionalGeneration |") == 1
    assert table.count("| llava15 | pretrain | fast+avgpool |") == 1 and "FitPrune recipe [next/sft]" in table
