"""Evaluation runs keep their answers: resuming an answers file, skipping unreadable images (llava.eval.answers_file).

The runners answer with an untrained LLaVA built from the tiny world (tiny LLaMA + tiny CLIP + random projector),
saved as a full checkpoint; the answers' text does not matter here, only which questions get answered and how often.
"""
import argparse
import base64
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.eval import answers_file, model_vqa_loader, model_vqa_mmbench, model_vqa_science

from conftest import REPO, make_model_args  # noqa: E402

FLAGS = ["--device", "cpu", "--temperature", "0", "--max_new_tokens", "2", "--conv-mode", "tiny_world"]


@pytest.fixture(scope="module")
def llava_dir(tiny_llm_path, tiny_clip_path, tmp_path_factory) -> Path:
    """An untrained tiny LLaVA saved with save_pretrained (with its tokenizer), as a full checkpoint is."""
    import transformers

    from llava.model import LlavaLlamaForCausalLM

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(str(tiny_llm_path))
    model.get_model().initialize_vision_modules(make_model_args(tiny_clip_path))
    model.config.update(dict(mm_use_im_patch_token=False, mm_use_im_start_end=False, tokenizer_padding_side="right",
                             tokenizer_model_max_length=2048))
    out = tmp_path_factory.mktemp("eval_resume") / "llava-tiny"
    model.save_pretrained(str(out))
    transformers.AutoTokenizer.from_pretrained(str(tiny_llm_path), use_fast=False).save_pretrained(str(out))
    return out


def parse(parser: argparse.ArgumentParser, model_dir: Path, **options) -> argparse.Namespace:
    argv = ["--model-path", str(model_dir), *FLAGS]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
    return parser.parse_args(argv)


def answered(path: Path, *fields: str) -> list:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [tuple(r[f] for f in fields) if len(fields) > 1 else r[fields[0]] for r in rows]


