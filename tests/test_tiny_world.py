"""The embedded tiny world: tokenizer, models, data files, eval key and the scorer."""

import json
import random
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from llava.conversation import conv_templates
from llava.eval import eval_tiny_world as scorer
from playground import build_tiny_world as tw
from playground import tiny_scenes as ts
from playground.world_data import CONV_MODE
from playground.world_llama import scene_text

SYSTEM = conv_templates["vicuna_v1"].system
SHORT = "\nAnswer the question using a single word or phrase."


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def manifest(tiny_world) -> dict:
    return json.loads((tiny_world / "world.json").read_text())


@pytest.fixture(scope="module")
def scenes(tiny_world) -> dict:
    return json.loads((tiny_world / "scenes.json").read_text())


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_special_ids_and_size(tiny_tokenizer, tiny_llm_path, manifest):
    tok = tiny_tokenizer
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None
    assert len(tok) == manifest["vocab_size"] == manifest["params"]["vocab_size"] == 1024
    ids = tok("Red").input_ids
    assert ids[0] == 1 and ids[-1] != 2  # add_bos_token, no eos
    fast = transformers.AutoTokenizer.from_pretrained(str(tiny_llm_path), use_fast=True)
    text = f"{SYSTEM} USER: <image>\nHow many shapes are there?{SHORT} ASSISTANT: 3</s>"
    assert fast(text).input_ids == tok(text).input_ids


def test_tokenizer_matches_sentencepiece_and_round_trips(tiny_tokenizer, tiny_llm_path, tiny_world):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_llm_path / "tokenizer.model"))
    assert sp.get_piece_size() == len(tiny_tokenizer)
    sft = json.loads((tiny_world / "sft.json").read_text())
    texts = [turn["value"] for rec in sft[:200] for turn in rec["conversations"]]
    texts += ["Zürich 2024: naïve café  (double  space)\ttab", "日本語 ✓"]
    for text in texts:
        ids = tiny_tokenizer(text).input_ids
        assert ids == [1] + sp.encode(text), text
        assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_is_compact_on_the_chat_scaffolding(tiny_tokenizer):
    tok = tiny_tokenizer
    # one piece per word of the Vicuna system prompt, punctuation and "'s" apart: 29 + BOS
    assert len(tok(SYSTEM).input_ids) == 30
    assert tok.convert_ids_to_tokens(tok("ASSISTANT: ").input_ids) == ["<s>", "\u2581ASSISTANT", ":", "\u2581"]
    assert tok.convert_ids_to_tokens(tok("USER:").input_ids) == ["<s>", "\u2581US", "ER", ":"]
    assert tok.convert_ids_to_tokens(tok("</s>USER:").input_ids) == ["<s>", "</s>", "USER", ":"]
    assert tok.convert_ids_to_tokens(tok("Three red circles.", add_special_tokens=False).input_ids) == [
        "\u2581Three", "\u2581red", "\u2581circles", "."]
    # every scene word is one piece of its own
    words = ts.scene_words()
    assert [tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(w)) for w in words] == words
    assert len(set(tok.convert_tokens_to_ids(words))) == len(words) == 19
    assert tok.convert_ids_to_tokens(tok("12", add_special_tokens=False).input_ids) == ["\u2581", "1", "2"]


