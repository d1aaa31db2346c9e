"""Build the embedded "tiny world": small local models plus a synthetic visual task.

Everything the test-suite and the smoke runs need, created offline and deterministically:

* ``models/tiny-llama/``  SentencePiece tokenizer trained on the synthetic corpus + a small
  ``LlamaForCausalLM`` briefly LM-trained on that text so it behaves like a pretrained base.
* ``models/tiny-clip/``   a small full ``CLIPModel`` (vision + text towers), its image processor
  and a CLIP-style BPE tokenizer for the text tower, briefly trained contrastively on the
  pretraining captions (``clip_steps``; 0 keeps it random) so that, like the real CLIP, its
  patch features carry what the captions name.
* ``images/{pretrain,sft,eval}/*.png``  scenes of 1-4 coloured shapes on a 3x3 grid.
* ``pretrain.json`` / ``sft.json``  LLaVA-Pretrain / mix665k formatted data (image folder: ``images/``).
* ``eval/questions.jsonl`` / ``eval/answers_key.jsonl``  held-out short-answer questions.
* ``scenes.json``  ground-truth scene of every image; ``world.json`` the manifest.

Use ``ensure_built()`` (cached, lock-protected) or ``python -m playground.build_tiny_world``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

FORMAT_VERSION = 1
DEFAULT_ROOT = Path(__file__).resolve().parent / "tiny"

# ----------------------------------------------------------------------------------------------
# Vocabulary of the synthetic world
# ----------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Cell index = row * 3 + col, rows top to bottom, columns left to right.
POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)
MAX_SHAPES = 4
CATEGORIES: tuple[str, ...] = ("color", "count", "presence", "position")
ANSWER_CHOICES: dict[str, list[str]] = {
    "color": list(COLORS),
    "count": [str(n) for n in range(1, MAX_SHAPES + 1)],
    "presence": ["yes", "no"],
    "position": list(POSITIONS),
}

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
IMAGE_TOKEN = "<image>"

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the shape at the {pos}?",
        "What is the color of the object at the {pos}?",
        "Which color does the shape at the {pos} have?",
    ),
    "count": (
        "How many shapes are there in the image?",
        "How many objects are in the picture?",
        "Count the shapes in the image.",
    ),
    "presence": (
        "Is there a {color} {shape} in the image?",
        "Can you see a {color} {shape}?",
        "Does the picture contain a {color} {shape}?",
    ),
    "position": (
        "Where is the {color} {shape}?",
        "In which part of the image is the {color} {shape}?",
        "Where is the {color} {shape} located?",
    ),
}

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
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the build; the manifest stores them and a change triggers a rebuild."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    n_pretrain: int = 2000
    n_sft: int = 3000
    n_eval: int = 300
    text_only_ratio: float = 0.05
    short_answer_ratio: float = 0.4
    vocab_size: int = 1024
    llm_hidden: int = 256
    llm_intermediate: int = 688
    llm_layers: int = 4
    llm_heads: int = 4
    lm_steps: int = 120
    lm_batch: int = 8
    lm_seq_len: int = 64
    lm_lr: float = 3e-3
    clip_hidden: int = 128
    clip_layers: int = 4
    clip_heads: int = 4
    clip_projection_dim: int = 64
    clip_text_hidden: int = 64
    clip_text_layers: int = 2
    clip_vocab_size: int = 768
    # Contrastive training on the captions (0: random CLIP). A random tower's patch features barely vary with
    # the image (spread 3.7 around a common vector of norm 12.5); contrastive training makes them carry what the
    # captions name. 150 steps take ~45 s, run beside the LLaMA's LM training.
    clip_steps: int = 150
    # Std of the vision tower's position embeddings at initialisation. With transformers' default (0.02, ~60x
    # below a patch embedding here) an MLP probe on layer -2 features finds the grid cell of only 30% of the
    # patches covered by a shape after 300 contrastive steps (their colour: 99%); at 0.5, as in a trained ViT
    # whose position embeddings are a sizeable part of every token, it finds the cell in 99.9% (colour 100%).
    clip_position_std: float = 0.5
    clip_batch: int = 32
    clip_lr: float = 2e-3


def make_params(**overrides: Any) -> WorldParams:
    """Defaults updated by ``overrides``; unknown names or impossible values raise ValueError."""
    known = {f.name for f in fields(WorldParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown tiny-world parameter(s) {unknown}; known: {sorted(known)}")
    params = WorldParams(**overrides)
    if params.image_size % params.patch_size:
        raise ValueError(
            f"image_size={params.image_size} must be a multiple of patch_size={params.patch_size}"
        )
    if params.image_size < 3 * 8:
        raise ValueError(f"image_size={params.image_size} is too small to draw a 3x3 grid (need >= 24)")
    for name in ("n_pretrain", "n_sft", "n_eval"):
        if getattr(params, name) < len(CATEGORIES):
            raise ValueError(f"{name}={getattr(params, name)} must be at least {len(CATEGORIES)}")
    return params


# ----------------------------------------------------------------------------------------------
# Scenes: sampling, rendering, question answering
# ----------------------------------------------------------------------------------------------

Scene = list[dict[str, Any]]  # [{"shape": str, "color": str, "cell": int}], sorted by cell


def sample_scene(rng: random.Random) -> Scene:
    """1-4 shapes on distinct grid cells; every (color, shape) pair occurs at most once."""
    n = rng.randint(1, MAX_SHAPES)
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    combos = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    return [{"shape": s, "color": c, "cell": cell} for cell, (c, s) in zip(cells, combos)]


def cell_box(cell: int, size: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of the shape drawn in ``cell`` (a margin inside the grid cell)."""
    step = size / 3
    row, col = divmod(cell, 3)
    margin = 0.15 * step
    return (col * step + margin, row * step + margin, (col + 1) * step - margin, (row + 1) * step - margin)


