"""The tiny world's data sets: rendered scene images and LLaVA-format records.

Writes ``images/{pretrain,sft,eval}``, ``pretrain.json`` (LLaVA-Pretrain format), ``sft.json`` (mix665k
format, with a share of text-only chats), ``eval/questions.jsonl`` / ``eval/answers_key.jsonl`` and
``scenes.json``. The record builders are also reused by the tokenizer corpus and the LM corpus, so that the
models see the same phrasings as the data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from playground.tiny_scenes import (
    ANSWER_CHOICES, CATEGORIES, IMAGE_TOKEN, SHORT_ANSWER_PROMPT, Scene, ask, caption, render_scene, sample_scene,
    short_form,
)
from playground.world_params import WorldParams

# Conversation template of the tiny world's SFT, evaluation and chat LM documents (llava.conversation).
CONV_MODE = "tiny_world"

# Text-only SFT material: fixed facts (question, short answer, long answer).
FACTS: tuple[tuple[str, str, str], ...] = (
    ("How many sides does a triangle have?", "3", "A triangle has 3 sides."),
    ("How many sides does a square have?", "4", "A square has 4 sides."),
    ("How many corners does a circle have?", "0", "A circle has no corners, so the answer is 0."),
    ("What color is grass?", "Green", "Grass is usually green."),
    ("What color is the sky on a clear day?", "Blue", "The sky on a clear day is blue."),
    ("What color do you get by mixing red and yellow?", "Orange", "Mixing red and yellow gives orange."),
    ("What color do you get by mixing blue and yellow?", "Green", "Mixing blue and yellow gives green."),
    ("What color do you get by mixing red and blue?", "Purple", "Mixing red and blue gives purple."),
    ("What color is a ripe banana?", "Yellow", "A ripe banana is yellow."),
    ("What shape has four equal sides?", "Square", "A square has four equal sides."),
    ("What shape is round?", "Circle", "A circle is round."),
    ("What shape has three sides?", "Triangle", "A triangle has three sides."),
)


def pretrain_records(scenes: list[tuple[str, Scene]]) -> list[dict]:
    """LLaVA-Pretrain records: human turn is only the image, gpt turn the caption."""
    return [
        {"id": f"pretrain-{i:06d}", "image": image,
         "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n"},
                           {"from": "gpt", "value": caption(scene)}]}
        for i, (image, scene) in enumerate(scenes)
    ]


def sft_visual_record(idx: int, image: str, scene: Scene, params: WorldParams, rng: random.Random) -> dict:
    """mix665k-style record of 1-3 turns (distinct question types) about one image; the image placeholder
    opens the first turn ('<image>\\nQ'), so the visual tokens sit at the same offset in every sample."""
    short = rng.random() < params.short_answer_ratio
    turns = []
    for t, category in enumerate(rng.sample(CATEGORIES, rng.randint(1, len(CATEGORIES)))):
        question, answer, long = ask(scene, category, rng)
        if short:
            question, reply = f"{question}\n{SHORT_ANSWER_PROMPT}", short_form(answer)
        else:
            reply = long
        if t == 0:
            question = f"{IMAGE_TOKEN}\n{question}"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
    return {"id": f"sft-{idx:06d}", "image": image, "conversations": turns}


def text_only_turn(rng: random.Random, short: bool) -> tuple[str, str]:
    """One image-free question/answer: small arithmetic or a fixed fact."""
    if rng.random() < 0.5:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            q, r = f"What is {a} plus {b}?", a + b
            long = f"{a} plus {b} is {r}."
        else:
            a, b = max(a, b), min(a, b)
            q, r = f"What is {a} minus {b}?", a - b
            long = f"{a} minus {b} is {r}."
        return (f"{q}\n{SHORT_ANSWER_PROMPT}", str(r)) if short else (q, long)
    q, s, long = rng.choice(FACTS)
    return (f"{q}\n{SHORT_ANSWER_PROMPT}", s) if short else (q, long)


def sft_text_record(idx: int, params: WorldParams, rng: random.Random) -> dict:
    """Text-only SFT record (no 'image' key, no placeholder), 1-2 turns."""
    short = rng.random() < params.short_answer_ratio
    turns = []
    for _ in range(rng.randint(1, 2)):
        q, a = text_only_turn(rng, short)
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": f"sft-{idx:06d}", "conversations": turns}


def eval_records(scenes: list[tuple[str, Scene]], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """One question per held-out image, categories cycled so that they are balanced.

    Returns (question-file rows, key rows); the key carries the answer choices (for chance level and for
    scoring each choice's likelihood).
    """
    questions, key = [], []
    for qid, (image, scene) in enumerate(scenes):
        category = CATEGORIES[qid % len(CATEGORIES)]
        question, answer, _ = ask(scene, category, rng)
        questions.append({"question_id": qid, "image": image,
                          "text": f"{question}\n{SHORT_ANSWER_PROMPT}", "category": category})
        key.append({"question_id": qid, "answer": answer, "category": category,
                    "choices": ANSWER_CHOICES[category]})
    return questions, key


def render_split(out: Path, split: str, n: int, rng: random.Random, size: int) -> list[tuple[str, Scene]]:
    """Sample and save ``n`` scenes as ``images/<split>/NNNNNN.png``; returns (relative path, scene)."""
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    result = []
    for i in range(n):
        scene = sample_scene(rng)
        rel = f"{split}/{i:06d}.png"
        render_scene(scene, size).save(folder / f"{i:06d}.png", optimize=False)
        result.append((rel, scene))
    return result


def build_data(out: Path, params: WorldParams) -> dict:
    """Images, pretrain.json, sft.json, eval files and scenes.json. Returns counts for the manifest."""
    seed = params.seed
    pre = render_split(out, "pretrain", params.n_pretrain, random.Random(f"pretrain-{seed}"), params.image_size)
    rng = random.Random(f"sft-{seed}")
    n_text = round(params.n_sft * params.text_only_ratio)
    text_slots = set(rng.sample(range(params.n_sft), n_text))
    sft_scenes = render_split(out, "sft", params.n_sft - n_text, random.Random(f"sft-img-{seed}"),
                              params.image_size)
    sft, visual = [], iter(sft_scenes)
    for i in range(params.n_sft):
        if i in text_slots:
            sft.append(sft_text_record(i, params, rng))
        else:
            image, scene = next(visual)
            sft.append(sft_visual_record(i, image, scene, params, rng))
    ev = render_split(out, "eval", params.n_eval, random.Random(f"eval-img-{seed}"), params.image_size)
    questions, key = eval_records(ev, random.Random(f"eval-{seed}"))

    write_json(out / "pretrain.json", pretrain_records(pre))
    write_json(out / "sft.json", sft)
    (out / "eval").mkdir(exist_ok=True)
    write_jsonl(out / "eval" / "questions.jsonl", questions)
    write_jsonl(out / "eval" / "answers_key.jsonl", key)
    write_json(out / "scenes.json", {image: scene for image, scene in pre + sft_scenes + ev})
    return {"pretrain": len(pre), "sft": len(sft), "sft_text_only": n_text,
            "eval_questions": len(questions), "images": len(pre) + len(sft_scenes) + len(ev)}


def write_json(path: Path, obj: Any) -> None:
    """Compact-but-readable JSON (one record per line for lists)."""
    if isinstance(obj, list):
        text = "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in obj) + "\n]\n"
    else:
        text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
