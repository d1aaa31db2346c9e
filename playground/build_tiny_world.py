"""Build the embedded "tiny world": small local models plus a synthetic visual task.

Everything the test-suite and the smoke runs need, created offline and deterministically:

* ``models/tiny-llama/``  SentencePiece tokenizer trained on the synthetic corpus (plus one "scene word"
  per kind of patch) + a small ``LlamaForCausalLM`` language-pretrained on scene texts: scene words where
  the image will sit, then a caption or a chat about the scene. Like a real base LLM that already reads and
  answers, it leaves stage 1 to map visual tokens onto what it reads.
* ``models/tiny-clip/``   a small full ``CLIPModel`` (vision + text towers), its image processor
  and a CLIP-style BPE tokenizer for the text tower, briefly trained contrastively on the
  pretraining images (``clip_steps``; 0 keeps it random) so that, like the real CLIP, its
  patch features say what covers each patch.
* ``images/{pretrain,sft,eval}/*.png``  scenes of 1-4 identical coloured shapes on a 4x4 grid
  (``playground.tiny_scenes``).
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

if __package__ in (None, ""):  # run as a file: make `playground` and `llava` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMAT_VERSION = 2
DEFAULT_ROOT = Path(__file__).resolve().parent / "tiny"

# The world's vocabulary, scenes and questions live in playground.tiny_scenes; the builder turns them into
# images, LLaVA-format data, tokenizers and models.
from playground.tiny_scenes import (  # noqa: E402
    ANSWER_CHOICES, CATEGORIES, COLORS, GRID, IMAGE_TOKEN, MAX_OBJECTS, NUMBER_WORDS, QUESTION_TEMPLATES, SHAPES,
    SHORT_ANSWER_PROMPT, Scene, ask, caption, render_scene, sample_scene, scene_words, short_form, slot_words,
)

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

@dataclass(frozen=True)
class WorldParams:
    """Every knob of the build; the manifest stores them and a change triggers a rebuild."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    n_pretrain: int = 2000
    n_sft: int = 3000
    n_eval: int = 1500
    text_only_ratio: float = 0.05
    short_answer_ratio: float = 0.7
    vocab_size: int = 1024
    llm_hidden: int = 128
    llm_intermediate: int = 344
    llm_layers: int = 4
    llm_heads: int = 4
    # Language pretraining of the tiny LLaMA on "scene texts" (scene words where the image will sit, then a
    # caption or a chat about the scene), from scenes of its own (never the SFT or evaluation scenes).
    lm_scenes: int = 2000
    lm_steps: int = 220
    lm_batch: int = 24
    lm_lr: float = 3e-3
    clip_hidden: int = 128
    clip_layers: int = 4
    clip_heads: int = 4
    clip_projection_dim: int = 64
    clip_text_hidden: int = 64
    clip_text_layers: int = 2
    clip_vocab_size: int = 704
    # Contrastive training on the pretraining images (0: random CLIP), matched with their objects' colour and shape
    # (``clip_text``). A random tower's patch features barely vary with the image; trained, each says what covers
    # its patch.
    clip_steps: int = 150
    # Std of the vision tower's position embeddings at initialisation (0: transformers' default, 0.02); 0.5 makes
    # them a sizeable part of every token, as in a trained ViT. Measured: with 0.02, DualSpeed's count accuracy
    # stayed at chance (27% and 31% in two runs; Baseline 92%), with 0.5 it reached 54%. DivPrune keeps tokens of
    # about as many objects either way (2.7 of 3, 3.1 of 4 on layer -2 features), so what changes is likely what
    # the kept tokens say: with positions in them, tokens of different identical objects differ.
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
    if params.image_size < GRID * 8:
        raise ValueError(f"image_size={params.image_size} is too small to draw a {GRID}x{GRID} grid "
                         f"(need >= {GRID * 8})")
    for name in ("n_pretrain", "n_sft", "n_eval"):
        if getattr(params, name) < len(CATEGORIES):
            raise ValueError(f"{name}={getattr(params, name)} must be at least {len(CATEGORIES)}")
    return params


# ----------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------


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

# ----------------------------------------------------------------------------------------------
# Language pretraining corpus: scene texts
# ----------------------------------------------------------------------------------------------


def lm_chat(scene: Scene, params: WorldParams, rng: random.Random) -> list[dict]:
    """A chat asking every question type once (random order) about ``scene``, image first."""
    turns = []
    for t, category in enumerate(rng.sample(CATEGORIES, len(CATEGORIES))):
        question, answer, long = ask(scene, category, rng)
        if rng.random() < params.short_answer_ratio:
            question, reply = f"{question}\n{SHORT_ANSWER_PROMPT}", short_form(answer)
        else:
            reply = long
        turns += [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if t == 0 else question},
                  {"from": "gpt", "value": reply}]
    return turns