def _ids_with_image(prompt: str, tok) -> list[int]:
    """Like LLaVA's tokenizer_image_token: chunks tokenized apart, BOS kept once, -200 between."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [-200] + chunk[1:]
    return ids


@pytest.mark.parametrize("first_turn", ["<image>\nWhat color is the shape at the center?", "How many shapes?\n<image>", "What is 2 plus 2?"])
def test_upstream_v1_target_masking_arithmetic_is_exact(tiny_tokenizer, first_turn):
    """Upstream LLaVA's preprocess_v1 length bookkeeping (legacy=False branch) lands exactly on
    the answers with this tokenizer, as it does with Vicuna's."""
    tok = tiny_tokenizer
    answers = ["Red", "There are 3 shapes."]
    conv = f"{SYSTEM} USER: {first_turn} ASSISTANT: {answers[0]}</s>USER: Is there a blue square? ASSISTANT: {answers[1]}</s>"
    ids = _ids_with_image(conv, tok)
    keep = [False] * len(ids)
    cur = 1
    sep = " ASSISTANT: "
    for i, rou in enumerate(conv.split("</s>")):
        if rou == "":
            break
        head = rou.split(sep)[0] + sep
        round_len = len(_ids_with_image(rou, tok))
        instruction_len = len(_ids_with_image(head, tok)) - 2
        if i != 0:
            round_len -= 1
            instruction_len -= 1
        keep[cur + instruction_len: cur + round_len] = [True] * (round_len - instruction_len)
        cur += round_len
    assert cur == len(ids)
    kept = [t for t, k in zip(ids, keep) if k]
    expected = []
    for a in answers:
        expected += tok(a, add_special_tokens=False).input_ids + [2]
    assert kept == expected


# ---------------------------------------------------------------- models


