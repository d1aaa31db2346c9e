"""Training data pipeline: label masks, image handling, batching, and clear errors on bad data."""
import copy
import json
import logging

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava import conversation as conversation_lib
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, SeparatorStyle
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_anyres_image_grid_shape,
    get_model_name_from_path,
    process_images,
    tokenizer_image_token,
)
from llava.train.arguments import DataArguments
from llava.train.data import (
    DataCollatorForSupervisedDataset,
    LazySupervisedDataset,
    make_supervised_data_module,
    preprocess,
    preprocess_multimodal,
)

CROP = 32
TWO_ROUNDS = [
    {"from": "human", "value": "What color is the circle?\n<image>"},
    {"from": "gpt", "value": "The circle is red."},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "There are two shapes."},
]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    """The tiny LLaMA tokenizer as train() configures it for v1 / plain (pad = unk)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


@pytest.fixture(scope="module")
def processor():
    return CLIPImageProcessor(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP})


def data_args(processor, path, folder, version="v1", **overrides):
    args = DataArguments(data_path=str(path), is_multimodal=True, image_folder=str(folder), image_aspect_ratio="pad")
    args.conv_version = version  # set by train() from --version
    args.image_processor = processor
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def write_data(tmp_path, records, images=("a.png",)):
    for name in images:
        Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def supervised_runs(labels):
    """Contiguous runs of supervised label values, as lists of token ids."""
    runs, current = [], []
    for value in labels.tolist() + [IGNORE_INDEX]:
        if value != IGNORE_INDEX:
            current.append(value)
        elif current:
            runs.append(current)
            current = []
    return runs


def upstream_v1_labels(prompt, input_ids, tokenizer):
    """Independent reference: upstream LLaVA's round-length arithmetic for v1 (tokenizers >= 0.14, legacy=False)."""
    labels = input_ids.clone()
    labels[:1] = IGNORE_INDEX
    cursor, sep = 1, " ASSISTANT: "
    for i, round_text in enumerate(prompt.split("</s>")):
        if not round_text:
            break
        instruction = round_text.split(sep)[0] + sep
        round_len = len(tokenizer_image_token(round_text, tokenizer))
        instruction_len = len(tokenizer_image_token(instruction, tokenizer)) - 2
        if i > 0:
            round_len, instruction_len = round_len - 1, instruction_len - 1
        labels[cursor:cursor + instruction_len] = IGNORE_INDEX
        cursor += round_len
    labels[cursor:] = IGNORE_INDEX
    assert cursor == len(input_ids)
    return labels


def test_v1_mask_supervises_exactly_the_answers_and_their_eos(tok, processor, tmp_path):
    args = data_args(processor, "unused", tmp_path)
    turns = preprocess_multimodal([copy.deepcopy(TWO_ROUNDS)], args)[0]
    assert turns[0]["value"] == "<image>\nWhat color is the circle?"
    out = preprocess([turns], tok, "v1", has_image=True)
    input_ids, labels = out["input_ids"][0], out["labels"][0]
    prompt = conversation_lib.conv_templates["v1"].system + (
        " USER: <image>\nWhat color is the circle? ASSISTANT: The circle is red.</s>"
        "USER: How many shapes are there? ASSISTANT: There are two shapes.</s>")
    assert input_ids.tolist() == tokenizer_image_token(prompt, tok)
    assert (input_ids == IMAGE_TOKEN_INDEX).sum() == 1 and input_ids[0] == tok.bos_token_id
    assert labels[input_ids == IMAGE_TOKEN_INDEX].item() == IGNORE_INDEX
    runs = supervised_runs(labels)
    assert [tok.decode(run) for run in runs] == ["The circle is red.</s>", "There are two shapes.</s>"]
    assert [run[-1] for run in runs] == [tok.eos_token_id] * 2
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], input_ids[supervised])
    assert torch.equal(labels, upstream_v1_labels(prompt, input_ids, tok))


def test_v1_text_only_matches_upstream_arithmetic(tok):
    turns = [{"from": "human", "value": "What is 2 plus 3?"}, {"from": "gpt", "value": "2 plus 3 is 5."}]
    out = preprocess([turns], tok, "vicuna_v1", has_image=False)
    system = conversation_lib.conv_templates["vicuna_v1"].system
    prompt = system + " USER: What is 2 plus 3? ASSISTANT: 2 plus 3 is 5.</s>"
    assert out["input_ids"][0].tolist() == tok(prompt).input_ids
    assert torch.equal(out["labels"][0], upstream_v1_labels(prompt, out["input_ids"][0], tok))
    assert [tok.decode(run) for run in supervised_runs(out["labels"][0])] == ["2 plus 3 is 5.</s>"]