def cell_center(cell: int, size: int) -> tuple[int, int]:
    """Integer pixel (x, y) at the middle of ``cell``; always covered by the shape drawn there."""
    step = size / 3
    row, col = divmod(cell, 3)
    return int((col + 0.5) * step), int((row + 0.5) * step)


def render_scene(scene: Scene, size: int):
    """RGB PIL image of the scene (no anti-aliasing, so shape pixels have the exact colour)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene:
        x0, y0, x1, y1 = cell_box(item["cell"], size)
        fill = COLORS[item["color"]]
        if item["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif item["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif item["shape"] == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {item['shape']!r} in scene {scene}")
    return image


def position_phrase(cell: int) -> str:
    """'at the top left' / 'in the center' — the preposition used in captions and answers."""
    return "in the center" if POSITIONS[cell] == "center" else f"at the {POSITIONS[cell]}"


def caption(scene: Scene) -> str:
    """Caption naming every shape in reading order, e.g. 'a red circle at the top left and ...'."""
    parts = [f"a {it['color']} {it['shape']} {position_phrase(it['cell'])}" for it in scene]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return body + "."


def ask(scene: Scene, category: str, rng: random.Random,
        present: bool | None = None) -> tuple[str, str, str]:
    """A question of ``category`` about ``scene``: (question, short answer, sentence answer).

    The short answer is lower-case and is exactly what the eval key stores. ``present`` forces
    the answer of a presence question (None: yes or no with equal probability).
    """
    template = rng.choice(QUESTION_TEMPLATES[category])
    if category == "color":
        item = rng.choice(scene)
        pos = POSITIONS[item["cell"]]
        return (template.format(pos=pos), item["color"],
                f"The shape {position_phrase(item['cell'])} is {item['color']}.")
    if category == "count":
        n = len(scene)
        long = "There is 1 shape." if n == 1 else f"There are {n} shapes."
        return template, str(n), long
    if category == "presence":
        if present is None:
            present = rng.random() < 0.5
        if present:
            item = rng.choice(scene)
            color, shape = item["color"], item["shape"]
            return (template.format(color=color, shape=shape), "yes",
                    f"Yes, there is a {color} {shape} {position_phrase(item['cell'])}.")
        color, shape = absent_combo(scene, rng)
        return (template.format(color=color, shape=shape), "no",
                f"No, there is no {color} {shape} in the image.")
    if category == "position":
        item = rng.choice(scene)
        color, shape = item["color"], item["shape"]
        return (template.format(color=color, shape=shape), POSITIONS[item["cell"]],
                f"The {color} {shape} is {position_phrase(item['cell'])}.")
    raise ValueError(f"unknown question category {category!r}; expected one of {CATEGORIES}")


def absent_combo(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A (color, shape) pair not in the scene, sharing a colour or shape with one that is
    (a hard negative), so that 'no' cannot be answered from colour or shape alone."""
    present = {(it["color"], it["shape"]) for it in scene}
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    colors = {c for c, _ in present}
    shapes = {s for _, s in present}
    hard = [(c, s) for c, s in absent if c in colors or s in shapes]
    return rng.choice(hard or absent)