def copy_images(tiny_world: Path, questions: list, folder: Path) -> None:
    for q in questions:
        (folder / q["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_world / "images" / q["image"], folder / q["image"])


# --- the answers file on its own ---------------------------------------------------------------------------------

def test_a_truncated_last_line_is_dropped_with_a_notice(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 2, "text": "y"}\n{"question_id": 3, "te')
    assert answers_file.answered_keys(str(path)) == {(1,), (2,)}
    assert capsys.readouterr().out.count("dropping its unfinished last line") == 1
    assert path.read_text() == '{"question_id": 1, "text": "x"}\n{"question_id": 2, "text": "y"}\n'


def test_a_complete_last_record_without_newline_is_kept_and_ended(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": "a"}\n\n{"question_id": "b"}')
    assert answers_file.answered_keys(str(path)) == {("a",), ("b",)}
    assert "dropping" not in capsys.readouterr().out and path.read_text().endswith('"b"}\n')


def test_a_broken_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1}\nnot json\n{"question_id": 3}\n')
    with pytest.raises(ValueError, match=r"a.jsonl, line 2: .*--overwrite"):
        answers_file.answered_keys(str(path))


def test_keys_with_rounds_and_overwrite(tmp_path):
    path = tmp_path / "sub" / "a.jsonl"
    assert answers_file.answered_keys(str(path)) == set()
    out, done = answers_file.open_answers(str(path), overwrite=False, key_fields=("question_id", "round_id"))
    with out:
        answers_file.write_answer(out, {"question_id": 7, "round_id": 0})
        answers_file.write_answer(out, {"question_id": 7, "round_id": 1})
        assert path.read_text().count("\n") == 2  # flushed line by line
    assert done == set()
    assert answers_file.answered_keys(str(path), ("question_id", "round_id")) == {(7, 0), (7, 1)}
    out, done = answers_file.open_answers(str(path), overwrite=True)
    out.close()
    assert done == set() and path.read_text() == ""


def test_skipped_summary_counts_and_names():
    assert answers_file.skipped_summary([]) == ""
    line = answers_file.skipped_summary([(3, "r"), ("q9", "r")])
    assert line.startswith("2 question(s) skipped (unreadable image): ids 3, q9") and "\n" not in line
    assert "ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ...;" in answers_file.skipped_summary([(i, "r") for i in range(12)])


# --- model_vqa_loader ----------------------------------------------------------------------------------------------

def test_loader_skips_a_missing_image_and_resumes(tiny_world, llava_dir, tmp_path, capsys):
    """The command: the missing image's question is named and counted, the others answered once, exit status 1.
    Then, run again after the image appears: only that question is answered; a last line cut off by a kill is
    dropped and answered again; --overwrite starts over."""
    source = [json.loads(line) for line in open(tiny_world / "eval" / "questions.jsonl")][:5]
    images = tmp_path / "images"
    copy_images(tiny_world, source, images)
    missing = source[2]  # with --batch-size 2 it shares its batch with question 3
    (images / missing["image"]).unlink()
    qfile, out = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in source))
    options = dict(image_folder=images, question_file=qfile, answers_file=out, batch_size=2)

    flags = ["--model-path", str(llava_dir), *FLAGS] + [x for key, value in options.items()
                                                          for x in ("--" + key.replace("_", "-"), str(value))]
    proc = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1
    assert f"question {missing['question_id']}" in warnings[0] and missing["image"] in warnings[0]
    assert f"1 question(s) skipped (unreadable image): ids {missing['question_id']}" in proc.stderr
    assert answered(out, "question_id") == [q["question_id"] for q in source if q is not missing]
    first = out.read_text()

    def run(**extra):
        return model_vqa_loader.eval_model(parse(model_vqa_loader.build_parser(), llava_dir, **options, **extra))

    copy_images(tiny_world, [missing], images)
    assert run() == []
    printed = capsys.readouterr().out
    assert f"resuming: 4 of 5 questions already answered in {out}" in printed and "answered 1 questions" in printed
    assert out.read_text().startswith(first)
    assert sorted(answered(out, "question_id")) == sorted(q["question_id"] for q in source)

    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # a kill in the middle of the last line
    assert run() == []
    printed = capsys.readouterr().out
    assert "dropping its unfinished last line" in printed and "answered 1 questions" in printed
    assert sorted(answered(out, "question_id")) == sorted(q["question_id"] for q in source)  # each exactly once

    assert run(overwrite=True) == []
    printed = capsys.readouterr().out
    assert "resuming" not in printed and "answered 5 questions" in printed
    assert answered(out, "question_id") == [q["question_id"] for q in source]


# --- the ScienceQA and MMBench runners -----------------------------------------------------------------------------

def test_science_runner_resumes_and_skips_unreadable_images(tiny_world, llava_dir, tmp_path, capsys):
    source = [json.loads(line) for line in open(tiny_world / "eval" / "questions.jsonl")][:3]
    images = tmp_path / "images"
    copy_images(tiny_world, source, images)
    (images / source[1]["image"]).write_bytes(b"not a png")
    problems = [{"id": f"p{i}", "image": q["image"], "conversations": [{"from": "human", "value": "<image>\n" +
                                                                         q["text"]}]} for i, q in enumerate(source)]
    problems.append({"id": "text", "conversations": [{"from": "human", "value": "Say A or B."}]})
    qfile, out = tmp_path / "problems.json", tmp_path / "answers.jsonl"
    qfile.write_text(json.dumps(problems))
    args = parse(model_vqa_science.build_parser(), llava_dir, image_folder=images, question_file=qfile,
                 answers_file=out, batch_size=2, single_pred_prompt=True)

    assert [qid for qid, _ in model_vqa_science.main(args)] == ["p1"]
    assert "1 question(s) skipped (unreadable image): ids p1" in capsys.readouterr().err
    assert answered(out, "question_id") == ["p0", "p2", "text"]
    copy_images(tiny_world, [source[1]], images)
    assert model_vqa_science.main(args) == []
    assert "resuming: 3 of 4 questions already answered" in capsys.readouterr().out
    assert answered(out, "question_id") == ["p0", "p2", "text", "p1"]


def test_mmbench_runner_resumes_by_question_and_round(tiny_world, llava_dir, tmp_path, capsys):
    png = base64.b64encode((tiny_world / "images" / "eval" / "000000.png").read_bytes()).decode()
    rows = [{"index": 10, "question": "Which colour?", "hint": "", "A": "red", "B": "blue", "image": png},
            {"index": 11, "question": "Which shape?", "hint": "", "A": "circle", "B": "square", "image": "broken"}]
    tsv = tmp_path / "dev.tsv"
    with open(tsv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "answers.jsonl"
    args = parse(model_vqa_mmbench.build_parser(), llava_dir, question_file=tsv, answers_file=out, all_rounds=True,
                 single_pred_prompt=True)

    skipped = model_vqa_mmbench.main(args)
    assert [qid for qid, _ in skipped] == ["11 round 0", "11 round 1"]
    assert "2 question(s) skipped (unreadable image)" in capsys.readouterr().err
    assert answered(out, "question_id", "round_id") == [(10, 0), (10, 1)]
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:15])  # round 1 of question 10 cut off by a kill
    rows[1]["image"] = png
    with open(tsv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    assert model_vqa_mmbench.main(args) == []
    assert "resuming: 1 of 4 questions already answered" in capsys.readouterr().out
    assert answered(out, "question_id", "round_id") == [(10, 0), (10, 1), (11, 0), (11, 1)]