def test_clip_vision_tower_loads_all_saved_weights(tiny_clip_path, manifest):
    vision, info = transformers.CLIPVisionModel.from_pretrained(str(tiny_clip_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    full = transformers.CLIPModel.from_pretrained(str(tiny_clip_path))
    full_sd = full.vision_model.state_dict()
    for name, tensor in vision.state_dict().items():
        assert torch.equal(tensor, full_sd[name.removeprefix("vision_model.")]), name
    assert torch.equal(vision.state_dict()["embeddings.patch_embedding.weight"],
                       full.state_dict()["vision_model.embeddings.patch_embedding.weight"])
    assert full.text_model.embeddings.token_embedding.weight.shape == (704, 64)
    cfg = vision.config
    assert (cfg.image_size, cfg.patch_size, cfg.hidden_size, cfg.num_hidden_layers) == (64, 8, 128, 4)
    processor = transformers.CLIPImageProcessor.from_pretrained(str(tiny_clip_path))
    assert processor.crop_size["height"] == processor.crop_size["width"] == 64
    image = Image.open(tiny_clip_path.parents[1] / "images" / "eval" / "000000.png")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    out = vision(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == 5 and out.hidden_states[-2].shape == (1, 65, 128)
    assert manifest["clip"]["num_patches"] == 64


def test_clip_text_tokenizer_matches_text_config(tiny_clip_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_clip_path))
    cfg = transformers.CLIPConfig.from_pretrained(str(tiny_clip_path)).text_config
    ids = tok("What color is the RED circle?").input_ids
    assert ids[0] == cfg.bos_token_id == 702 and ids[-1] == cfg.eos_token_id == 703
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["what</w>", "color</w>", "is</w>", "the</w>", "red</w>",
                                                    "circle</w>", "?</w>"]
    assert len(tok) == cfg.vocab_size == 704


def _scene_answer_accuracy(model, tok, n: int = 60) -> dict:
    """Teacher-forced choice accuracy of the bare LM on scene texts (scene words where the image goes)."""
    rng = random.Random(12345)
    ids_of = {w: tok.convert_tokens_to_ids(w) for w in ts.scene_words()}
    hits = {c: 0 for c in ts.CATEGORIES}
    for i in range(n):
        scene, category = ts.sample_scene(rng), ts.CATEGORIES[i % len(ts.CATEGORIES)]
        question, answer, _ = ts.ask(scene, category, rng)
        slots = torch.tensor([ids_of[w] for w in ts.slot_words(scene, 64, 8)])
        scores = []
        for choice in ts.ANSWER_CHOICES[category]:
            turns = [{"from": "human", "value": f"<image>\n{question}{SHORT}"},
                     {"from": "gpt", "value": ts.short_form(choice)}]
            ids, labels = scene_text(turns, CONV_MODE, slots, tok)
            with torch.no_grad():
                logp = model(ids[None]).logits[0, :-1].log_softmax(-1)
            target = labels[1:]
            keep = target != -100
            scores.append(logp[keep].gather(1, target[keep, None]).sum().item())
        hits[category] += ts.ANSWER_CHOICES[category][scores.index(max(scores))] == answer
    return {c: h / (n // len(ts.CATEGORIES)) for c, h in hits.items()}


def test_tiny_llama_loads_and_reads_scene_texts(tiny_llm_path, tiny_tokenizer, manifest):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llm_path)).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (1024, 128, 344, 4)
    assert (cfg.num_attention_heads, cfg.max_position_embeddings, cfg.tie_word_embeddings) == (4, 2048, False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert manifest["llama"]["loss_last"] < manifest["llama"]["loss_first"] / 5
    # language pretraining gave it the skill the VQA needs: answering from scene words (chance 17/25/33%)
    accuracy = _scene_answer_accuracy(model, tiny_tokenizer)
    assert accuracy["color"] >= 0.8 and accuracy["shape"] >= 0.8 and accuracy["count"] >= 0.6, accuracy


# ---------------------------------------------------------------- data files


def test_pretrain_records_are_llava_pretrain_format(tiny_world, manifest, scenes):
    records = json.loads((tiny_world / "pretrain.json").read_text())
    assert len(records) == manifest["counts"]["pretrain"] == manifest["params"]["n_pretrain"]
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"id", "image", "conversations"}
        human, gpt = r["conversations"]
        assert human == {"from": "human", "value": "<image>\n"}
        assert gpt["from"] == "gpt" and gpt["value"] == ts.caption(scenes[r["image"]])
        assert (tiny_world / "images" / r["image"]).is_file()
    assert records[0]["conversations"][1]["value"].endswith(".")


def test_sft_records_are_mix665k_format(tiny_world, manifest):
    records = json.loads((tiny_world / "sft.json").read_text())
    n = manifest["params"]["n_sft"]
    assert len(records) == manifest["counts"]["sft"] == n
    assert len({r["id"] for r in records}) == n
    text_only = [r for r in records if "image" not in r]
    assert len(text_only) == manifest["counts"]["sft_text_only"] == round(0.05 * n)
    short = 0
    for r in records:
        turns = r["conversations"]
        assert 2 <= len(turns) <= 6 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        n_images = sum(t["value"].count("<image>") for t in turns)
        if "image" not in r:
            assert n_images == 0
            continue
        assert (tiny_world / "images" / r["image"]).is_file()
        first = turns[0]["value"]
        assert n_images == 1 and first.startswith("<image>\n")  # image first: a fixed offset in every sample
        short += SHORT in first
    n_visual = n - len(text_only)
    assert 0.6 < short / n_visual < 0.8


def test_eval_files_are_balanced_and_in_llava_question_format(tiny_world, manifest):
    questions = read_jsonl(tiny_world / "eval" / "questions.jsonl")
    key = read_jsonl(tiny_world / "eval" / "answers_key.jsonl")
    n = manifest["params"]["n_eval"]
    assert len(questions) == len(key) == n == 1500
    assert [q["question_id"] for q in questions] == [k["question_id"] for k in key] == list(range(n))
    for q, k in zip(questions, key):
        assert set(q) == {"question_id", "image", "text", "category"}
        assert q["text"].endswith(SHORT) and "<image>" not in q["text"]
        assert q["image"].startswith("eval/") and (tiny_world / "images" / q["image"]).is_file()
        assert q["category"] == k["category"] and k["answer"] in k["choices"]
    per_cat = {c: sum(k["category"] == c for k in key) for c in ("color", "count", "shape")}
    assert per_cat == {"color": 500, "count": 500, "shape": 500}
    # every answer of each type occurs, none dominates
    for category, choices in ts.ANSWER_CHOICES.items():
        answers = [k["answer"] for k in key if k["category"] == category]
        assert set(answers) == set(choices)
        assert max(answers.count(c) for c in choices) / len(answers) < 2 / len(choices)


COLOR_RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
             "yellow": (240, 210, 30), "purple": (150, 60, 200), "orange": (250, 140, 20)}


def test_eval_answers_follow_from_the_pixels(tiny_world, scenes):
    questions = read_jsonl(tiny_world / "eval" / "questions.jsonl")
    key = {k["question_id"]: k for k in read_jsonl(tiny_world / "eval" / "answers_key.jsonl")}
    for q in questions[:300]:
        scene = scenes[q["image"]]
        image = Image.open(tiny_world / "images" / q["image"]).convert("RGB")
        assert image.size == (64, 64)
        colors = set()
        for cell in range(16):  # 4x4 grid of 16-pixel cells: the middle pixel of each is object or background
            pixel = image.getpixel((cell % 4 * 16 + 8, cell // 4 * 16 + 8))
            if pixel != (245, 245, 245):
                colors.add(next(name for name, rgb in COLOR_RGB.items() if rgb == pixel))
        n_objects = sum(image.getpixel((c % 4 * 16 + 8, c // 4 * 16 + 8)) != (245, 245, 245) for c in range(16))
        answer = key[q["question_id"]]["answer"]
        assert len(colors) == 1 and 1 <= n_objects <= 4
        assert {"color": colors.pop(), "count": str(n_objects), "shape": scene[0]["shape"]}[q["category"]] == answer
        assert len({(s["color"], s["shape"]) for s in scene}) == 1 and len(scene) == n_objects


def test_slot_words_mark_the_patches_of_each_object():
    scene = [{"shape": "circle", "color": "red", "cell": 0}, {"shape": "circle", "color": "red", "cell": 15}]
    words = ts.slot_words(scene, 64, 8)
    obj = ts.object_word("red", "circle")
    assert len(words) == 64 and words.count(obj) == 8 and words.count(ts.BACKGROUND_WORD) == 56
    assert [i for i, w in enumerate(words) if w == obj] == [0, 1, 8, 9, 54, 55, 62, 63]
    assert ts.caption(scene) == "Two red circles." and ts.caption(scene[:1]) == "One red circle."


# ---------------------------------------------------------------- caching, locking, params


def test_ensure_built_is_cached(tiny_world):
    stamp = (tiny_world / "world.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert tw.ensure_built(tiny_world) == tiny_world
    assert time.perf_counter() - start < 1.0
    assert (tiny_world / "world.json").stat().st_mtime_ns == stamp
    assert tw.is_current(tiny_world, tw.make_params())
    assert not tw.is_current(tiny_world, tw.make_params(n_eval=12))


def test_bad_params_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown tiny-world parameter.*image_sz"):
        tw.make_params(image_sz=32)
    with pytest.raises(ValueError, match="image_size=60 must be a multiple of patch_size=8"):
        tw.make_params(image_size=60)


def test_small_build_waits_for_lock_and_honours_image_size(tmp_path, tiny_llm_path):
    root = tmp_path / "world"
    small = dict(image_size=32, patch_size=8, n_pretrain=8, n_sft=20, n_eval=8, lm_scenes=8, lm_steps=2, clip_steps=2,
                 clip_position_std=0.5)
    done = []
    (tmp_path / ".world.build-killed").mkdir()  # left over by a builder that died
    with tw.exclusive_lock(tw.lock_path(root)):
        worker = threading.Thread(target=lambda: done.append(tw.ensure_built(root, **small)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not root.exists()
    worker.join(timeout=120)
    assert done == [root.resolve()]
    manifest = json.loads((root / "world.json").read_text())
    assert manifest["counts"] == {"pretrain": 8, "sft": 20, "sft_text_only": 1, "eval_questions": 8, "images": 35}
    assert [p.name for p in tmp_path.iterdir()] == ["world"]
    assert Image.open(root / "images" / "pretrain" / "000000.png").size == (32, 32)
    vision = transformers.CLIPVisionModel.from_pretrained(str(root / "models" / "tiny-clip"))
    assert vision(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state.shape == (1, 17, 128)
    # position embeddings start at clip_position_std (0.5 here), not transformers' 0.02; 2 steps barely move them
    std = vision.embeddings.position_embedding.weight.std().item()
    assert std == pytest.approx(manifest["params"]["clip_position_std"], rel=0.15)
    # the tokenizers depend only on seed and vocab sizes: byte-identical to the default world's
    assert (root / "models" / "tiny-llama" / "tokenizer.model").read_bytes() == \
        (tiny_llm_path / "tokenizer.model").read_bytes()
    assert (root / "models" / "tiny-clip" / "vocab.json").read_bytes() == \
        (tiny_llm_path.parent / "tiny-clip" / "vocab.json").read_bytes()


# ---------------------------------------------------------------- scorer (generic: categories of any world)

CELLS = ["top left", "top center", "top right", "middle left", "center", "middle right",
         "bottom left", "bottom center", "bottom right"]

KEY = [
    {"question_id": 0, "answer": "red", "category": "color", "choices": ["red", "green", "blue", "yellow", "purple", "orange"]},
    {"question_id": 1, "answer": "blue", "category": "color", "choices": ["red", "green", "blue", "yellow", "purple", "orange"]},
    {"question_id": 2, "answer": "3", "category": "count", "choices": ["1", "2", "3", "4"]},
    {"question_id": 3, "answer": "yes", "category": "presence", "choices": ["yes", "no"]},
    {"question_id": 4, "answer": "no", "category": "presence", "choices": ["yes", "no"]},
    {"question_id": 5, "answer": "top left", "category": "position", "choices": CELLS},
]


def _answer(qid, text):
    return {"question_id": qid, "prompt": "p", "text": text, "answer_id": f"a{qid}", "model_id": "m"}


ANSWERS = [_answer(0, "Red."), _answer(1, "green"), _answer(2, "Three"), _answer(3, "Yes"), _answer(5, "The top-left")]


def test_normalize():
    assert scorer.normalize("  The Top-Left. ") == "top left"
    assert scorer.normalize("There are Three shapes!") == "there are 3 shapes"
    assert scorer.normalize("An orange") == "orange"


def test_score_exact_accuracies_and_missing():
    result = scorer.score(ANSWERS, KEY)
    acc = {c: s["accuracy"] for c, s in result["per_category"].items()}
    assert acc == {"color": 0.5, "count": 1.0, "presence": 0.5, "position": 1.0}
    assert (result["overall"]["correct"], result["overall"]["total"]) == (4, 6)
    assert result["overall"]["accuracy"] == pytest.approx(4 / 6)
    assert result["missing"] == [4] and result["n_missing"] == 1
    chance = {c: s["chance"] for c, s in result["per_category"].items()}
    assert chance == pytest.approx({"color": 1 / 6, "count": 1 / 4, "presence": 1 / 2, "position": 1 / 9})
    assert result["overall"]["chance"] == pytest.approx((2 / 6 + 1 / 4 + 2 / 2 + 1 / 9) / 6)
    table = scorer.format_table(result)
    assert "overall" in table and "66.67%" in table and "missing answers (counted wrong): 1 [4]" in table


def test_score_rejects_duplicate_and_unknown_ids():
    with pytest.raises(ValueError, match="duplicate question_id 3 in answers"):
        scorer.score(ANSWERS + [_answer(3, "no")], KEY)
    with pytest.raises(ValueError, match=r"not in the key, e.g. \[99\]"):
        scorer.score(ANSWERS + [_answer(99, "red")], KEY)
    with pytest.raises(ValueError, match="duplicate question_id 0 in key"):
        scorer.score(ANSWERS, KEY + KEY[:1])


def test_cli_writes_json(tmp_path, capsys):
    answers, key, out = tmp_path / "a.jsonl", tmp_path / "k.jsonl", tmp_path / "r" / "res.json"
    answers.write_text("".join(json.dumps(a) + "\n" for a in ANSWERS))
    key.write_text("".join(json.dumps(k) + "\n" for k in KEY))
    scorer.main(["--answers-file", str(answers), "--key-file", str(key), "--json-out", str(out)])
    assert json.loads(out.read_text())["overall"]["correct"] == 4
    assert "presence" in capsys.readouterr().out
    answers.write_text("{not json\n")
    with pytest.raises(SystemExit, match=r"a.jsonl:1: not valid JSON"):
        scorer.main(["--answers-file", str(answers), "--key-file", str(key)])