def short_form(answer: str) -> str:
    """Short answer as written in SFT data: capitalised like VQAv2-style answers ('Red', 'Yes')."""
    return answer[:1].upper() + answer[1:]


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------


def with_image(question: str, image_first: bool) -> str:
    """Put the image placeholder before ('<image>\\nQ') or after ('Q\\n<image>') the question."""
    return f"{IMAGE_TOKEN}\n{question}" if image_first else f"{question}\n{IMAGE_TOKEN}"


def pretrain_records(scenes: list[tuple[str, Scene]]) -> list[dict]:
    """LLaVA-Pretrain records: human turn is only the image, gpt turn the caption."""
    return [
        {"id": f"pretrain-{i:06d}", "image": image,
         "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n"},
                           {"from": "gpt", "value": caption(scene)}]}
        for i, (image, scene) in enumerate(scenes)
    ]


def sft_visual_record(idx: int, image: str, scene: Scene, params: WorldParams, rng: random.Random) -> dict:
    """mix665k-style record of 1-3 turns (distinct question types) about one image; the image
    placeholder is in the first turn only, before or after the question."""
    short = rng.random() < params.short_answer_ratio
    image_first = rng.random() < 0.5
    turns = []
    for t, category in enumerate(rng.sample(CATEGORIES, rng.randint(1, 3))):
        question, answer, long = ask(scene, category, rng)
        if short:
            question, reply = f"{question}\n{SHORT_ANSWER_PROMPT}", short_form(answer)
        else:
            reply = long
        if t == 0:
            question = with_image(question, image_first)
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
    """One question per held-out image, categories cycled so they are balanced, presence
    answers alternating yes/no so that always answering 'yes' scores exactly chance.

    Returns (question-file rows, key rows); the key carries the answer choices (for chance level).
    """
    questions, key = [], []
    for qid, (image, scene) in enumerate(scenes):
        rnd, slot = divmod(qid, len(CATEGORIES))
        category = CATEGORIES[slot]
        question, answer, _ = ask(scene, category, rng, present=rnd % 2 == 0)
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


# ----------------------------------------------------------------------------------------------
# Text corpus (tokenizer training and LM pretraining)
# ----------------------------------------------------------------------------------------------


def strip_image(text: str) -> str:
    """Drop the image placeholder (and its newline) from a turn, for text-only LM training."""
    return text.replace(f"{IMAGE_TOKEN}\n", "").replace(f"\n{IMAGE_TOKEN}", "").replace(IMAGE_TOKEN, "")


def chat_text(conversations: list[dict]) -> str:
    """A conversation in the Vicuna v1 format, as LLaVA's 'v1' template renders it."""
    out = SYSTEM_PROMPT + " "
    for turn in conversations:
        if turn["from"] == "human":
            out += f"USER: {strip_image(turn['value'])} "
        else:
            out += f"ASSISTANT: {turn['value']}</s>"
    return out


def lm_documents(pretrain: list[dict], sft: list[dict]) -> list[str]:
    """Training documents for the base LM: captions (as sentences) and v1-format chats."""
    docs = [short_form(r["conversations"][1]["value"]) for r in pretrain]
    docs += [chat_text(r["conversations"]) for r in sft]
    return docs