def test_plain_supervises_only_the_caption_and_newline(tok, processor, tmp_path):
    caption = "A red circle at the top left."
    turns = [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": caption}]
    turns = preprocess_multimodal([turns], data_args(processor, "unused", tmp_path, "plain"))[0]
    out = preprocess([turns], tok, "plain", has_image=True)
    input_ids, labels = out["input_ids"][0], out["labels"][0]
    expected = tokenizer_image_token("<image>" + caption + "\n", tok)
    assert input_ids.tolist() == expected and expected[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2].tolist() == [IGNORE_INDEX, IGNORE_INDEX]
    assert labels[2:].tolist() == expected[2:]
    assert tok.decode(labels[2:]) == caption + "\n"


def test_image_token_wrapping_with_im_start_end(processor, tmp_path):
    args = data_args(processor, "unused", tmp_path, mm_use_im_start_end=True)
    turns = preprocess_multimodal([copy.deepcopy(TWO_ROUNDS)], args)[0]
    assert turns[0]["value"] == "<im_start><image><im_end>\nWhat color is the circle?"
    assert turns[2]["value"] == "How many shapes are there?"
    args = data_args(processor, "unused", tmp_path, "v1_mmtag", mm_use_im_start_end=True)
    turns = preprocess_multimodal([copy.deepcopy(TWO_ROUNDS)], args)[0]
    assert turns[0]["value"] == "<Image><im_start><image><im_end></Image>\nWhat color is the circle?"


@pytest.mark.parametrize("template,closing", [
    ("llava_llama_2", " </s>"), ("mistral_instruct", " </s>"), ("chatml_direct", "<|im_end|>"), ("mpt", "<|im_end|>"),
])
def test_other_templates_supervise_answers_and_closing_separator(tok, template, closing):
    turns = [{"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "Red."},
             {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "Two."}]
    labels = preprocess([turns], tok, template, has_image=True)["labels"][0]
    assert [tok.decode(run) for run in supervised_runs(labels)] == ["Red." + closing, "Two." + closing]


def glued_template(tok):
    """A template whose answer boundary falls inside a single token, so labels cannot be aligned.

    Returns the template and the answer text: the role ends with the first two letters of a word
    that the tokenizer keeps as one piece, the answer starts with the rest of that word.
    """
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    word = next(piece[1:] for piece_id, piece in enumerate(pieces)
                if piece.startswith("\u2581") and len(piece) >= 4 and piece[1:].isalpha()
                and piece_id in tok("Q:x " + piece[1:] + " end").input_ids)
    conv = Conversation(system="", roles=("Q:", " " + word[:2]), messages=[], offset=0,
                        sep_style=SeparatorStyle.MPT, sep="", version="glued")
    return conv, word[2:] + " end"


def test_tokenization_mismatch_ignores_the_sample_and_names_it(tok, caplog):
    conv, suffix = glued_template(tok)
    turns = [{"from": "human", "value": "x"}, {"from": "gpt", "value": suffix}]
    with caplog.at_level(logging.WARNING):
        out = preprocess([turns], tok, conv, has_image=False, sample_ids=["bad-7"])
    assert (out["labels"][0] == IGNORE_INDEX).all()
    assert "tokenization mismatch in sample 'bad-7'" in caplog.text


def test_dataset_rejects_a_template_that_misaligns_most_samples(tok, processor, tmp_path, monkeypatch):
    conv, suffix = glued_template(tok)
    monkeypatch.setitem(conversation_lib.conv_templates, "glued", conv)
    records = [{"id": f"g{i}", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": suffix}]}
               for i in range(3)]
    path = write_data(tmp_path, records, images=())
    with pytest.raises(ValueError, match=r"3 of 3 checked samples.*id 'g0'"):
        LazySupervisedDataset(str(path), tok, data_args(processor, path, tmp_path, "glued"))
    args = data_args(processor, path, tmp_path, "glued")
    dataset = LazySupervisedDataset(str(path), tok, args, eager_check_samples=0)
    assert (dataset[0]["labels"] == IGNORE_INDEX).all()  # 1 of at least 100: tolerated
    with pytest.raises(ValueError, match=r"2 of 2 samples read so far.*id 'g1'"):
        dataset[1]


def test_mixed_batch_with_text_only_sample(tok, processor, tmp_path):
    records = [
        {"id": "img", "image": "a.png", "conversations": copy.deepcopy(TWO_ROUNDS)},
        {"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    ]
    path = write_data(tmp_path, records)
    module = make_supervised_data_module(tok, data_args(processor, path, tmp_path))
    dataset, collator = module["train_dataset"], module["data_collator"]
    assert module["eval_dataset"] is None and len(dataset) == 2
    items = [dataset[0], dataset[1]]
    assert items[1]["image"].shape == (3, CROP, CROP) and not items[1]["image"].any()
    assert IMAGE_TOKEN_INDEX not in items[1]["input_ids"].tolist()
    batch = collator(items)
    lengths = [len(item["input_ids"]) for item in items]
    assert batch["images"].shape == (2, 3, CROP, CROP)
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["input_ids"][short, min(lengths):] == tok.pad_token_id).all()
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert dataset.lengths == [6 + 4 + 5 + 4 + 128, 2] and dataset.modality_lengths == [19, -2]


def test_attention_mask_ignores_pad_id_collisions(tok):
    unk = tok.pad_token_id
    items = [{"input_ids": torch.tensor([1, unk, 5]), "labels": torch.tensor([-100, -100, 5])},
             {"input_ids": torch.tensor([1, 7]), "labels": torch.tensor([-100, 7])}]
    batch = DataCollatorForSupervisedDataset(tok)(items)
    assert batch["attention_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["labels"].tolist() == [[-100, -100, 5], [-100, 7, -100]]
    assert "images" not in batch


def test_truncation_to_model_max_length(tok, processor, tmp_path):
    short_tok = copy.deepcopy(tok)
    short_tok.model_max_length = 16
    path = write_data(tmp_path, [{"id": "a", "image": "a.png", "conversations": copy.deepcopy(TWO_ROUNDS)}])
    item = LazySupervisedDataset(str(path), short_tok, data_args(processor, path, tmp_path,
                                                                 max_truncated_fraction=1.0))[0]
    assert item["input_ids"].shape == (16,) and item["labels"].shape == (16,)


def test_samples_whose_answer_is_cut_off_are_named_counted_and_limited(tok, processor, tmp_path, caplog):
    """An answer that fits the text but not the text plus the image's visual tokens trains on nothing: the sample is
    named and counted, and above --max_truncated_fraction the dataset refuses to start."""
    records = [{"id": f"s{i}", "image": "a.png", "conversations": copy.deepcopy(TWO_ROUNDS)} for i in range(2)]
    records[1]["conversations"][0]["value"] = "What color is the circle? " + "Look closely. " * 30 + "\n<image>"
    path = write_data(tmp_path, records)
    roomy = LazySupervisedDataset(str(path), tok, data_args(processor, path, tmp_path))
    first_answer = [int((roomy[i]["labels"] != IGNORE_INDEX).nonzero()[0]) for i in range(2)]
    assert first_answer[0] < first_answer[1]
    short_tok = copy.deepcopy(tok)
    short_tok.model_max_length = first_answer[1] + 10  # both answers fit the text; s1's not with 64 image tokens
    args = data_args(processor, path, tmp_path, image_token_count=64, max_truncated_fraction=1.0)
    with caplog.at_level("WARNING"):
        dataset = LazySupervisedDataset(str(path), short_tok, args)
        dataset[0], dataset[1]
    assert dataset.truncated == 1 and "sample index 1 (id 's1'): its whole answer lies beyond" in caplog.text
    assert first_answer[0] + 63 < short_tok.model_max_length  # s0 keeps its answer
    with pytest.raises(ValueError, match=r"data\.json: 1 of 2 checked samples \(50\.0%\) have their whole answer "
                                         r"cut off by "
                                         r"model_max_length .*latest: sample index 1 \(id 's1'\)"):
        LazySupervisedDataset(str(path), short_tok, data_args(processor, path, tmp_path, image_token_count=64))


@pytest.mark.parametrize("record,message", [
    ({"id": "a"}, r"sample index 0 \(id 'a'\): missing or empty 'conversations'"),
    ({"id": "b", "conversations": [{"value": "hi"}]}, r"id 'b'\): turn 0 needs 'from' and 'value'"),
    ({"id": "c", "conversations": [{"from": "gpt", "value": "hi"}]}, r"id 'c'\): turn 0 is from 'gpt'"),
    ({"id": "d", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     r"id 'd'\): turn 1 is from 'human'"),
    ({"id": "e", "image": "a.png", "conversations": [{"from": "human", "value": "<image><image>"}]},
     r"id 'e'\): has an 'image' but 2 '<image>'"),
    ({"id": "f", "conversations": [{"from": "human", "value": "<image>\nq"}]},
     r"id 'f'\): has 1 '<image>'.*no 'image'"),
    ({"id": "g", "image": "a.png", "conversations": [{"from": "human", "value": "q"}]},
     r"id 'g'\): has an 'image' but 0"),
])
def test_bad_records_are_named(tok, processor, tmp_path, record, message):
    good = {"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = write_data(tmp_path, [record, good])
    with pytest.raises(ValueError, match=message):
        LazySupervisedDataset(str(path), tok, data_args(processor, path, tmp_path))


def test_missing_and_unreadable_images_name_file_and_sample(tok, processor, tmp_path):
    records = [{"id": "gone", "image": "missing.png", "conversations": copy.deepcopy(TWO_ROUNDS)},
               {"id": "junk", "image": "junk.png", "conversations": copy.deepcopy(TWO_ROUNDS)}]
    path = write_data(tmp_path, records, images=())
    (tmp_path / "junk.png").write_bytes(b"not an image")
    dataset = LazySupervisedDataset(str(path), tok, data_args(processor, path, tmp_path))
    with pytest.raises(FileNotFoundError, match=r"missing\.png of sample index 0 \(id 'gone'\)"):
        dataset[0]
    with pytest.raises(ValueError, match=r"cannot read image file .*junk\.png of sample index 1 \(id 'junk'\)"):
        dataset[1]


def test_anyres_items_and_image_sizes(tok, processor, tmp_path):
    records = [{"id": "a", "image": "a.png", "conversations": copy.deepcopy(TWO_ROUNDS)},
               {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo."}]}]
    path = write_data(tmp_path, records)
    args = data_args(processor, path, tmp_path, image_aspect_ratio="anyres",
                     image_grid_pinpoints="[(32, 64), (64, 32), (64, 64)]")
    dataset = LazySupervisedDataset(str(path), tok, args)
    batch = DataCollatorForSupervisedDataset(tok)([dataset[0], dataset[1]])
    assert [tuple(image.shape) for image in batch["images"]] == [(3, 3, CROP, CROP), (1, 3, CROP, CROP)]
    assert batch["image_sizes"] == [(40, 20), (CROP, CROP)]


def test_tokenizer_image_token_round_trip(tok):
    ids = tokenizer_image_token("<image>\nhello there<image>end", tok)
    assert ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert ids.count(IMAGE_TOKEN_INDEX) == 2 and ids.count(tok.bos_token_id) == 1
    second = ids.index(IMAGE_TOKEN_INDEX, 2)
    assert ids[2:second] == tok("\nhello there").input_ids[1:]
    assert ids[second + 1:] == tok("end").input_ids[1:]
    assert tokenizer_image_token("no image here", tok) == tok("no image here").input_ids
    tensor = tokenizer_image_token("<image>", tok, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.tolist() == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    with pytest.raises(ValueError, match="Unsupported tensor type"):
        tokenizer_image_token("x", tok, return_tensors="np")


def test_process_images_pad_shape_and_border_colour(processor):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    pixels = process_images([image, image], processor, DataArguments(image_aspect_ratio="pad"))
    assert pixels.shape == (2, 3, CROP, CROP)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    border = (torch.tensor([int(m * 255) for m in processor.image_mean]) / 255 - mean) / std
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    assert torch.allclose(pixels[0, :, 0, 0], border, atol=1e-5)  # top rows are padding
    assert torch.allclose(pixels[0, :, CROP // 2, CROP // 2], red, atol=1e-5)
    assert process_images([image], processor, DataArguments(image_aspect_ratio="square")).shape == (1, 3, CROP, CROP)


def test_anyres_grid_shape_accepts_list_and_string_forms():
    for pinpoints in ([(336, 672), (672, 336)], "[(336,672),(672,336)]", "[[336,672],[672,336]]"):
        assert get_anyres_image_grid_shape((1000, 400), pinpoints, 336) == (2, 1)
        assert get_anyres_image_grid_shape((300, 900), pinpoints, 336) == (1, 2)
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        get_anyres_image_grid_shape((10, 10), "[(1,", 14)


def test_model_name_from_path():
    assert get_model_name_from_path("/ckpt/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("runs/llava-lora/checkpoint-500") == "llava-lora_checkpoint-500"


def test_keywords_stopping_criteria_is_per_row(tok):
    keyword_ids = tok("###").input_ids[1:]
    prompt = torch.tensor([[1, 5, 6], [1, 5, 6]])
    criteria = KeywordsStoppingCriteria(["###"], tok, prompt)
    assert criteria(prompt, None).tolist() == [False, False]
    generated = torch.cat([prompt, torch.tensor([[7] + keyword_ids, [7] + [8] * len(keyword_ids)])], dim=1)
    assert criteria(generated, None).tolist() == [True, False]