def scene_text(turns: list[dict], template: str, slots, tokenizer) -> tuple[Any, Any]:
    """(input_ids, labels) of a conversation tokenized exactly as LLaVA's training data is (answers supervised),
    with its image placeholder replaced by ``slots``, the scene's word ids (one per visual token, unsupervised)."""
    import torch

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.train.data import preprocess

    encoded = preprocess([turns], tokenizer, template, has_image=True)
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    at = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    return (torch.cat([ids[:at], slots, ids[at + 1:]]),
            torch.cat([labels[:at], torch.full_like(slots, IGNORE_INDEX), labels[at + 1:]]))


def scene_documents(params: WorldParams, tokenizer) -> list[tuple[Any, Any]]:
    """(input_ids, labels) of the LM corpus: for each of ``lm_scenes`` scenes of its own, a caption in the
    'plain' template and a chat in the tiny-world template, tokenized exactly as LLaVA's training data is
    (answers supervised), with the image placeholder replaced by the scene's words, one per visual token;
    plus the text-only chats of the SFT mix."""
    import torch

    from llava.train.data import preprocess

    ids_of = {word: tokenizer.convert_tokens_to_ids(word) for word in scene_words()}
    rng = random.Random(f"lm-{params.seed}")
    docs = []
    for i in range(params.lm_scenes):
        scene = sample_scene(rng)
        slots = torch.tensor([ids_of[w] for w in slot_words(scene, params.image_size, params.patch_size)])
        plain = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": caption(scene)}]
        docs.append(scene_text(plain, "plain", slots, tokenizer))
        docs.append(scene_text(lm_chat(scene, params, rng), CONV_MODE, slots, tokenizer))
    n_text = round(params.lm_scenes * params.text_only_ratio)
    for i in range(n_text):
        encoded = preprocess([sft_text_record(i, params, rng)["conversations"]], tokenizer, CONV_MODE)
        docs.append((encoded["input_ids"][0], encoded["labels"][0]))
    return docs


def tokenizer_sentences(seed: int) -> list[str]:
    """Lines for SentencePiece training: every phrasing of the world, the chat scaffolding of the templates
    the tiny world is used with and the answer vocabulary. Drawn from a fixed-size sample so that the
    tokenizer does not depend on the data-set sizes of the build."""
    from llava.conversation import conv_templates

    rng = random.Random(f"tokenizer-corpus-{seed}")
    params = WorldParams()
    lines = [caption(sample_scene(rng)) for _ in range(500)]
    for i in range(2000):
        record = sft_visual_record(i, "x.png", sample_scene(rng), params, rng) if i % 20 else \
            sft_text_record(i, params, rng)
        for turn in record["conversations"]:
            lines += [ln for ln in turn["value"].split("\n") if ln and ln != IMAGE_TOKEN]
    # The templates' scaffolding as often as a chat corpus would hold it, so that its words become single pieces.
    scaffolding = [conv_templates[name].system for name in ("vicuna_v1", "llava_v1", CONV_MODE)]
    lines += (scaffolding + ["USER:", "ASSISTANT:", SHORT_ANSWER_PROMPT]) * 300
    lines += [" ".join(NUMBER_WORDS), " ".join(str(i) for i in range(100))]
    for templates in QUESTION_TEMPLATES.values():
        lines += list(templates)
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
        user_defined_symbols=scene_words(),
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


def pad_batch(docs: list[tuple[Any, Any]], pad_id: int) -> dict:
    """Right-padded input_ids / labels / attention_mask of (input_ids, labels) pairs."""
    import torch

    longest = max(len(ids) for ids, _ in docs)
    input_ids = torch.full((len(docs), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(docs), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(docs), longest), dtype=torch.long)
    for row, (ids, lab) in enumerate(docs):
        input_ids[row, : len(ids)], labels[row, : len(ids)], mask[row, : len(ids)] = ids, lab, 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


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
    docs = scene_documents(params, transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=False))
    generator = torch.Generator().manual_seed(params.seed)

    def batches() -> Iterator[dict]:
        while True:
            picks = torch.randint(len(docs), (params.lm_batch,), generator=generator).tolist()
            yield pad_batch([docs[i] for i in picks], pad_id=0)

    losses = train_loop(model, batches(), params.lm_steps, params.lm_lr, "tiny-llama LM pretraining")
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(model_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()), "lm_documents": len(docs),
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


def clip_text(scene: Scene) -> str:
    """What the tiny CLIP is trained to match an image with: the objects' colour and shape, not their number.
    Each patch feature then says what covers that patch, like a real CLIP's local features, and the number of
    objects is only in how many patches say so (the LLM counts them; a pruned view cannot)."""
    return f"a {scene[0]['color']} {scene[0]['shape']}"


def build_clip(out: Path, params: WorldParams, text_info: dict) -> dict:
    """Create the tiny CLIP, briefly train it contrastively on the pretraining images, save it."""
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
        scenes = json.loads((out / "scenes.json").read_text())
        texts = tokenizer([clip_text(scenes[r["image"]]) for r in records], padding=True,
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
        "grid": GRID,
        "max_objects": MAX_OBJECTS,
        "conv_mode": CONV_MODE,
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