def tokenizer_sentences(seed: int) -> list[str]:
    """Lines for SentencePiece training: every phrasing of the world, the chat scaffolding and
    the answer vocabulary. Drawn from a fixed-size sample so that the tokenizer does not
    depend on the data-set sizes of the build."""
    rng = random.Random(f"tokenizer-corpus-{seed}")
    params = WorldParams()
    pretrain = pretrain_records([("x.png", sample_scene(rng)) for _ in range(2000)])
    sft = [sft_visual_record(i, "x.png", sample_scene(rng), params, rng) for i in range(2850)]
    sft += [sft_text_record(i, params, rng) for i in range(150)]
    lines = []
    for doc in lm_documents(pretrain, sft):
        for chunk in doc.split("</s>"):
            lines += [ln for ln in chunk.split("\n") if ln]
    lines += [SYSTEM_PROMPT, "USER:", "ASSISTANT:", SHORT_ANSWER_PROMPT]
    lines += [" ".join(NUMBER_WORDS), " ".join(str(i) for i in range(100))]
    for templates in QUESTION_TEMPLATES.values():
        lines += [t.format(pos=pos, color=c, shape=s)
                  for t in templates for pos in POSITIONS for c in COLORS for s in SHAPES][::7]
    for choices in ANSWER_CHOICES.values():
        lines += [" ".join(choices), " ".join(short_form(c) for c in choices)]
    return lines


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


# Vicuna's vocabulary has 'USER' but not '▁USER': a round that starts right after '</s>' is one
# token shorter in context than tokenized on its own, and upstream LLaVA's preprocess_v1
# (tokenizers >= 0.14, legacy=False) subtracts exactly that one token. Mirror it.
DROPPED_PIECES = frozenset({"\u2581USER"})


