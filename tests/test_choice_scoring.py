"""Likelihood scoring of answer choices (llava.eval.model_vqa_choices) and bootstrap intervals (llava.eval.intervals)."""
import argparse
import math

import pytest
import torch
import transformers

from llava.eval.generation import EvalSession
from llava.eval.intervals import bootstrap_ci, bootstrap_ci_runs
from llava.eval.model_vqa_choices import (batches_by_choice_count, choice_logliks, derangement, encode_choices,
                                          format_summary, summarize)


def test_derangement_gives_every_question_another_image():
    for n in (2, 3, 10, 1500):
        source = derangement(n, seed=n)
        assert sorted(source) == list(range(n)) and all(s != i for i, s in enumerate(source))
    assert derangement(50, 1) == derangement(50, 1) != derangement(50, 2)
    with pytest.raises(ValueError, match="at least 2 questions"):
        derangement(1, 0)


def test_batches_hold_one_choice_count_each():
    rows = [{"choices": ["a"] * k} for k in (6, 4, 6, 3, 4, 6, 6)]
    batches = batches_by_choice_count(rows, 2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len({len(rows[i]["choices"]) for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert batches == [[3], [1, 4], [0, 2], [5, 6]]


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    values = [1.0] * 200 + [0.0] * 200
    low, high = bootstrap_ci(values)
    half = 1.96 * math.sqrt(0.25 / 400)  # 0.049
    assert low == pytest.approx(0.5 - half, abs=0.012) and high == pytest.approx(0.5 + half, abs=0.012)
    assert bootstrap_ci([0.7] * 10) == pytest.approx((0.7, 0.7))


def test_run_level_interval_covers_the_spread_between_runs():
    run_a, run_b = [1.0] * 300 + [0.0] * 100, [1.0] * 200 + [0.0] * 200  # means 0.75 and 0.50
    low_q, high_q = bootstrap_ci(run_a + run_b)
    low_r, high_r = bootstrap_ci_runs([run_a, run_b])
    assert low_r < 0.52 and high_r > 0.73  # resampling runs reaches either run's mean
    assert high_r - low_r > 2 * (high_q - low_q)
    with pytest.raises(ValueError, match="at least one run"):
        bootstrap_ci_runs([[]])


def test_summary_values_are_the_hand_computed_means():
    def row(cat, n_choices, correct, nll, shuffled_nll):
        return {"category": cat, "choices": ["x"] * n_choices,
                "true": {"correct": correct, "nll": nll}, "shuffled": {"correct": False, "nll": shuffled_nll}}

    rows = [row("color", 6, True, 0.5, 2.0), row("color", 6, False, 1.5, 2.5), row("count", 4, True, 0.25, 0.25)]
    summary = summarize(rows, ["true", "shuffled"])
    assert list(summary) == ["color", "count", "overall"]
    assert summary["color"]["accuracy_true"]["mean"] == 0.5 and summary["color"]["nll_true"]["mean"] == 1.0
    assert summary["color"]["info_gain"]["mean"] == pytest.approx(1.25)  # (1.5 + 1.0) / 2
    assert summary["overall"]["info_gain"]["mean"] == pytest.approx(2.5 / 3)
    assert summary["overall"]["chance"] == pytest.approx((1 / 6 + 1 / 6 + 1 / 4) / 3)
    assert summary["count"]["nll_true"]["ci95"] == pytest.approx([0.25, 0.25])
    table = format_summary(summary)
    assert "overall" in table and "info gain" in table and " 66.7 " in table


def test_choice_likelihoods_equal_full_sequence_likelihoods(tiny_llava, tiny_tokenizer, tiny_clip_path):
    """The prompt-once, choices-on-the-KV-cache scoring equals scoring each prompt+choice sequence whole."""
    model = tiny_llava
    model.config.update(dict(image_aspect_ratio="square", mm_use_im_start_end=False))
    processor = transformers.CLIPImageProcessor.from_pretrained(str(tiny_clip_path))
    session = EvalSession(tiny_tokenizer, model, processor, "m", argparse.Namespace(pruning_ratio=None))
    questions = ["What color are the shapes?\nAnswer briefly.", "What shape are the objects?"]
    choices = [["Red", "Green", "Purple"], ["Circle", "Square", "Triangle"]]
    encoded = [encode_choices(session, q, c, "tiny_world") for q, c in zip(questions, choices)]
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64)
    scores = choice_logliks(session, [e[0] for e in encoded], [e[1] for e in encoded], pixels, [(64, 64)] * 2)
    for q, (prompt, answers) in enumerate(encoded):
        assert tiny_tokenizer.decode(answers[0]).startswith("Red") or q == 1
        for c, answer in enumerate(answers):
            ids = torch.cat([prompt, answer])[None]
            with torch.no_grad():
                _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
                    ids, None, None, None, None, pixels[q:q + 1], [(64, 64)])
                logp = model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
            n = len(answer)
            expected = logp[-n - 1:-1].gather(1, answer[:, None]).sum().item()
            assert scores[q][c] == pytest.approx(expected, abs=1e-4), (q, c)
    assert scores[0] != scores[1]
