"""The tiny world's two tokenizers, trained offline on one synthetic corpus.

* the tiny LLaMA's: a Llama-style SentencePiece BPE (with one user-defined piece per scene word), shipped with
  a ``LlamaTokenizer`` config and transformers' own ``tokenizer.json`` conversion, checked against SentencePiece;
* the tiny CLIP text tower's: a CLIP-style byte-level BPE ('</w>' word ends, lower-cased), learnt here by a
  small deterministic BPE.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from playground.tiny_scenes import (
    ANSWER_CHOICES, IMAGE_TOKEN, NUMBER_WORDS, QUESTION_TEMPLATES, SHORT_ANSWER_PROMPT, caption, sample_scene,
    scene_words, short_form,
)
from playground.world_data import CONV_MODE, sft_text_record, sft_visual_record
from playground.world_params import WorldParams

if TYPE_CHECKING:
    import sentencepiece as spm


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


def check_llama_tokenizer(model_dir: Path, processor: spm.SentencePieceProcessor, samples: list[str]) -> None:
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