def train_llama_tokenizer(sentences: list[str], vocab_size: int, model_dir: Path) -> int:
    """Train a Llama-style SentencePiece BPE model and ship it with a LlamaTokenizer config.

    Returns the vocabulary size (== ``vocab_size``).
    """
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer,
        model_type="bpe", vocab_size=vocab_size + len(DROPPED_PIECES), byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        max_sentence_length=8192, num_threads=1, minloglevel=2,
    )
    proto = drop_pieces(buffer.getvalue(), set(DROPPED_PIECES))
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "tokenizer.model").write_bytes(proto)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "padding_side": "right",
    }
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (model_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    save_fast_tokenizer_json(model_dir)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    if processor.piece_to_id("USER") == processor.unk_id() or len(processor.encode("USER")) != 2:
        raise RuntimeError(f"{model_dir}: expected 'USER' to be one piece and '\u2581USER' two, "
                           f"got {processor.encode('USER', out_type=str)}")
    check_llama_tokenizer(model_dir, processor, sentences[:: max(1, len(sentences) // 300)])
    return processor.get_piece_size()


def save_fast_tokenizer_json(model_dir: Path) -> None:
    """Add transformers' own conversion of ``tokenizer.model`` as ``tokenizer.json`` (as Llama
    repositories ship both): loading then takes milliseconds instead of a conversion."""
    import transformers

    converted = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    with tempfile.TemporaryDirectory() as tmp:
        converted.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", model_dir / "tokenizer.json")


def check_llama_tokenizer(model_dir: Path, processor, samples: list[str]) -> None:
    """Fail the build loudly if transformers does not reproduce SentencePiece's own encoding."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=False)
    if len(tok) != processor.get_piece_size():
        raise RuntimeError(f"{model_dir}: transformers sees {len(tok)} tokens, "
                           f"SentencePiece {processor.get_piece_size()}")
    for text in samples:
        expected = [1] + processor.encode(text)
        got = tok(text).input_ids
        if got != expected:
            raise RuntimeError(f"{model_dir}: transformers encodes {text!r} as {got}, "
                               f"SentencePiece as {expected}")
        if tok.decode(got, skip_special_tokens=True) != text:
            raise RuntimeError(f"{model_dir}: decode does not round-trip {text!r}")


def drop_pieces(model_proto: bytes, pieces: set[str]) -> bytes:
    """Remove ``pieces`` from a serialized SentencePiece model (ids of later pieces shift down)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    kept = [p for p in model.pieces if p.piece not in pieces]
    missing = pieces - {p.piece for p in model.pieces}
    if missing:
        raise RuntimeError(f"cannot drop SentencePiece pieces {sorted(missing)}: not in the trained vocabulary")
    del model.pieces[:]
    model.pieces.extend(kept)
    model.trainer_spec.vocab_size = len(kept)
    return model.SerializeToString()


CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def clip_word_counts(sentences: list[str]) -> Counter:
    """Frequencies of the words as CLIP's tokenizer sees them: NFC, lower-cased, split into
    letter runs / single digits / punctuation runs, mapped to byte-level characters."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    words = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    splitter = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    counts: Counter = Counter()
    for sentence in sentences:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(sentence)))
    return counts


def learn_bpe_merges(word_counts: Counter, n_tokens: int) -> list[tuple[str, str]]:
    """Greedy BPE with '</w>' word ends: merge the most frequent adjacent pair (ties broken by
    the pair's text, so the result is deterministic) until ``n_tokens`` new symbols exist."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in sorted(word_counts.items())}
    merges: list[tuple[str, str]] = []
    created: set[str] = set()
    while len(created) < n_tokens:
        pairs: Counter = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            raise RuntimeError(f"CLIP tokenizer corpus only supports {len(created)} merged symbols, "
                               f"{n_tokens} requested (lower clip_vocab_size)")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        created.add(best[0] + best[1])
        words = {merge_pair(symbols, best): count for symbols, count in words.items()}
    return merges


def merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """``symbols`` with every non-overlapping occurrence of ``pair`` (left to right) fused."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def train_clip_tokenizer(sentences: list[str], vocab_size: int, model_dir: Path) -> dict[str, int]:
    """Train a CLIP-style byte-level BPE ('</w>' word ends, lower-cased) for the text tower.

    Layout like OpenAI's: 256 byte symbols, the same with '</w>', merged symbols, then the two
    specials. Returns {"vocab_size", "bos_token_id", "eos_token_id"} for the text config.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    n_new = vocab_size - 2 * 256 - len(CLIP_SPECIALS)
    if n_new < 1:
        raise ValueError(f"clip_vocab_size={vocab_size} must exceed {2 * 256 + len(CLIP_SPECIALS)}")
    merges = learn_bpe_merges(clip_word_counts(sentences), n_new)
    bases = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = bases + [b + "</w>" for b in bases]
    tokens += list(dict.fromkeys(a + b for a, b in merges)) + list(CLIP_SPECIALS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != vocab_size:
        raise RuntimeError(f"CLIP tokenizer vocabulary has {len(vocab)} entries, expected {vocab_size}")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(str(model_dir))
    (model_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (model_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return {"vocab_size": vocab_size, "bos_token_id": vocab[CLIP_SPECIALS[0]],
            "eos_token_id": vocab[CLIP_SPECIALS[1]]}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, restoring the caller's setting afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def progress(iterable, desc: str):
    """tqdm progress bar on stderr (plain iteration if tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return iterable
    return tqdm(iterable, desc=desc, mininterval=1.0, leave=True, file=sys.stderr)


def pack_tokens(docs: list[str], tokenizer, seq_len: int):
    """Tokenize ``docs`` (BOS first, EOS appended unless already there), concatenate them and
    cut the stream into ``[n_blocks, seq_len]`` training blocks."""
    import torch

    ids = tokenizer(docs, add_special_tokens=True).input_ids
    eos = tokenizer.eos_token_id
    stream = [t for doc in ids for t in (doc if doc[-1] == eos else doc + [eos])]
    n_blocks = len(stream) // seq_len
    if n_blocks < 1:
        raise ValueError(f"LM corpus has {len(stream)} tokens, fewer than lm_seq_len={seq_len}")
    return torch.tensor(stream[: n_blocks * seq_len]).view(n_blocks, seq_len)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_loop(model, batches: Iterator[dict], steps: int, lr: float, desc: str) -> list[float]:
    """AdamW training for ``steps`` steps on ``model(**batch).loss``; returns the loss curve."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    losses = []
    bar = progress(range(steps), desc)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def build_llama(out: Path, params: WorldParams) -> dict:
    """Create the tiny LLaMA, LM-train it on the world's text and save it next to its tokenizer."""
    import torch
    import transformers

    model_dir = out / "models" / "tiny-llama"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=params.llm_hidden,
        intermediate_size=params.llm_intermediate, num_hidden_layers=params.llm_layers,
        num_attention_heads=params.llm_heads, num_key_value_heads=params.llm_heads,
        max_position_embeddings=2048, rms_norm_eps=1e-5, initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
        tie_word_embeddings=False, use_cache=True,
    )
    torch.manual_seed(params.seed)
    model = transformers.LlamaForCausalLM(config)
    pretrain = json.loads((out / "pretrain.json").read_text())
    sft = json.loads((out / "sft.json").read_text())
    blocks = pack_tokens(lm_documents(pretrain, sft), tokenizer, params.lm_seq_len)
    generator = torch.Generator().manual_seed(params.seed)

    def batches() -> Iterator[dict]:
        while True:
            rows = blocks[torch.randint(len(blocks), (params.lm_batch,), generator=generator)]
            yield {"input_ids": rows, "labels": rows}

    losses = train_loop(model, batches(), params.lm_steps, params.lm_lr, "tiny-llama LM pretraining")
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(model_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()), "lm_tokens": blocks.numel(),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4) if losses else None}


def clip_image_processor(params: WorldParams):
    """CLIP's standard preprocessing at the tiny resolution (resize shortest edge + centre crop)."""
    from transformers import CLIPImageProcessor

    size = params.image_size
    return CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        do_resize=True, do_center_crop=True, do_normalize=True, do_convert_rgb=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def build_clip(out: Path, params: WorldParams, text_info: dict) -> dict:
    """Create the tiny CLIP, briefly train it contrastively on pretrain captions, save it."""
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    model_dir = out / "models" / "tiny-clip"
    vision = dict(image_size=params.image_size, patch_size=params.patch_size, num_channels=3,
                  hidden_size=params.clip_hidden, intermediate_size=4 * params.clip_hidden,
                  num_hidden_layers=params.clip_layers, num_attention_heads=params.clip_heads,
                  hidden_act="quick_gelu", projection_dim=params.clip_projection_dim)
    text = dict(vocab_size=text_info["vocab_size"], hidden_size=params.clip_text_hidden,
                intermediate_size=4 * params.clip_text_hidden, num_hidden_layers=params.clip_text_layers,
                num_attention_heads=max(1, params.clip_text_hidden // 32), max_position_embeddings=77,
                hidden_act="quick_gelu", projection_dim=params.clip_projection_dim,
                bos_token_id=text_info["bos_token_id"], eos_token_id=text_info["eos_token_id"],
                pad_token_id=text_info["eos_token_id"])
    config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                     projection_dim=params.clip_projection_dim)
    torch.manual_seed(params.seed + 1)
    model = transformers.CLIPModel(config)
    if params.clip_position_std > 0:
        torch.nn.init.normal_(model.vision_model.embeddings.position_embedding.weight, std=params.clip_position_std)
    processor = clip_image_processor(params)
    losses: list[float] = []
    if params.clip_steps > 0:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(model_dir))
        records = json.loads((out / "pretrain.json").read_text())
        pixels = np.stack([np.asarray(Image.open(out / "images" / r["image"]).convert("RGB")) for r in records])
        mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        texts = tokenizer([r["conversations"][1]["value"] for r in records], padding=True,
                          truncation=True, return_tensors="pt")
        generator = torch.Generator().manual_seed(params.seed + 1)

        def batches() -> Iterator[dict]:
            while True:
                idx = torch.randperm(len(records), generator=generator)[: params.clip_batch]
                yield {"pixel_values": images[idx], "input_ids": texts.input_ids[idx],
                       "attention_mask": texts.attention_mask[idx], "return_loss": True}

        losses = train_loop(model, batches(), params.clip_steps, params.clip_lr, "tiny-clip contrastive")
    model.save_pretrained(str(model_dir))
    processor.save_pretrained(str(model_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "num_patches": (params.image_size // params.patch_size) ** 2,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4) if losses else None}


# ----------------------------------------------------------------------------------------------
# Build orchestration, caching and locking
# ----------------------------------------------------------------------------------------------


def build_llama_one_thread(out: Path, params: WorldParams) -> dict:
    """``build_llama`` with one intra-op thread (the entry point of the LLaMA build process)."""
    with torch_threads(1):
        return build_llama(out, params)


def build_models(out: Path, params: WorldParams, clip_text: dict) -> tuple[dict, dict]:
    """Train the tiny LLaMA (in a child process) and the tiny CLIP (here) at the same time.

    Each gets one intra-op thread: the weights are bit-reproducible, and on a small machine two
    single-threaded trainings beat one after the other with oversubscribed threads (measured
    0.27 s vs 1.05 s per LM step under load). The two share nothing but the tokenizer files.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        llama = pool.submit(build_llama_one_thread, out, params)
        with torch_threads(1):
            clip = build_clip(out, params, clip_text)
        return llama.result(), clip


def log(message: str) -> None:
    """Build progress line on stderr."""
    print(f"[tiny-world] {message}", file=sys.stderr, flush=True)


def build_world(out: Path, params: WorldParams) -> dict:
    """Build everything into ``out`` (an empty directory) and write the manifest last."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 2)
        log(f"{name}: {timings[name]:.1f}s")

    counts = build_data(out, params)
    lap("data")
    sentences = tokenizer_sentences(params.seed)
    llama_dir, clip_dir = out / "models" / "tiny-llama", out / "models" / "tiny-clip"
    vocab = train_llama_tokenizer(sentences, params.vocab_size, llama_dir)
    clip_text = train_clip_tokenizer(sentences, params.clip_vocab_size, clip_dir)
    lap("tokenizers")
    llama, clip = build_models(out, params, clip_text)
    lap("models (tiny-llama and tiny-clip in parallel)")
    manifest = {
        "format_version": FORMAT_VERSION,
        "params": asdict(params),
        "counts": counts,
        "vocab_size": vocab,
        "llama": llama,
        "clip": clip,
        "colors": list(COLORS),
        "shapes": list(SHAPES),
        "positions": list(POSITIONS),
        "categories": list(CATEGORIES),
        "image_folder": "images",
        "build_seconds": round(time.perf_counter() - start, 2),
        "timings": timings,
    }
    write_json(out / "world.json", manifest)
    return manifest


def read_manifest(root: Path) -> dict | None:
    """The manifest of a finished build, or None when missing/unreadable."""
    try:
        return json.loads((root / "world.json").read_text())
    except (OSError, ValueError):
        return None


def is_current(root: Path, params: WorldParams) -> bool:
    """True when ``root`` holds a finished build of this format version with these params."""
    manifest = read_manifest(root)
    return bool(manifest) and manifest.get("format_version") == FORMAT_VERSION \
        and manifest.get("params") == asdict(params)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Inter-process exclusive lock (flock) so concurrent builders build once."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_path(root: Path) -> Path:
    """Lock file for builders of ``root``; kept in the temp dir so the repository stays clean."""
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tiny-world-{digest}.lock"


def remove_leftovers(root: Path) -> None:
    """Delete staging/old directories that a killed builder left next to ``root`` (lock held)."""
    for stale in root.parent.glob(f".{root.name}.*-*"):
        if stale.is_dir() and (".build-" in stale.name or ".old-" in stale.name):
            shutil.rmtree(stale, ignore_errors=True)


def ensure_built(root: Path = DEFAULT_ROOT, *, force: bool = False, **params: Any) -> Path:
    """Return ``root`` holding a tiny world built with ``params``, building it only if missing,
    of an older format version, built with other params, or ``force`` is set.

    Safe under concurrency: builders serialise on a lock file next to ``root`` and build into a
    temporary directory that is renamed into place, so readers never see half a world.
    """
    root = Path(root).resolve()
    wanted = make_params(**params)
    if not force and is_current(root, wanted):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(root)):
        if not force and is_current(root, wanted):
            return root
        remove_leftovers(root)
        log(f"building into {root} with {asdict(wanted)}")
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
        try:
            manifest = build_world(staging, wanted)
            if root.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
                os.rename(root, stale / "world")
                os.rename(staging, root)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.rename(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"done in {manifest['build_seconds']:.1f}s: {root}")
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI: --out, --force and one --flag per WorldParams field (e.g. --image-size 32)."""
    parser = argparse.ArgumentParser(prog="python -m playground.build_tiny_world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_ROOT, help="output directory (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even when an up-to-date build exists")
    for f in fields(WorldParams):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default),
                            default=f.default, help=f"(default: {f.default})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m playground.build_tiny_world``."""
    args = vars(parse_args(argv))
    out, force = args.pop("out"), args.pop("force")
    root = ensure_built(out, force=force, **args)
    manifest = read_manifest(root)
    print(json.dumps({"root": str(root), "counts": manifest["counts"],
                      "build_seconds": manifest["build_seconds"]}, indent=1))


if __name__ == "__main__":
    main()
