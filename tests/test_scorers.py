"""Benchmark scorers and converters (llava/eval) against hand-worked examples, and the eval shell scripts' data
checks. No model is loaded."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import REPO
from llava.eval import (convert_answer_to_mme, convert_gqa_for_eval, convert_mmbench_for_submission,
                        convert_seed_for_submission, convert_vqav2_for_submission, eval_gqa, eval_mmbench, eval_mme,
                        eval_pope, eval_science_qa, eval_textvqa)
from llava.eval.choice_parse import parse_choice
from llava.eval.pope_metrics import PopeCounts, count_predictions, parse_yes_no, pope_metrics
from llava.eval.vqa_accuracy import soft_accuracy
from llava.eval.vqa_normalize import normalize_answer

BENCHMARKS = ("vqav2", "gqa", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed")


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_main(module, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


# ---- VQA normalisation and soft accuracy --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"), ("isnt", "isn't"), ("couldntve", "couldn't've"), ("The cat", "cat"),
    ("an Apple", "apple"), ("T-shirt", "t shirt"), ("yes, it is", "yes it is"), ("1,000", "1000"), ("3.5", "3.5"),
    ("none", "0"), ("its", "its"), ("  Hello!\n", "hello"), ("don't", "don't"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_by_hand(matches, expected):
    # m of 10 humans agree: m subsets keep m-1 of them, 10-m keep m; each scores min(k/3, 1).
    # m=2: (2 * 1/3 + 8 * 2/3) / 10 = 0.6;  m=3: (3 * 2/3 + 7 * 1) / 10 = 0.9;  m=1: 9 * 1/3 / 10 = 0.3.
    humans = ["dog"] * matches + ["cat"] * (10 - matches)
    assert soft_accuracy("Dog.", humans) == pytest.approx(expected)


def test_soft_accuracy_normalises_both_sides_and_needs_two_humans():
    assert soft_accuracy("Two", ["2", "2", "two", "3"] + ["x"] * 6) == pytest.approx(0.9)  # 3 agree
    with pytest.raises(ValueError, match="at least 2"):
        soft_accuracy("a", ["a"])


# ---- POPE -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Yes, there is a dog.", "yes"), ("No, there is not.", "no"), ("There is not a dog in the image.", "no"),
    ("Not at all", "no"), ("Yes. No.", "yes"), ("I see a noodle", "yes"),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_by_hand():
    # TP 3, FN 2, FP 1, TN 4.
    labels = ["yes"] * 5 + ["no"] * 5
    preds = ["yes", "yes", "yes", "no", "no"] + ["yes", "no", "no", "no", "no"]
    c = count_predictions(preds, labels)
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 2, 1, 4)
    m = pope_metrics(c)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)  # 0.6667
    assert m["yes_ratio"] == pytest.approx(0.4)


def test_pope_missing_prediction_counts_as_wrong():
    c = count_predictions(["yes", "no", None, None], ["yes", "no", "yes", "no"])
    assert c == PopeCounts(tp=1, tn=1, missing_yes=1, missing_no=1)
    m = pope_metrics(c)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (0.5, 1.0, 0.5, 0.25)
    assert m["f1"] == pytest.approx(2 / 3)


def pope_files(root: Path, answered: int):
    rows = [("a.jpg", "yes"), ("b.jpg", "no"), ("c.jpg", "yes")]
    write_jsonl(root / "coco" / "coco_pope_random.json",
                [{"question_id": i + 1, "image": img, "text": "Is there a dog?", "label": lab}
                 for i, (img, lab) in enumerate(rows)])
    questions = write_jsonl(root / "q.jsonl", [{"question_id": 100 + i, "image": img, "text": "Is there a dog?\nAnswer",
                                                "category": "random"} for i, (img, _) in enumerate(rows)])
    answers = write_jsonl(root / "a.jsonl", [{"question_id": 100 + i, "text": t} for i, t in
                                             enumerate(["Yes", "Yes, it is.", "No"][:answered])])
    return questions, answers


def test_eval_pope_files(tmp_path, capsys):
    questions, answers = pope_files(tmp_path, answered=2)
    r = eval_pope.evaluate(str(tmp_path / "coco"), str(questions), str(answers))
    # a.jpg yes->yes TP, b.jpg no->yes FP, c.jpg yes->missing (FN-like): acc 1/3, precision 1/2, recall 1/2.
    assert r["random"]["accuracy"] == pytest.approx(1 / 3)
    assert r["random"]["precision"] == pytest.approx(0.5)
    assert r["random"]["recall"] == pytest.approx(0.5)
    assert r["average"] == r["random"]
    assert "WARNING: 1 of 3 random questions have no prediction" in capsys.readouterr().out


def test_eval_pope_rejects_misaligned_files(tmp_path):
    questions, answers = pope_files(tmp_path, answered=3)
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    rows[0]["image"] = "zzz.jpg"
    write_jsonl(questions, rows)
    with pytest.raises(ValueError, match="zzz.jpg"):
        eval_pope.evaluate(str(tmp_path / "coco"), str(questions), str(answers))


# ---- TextVQA --------------------------------------------------------------------------------------------------------

def test_eval_textvqa(tmp_path, capsys):
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps({"data": [
        {"image_id": "img1", "question": "What brand?", "answers": ["nokia"] * 2 + ["sony"] * 8},
        {"image_id": "img2", "question": "What year?", "answers": ["1990"] * 10},
        {"image_id": "img3", "question": "What word?", "answers": ["stop"] * 10},
    ]}))
    res = write_jsonl(tmp_path / "r.jsonl", [
        {"question_id": "img1", "prompt": "What brand?\nReference OCR token: Nokia\nAnswer the question using a "
                                          "single word or phrase.", "text": "Nokia"},
        {"question_id": "img2", "prompt": "what year?\nAnswer the question using a single word or phrase.",
         "text": "1990."},
    ])
    # (0.6 + 1.0 + 0 for the unanswered img3) / 3
    assert eval_textvqa.evaluate(str(ann), str(res)) == pytest.approx(1.6 / 3)
    out = capsys.readouterr().out
    assert "Samples: 3" in out and "Accuracy: 53.33%" in out and "1 of 3 TextVQA questions" in out


# ---- ScienceQA ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("B.", "B"), ("(C)", "C"), ("D) dog", "D"), ("A. cat", "A"), ("The answer is C.", "C"),
    ("A cat", None), ("E", None), ("I think", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, "ABCD") == expected


def test_parse_choice_by_option_text():
    assert parse_choice("Dog.", "ABC", ["cat", "dog", "bird"]) == "B"


def test_eval_science_qa(tmp_path, monkeypatch, capsys):
    problems = {"1": {"choices": ["a", "b"], "answer": 0, "image": "image.png"},
                "2": {"choices": ["a", "b", "c"], "answer": 2, "image": "image.png"},
                "3": {"choices": ["a", "b"], "answer": 1, "image": None},
                "4": {"choices": ["a", "b"], "answer": 0, "image": None},
                "5": {"choices": ["a", "b"], "answer": 0, "image": "image.png"}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4", "5"], "val": []}))
    res = write_jsonl(tmp_path / "r.jsonl", [{"question_id": "1", "text": "A"}, {"question_id": "2", "text": "B."},
                                             {"question_id": "3", "text": "The answer is B."},
                                             {"question_id": "4", "text": "no idea"}])
    out_file, out_result = tmp_path / "o.jsonl", tmp_path / "o.json"
    run_main(eval_science_qa, monkeypatch, "--base-dir", str(tmp_path), "--result-file", str(res),
             "--output-file", str(out_file), "--output-result", str(out_result))
    # correct: 1 (img) and 3; wrong: 2 (img), 4 (unparsed), 5 (img, missing) -> 2/5 overall, 1/3 on images.
    summary = json.loads(out_result.read_text())
    assert (summary["correct"], summary["total"], summary["img_correct"], summary["img_total"]) == (2, 5, 1, 3)
    assert (summary["accuracy"], summary["unparsed"], summary["missing"]) == (40.0, 1, 1)
    assert summary["img_accuracy"] == pytest.approx(100 / 3)
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["parsed"] for r in records] == ["A", "B", "B", None, None]
    assert "IMG-Accuracy: 33.33%" in capsys.readouterr().out


# ---- GQA ------------------------------------------------------------------------------------------------------------

def test_convert_gqa_and_accuracy(tmp_path, monkeypatch, capsys):
    src = write_jsonl(tmp_path / "merge.jsonl", [{"question_id": "q1", "text": "Yes."},
                                                 {"question_id": 7, "text": "Left"}])
    dst = tmp_path / "pred.json"
    run_main(convert_gqa_for_eval, monkeypatch, "--src", str(src), "--dst", str(dst))
    assert json.loads(dst.read_text()) == [{"questionId": "q1", "prediction": "yes"},
                                          {"questionId": "7", "prediction": "left"}]
    questions = {"q1": {"answer": "yes", "types": {"structural": "verify"}},
                 "7": {"answer": "right", "types": {"structural": "query"}},
                 "q3": {"answer": "the table", "types": {"structural": "query"}}}
    qfile = tmp_path / "testdev_balanced_questions.json"
    qfile.write_text(json.dumps(questions))
    run_main(eval_gqa, monkeypatch, "--questions", str(qfile), "--predictions", str(dst))
    out = capsys.readouterr().out
    assert "Accuracy: 33.33%" in out and "query: 0.00%" in out and "verify: 100.00%" in out
    assert "1 of 3 GQA questions have no prediction" in out
    assert eval_gqa.gqa_accuracy(questions, {"q3": "Table", "q1": "no"}) == pytest.approx(
        {"overall": 1 / 3, "verify": 0.0, "query": 0.5})


def test_convert_gqa_rejects_duplicates():
    with pytest.raises(ValueError, match="more than once"):
        convert_gqa_for_eval.to_predictions([{"question_id": 1, "text": "a"}, {"question_id": 1, "text": "b"}])


# ---- VQAv2 ----------------------------------------------------------------------------------------------------------

def test_convert_vqav2(tmp_path, monkeypatch, capsys):
    split = "llava_vqav2_mscoco_test-dev2015"
    write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": i} for i in (1, 2, 3, 4)])
    write_jsonl(tmp_path / f"{split}.jsonl", [{"question_id": i} for i in (1, 2, 3)])
    write_jsonl(tmp_path / "answers" / split / "ck" / "merge.jsonl",
                [{"question_id": 1, "text": "Two"}, {"question_id": 2, "text": "Yes."}])
    run_main(convert_vqav2_for_submission, monkeypatch, "--dir", str(tmp_path), "--split", split, "--ckpt", "ck")
    upload = json.loads((tmp_path / "answers_upload" / split / "ck.json").read_text())
    assert upload == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"},
                      {"question_id": 3, "answer": ""}, {"question_id": 4, "answer": ""}]
    out = capsys.readouterr().out
    assert f"1 of 3 {split} questions have no prediction" in out
    assert "uploaded empty (not in the answered split): 2" in out


# ---- MME ------------------------------------------------------------------------------------------------------------

def test_mme_subtask_score_by_hand():
    rows = [("1", "q1", "Yes", "Yes"), ("1", "q2", "No", "no"),  # image 1: both right
            ("2", "q1", "Yes", "Yes, it is"), ("2", "q2", "No", "Yes")]  # image 2: one right
    s = eval_mme.subtask_score(rows)
    assert (s["acc"], s["acc_plus"], s["score"]) == (0.75, 0.5, 125.0)


@pytest.mark.parametrize("text, expected", [("Yes", "yes"), ("No, it is not", "no"), ("The answer is yes", "other")])
def test_mme_parse(text, expected):
    assert eval_mme.parse_yes_no(text) == expected


def test_mme_convert_and_score(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "MME" / "MME_Benchmark_release_version"
    (bench / "color").mkdir(parents=True)
    (bench / "artwork" / "questions_answers_YN").mkdir(parents=True)
    for folder in (bench / "color", bench / "artwork" / "questions_answers_YN"):
        for stem in ("001", "002"):
            (folder / f"{stem}.txt").write_text("Is it red? Please answer yes or no.\tYes\n"
                                                "Is it blue?  Please answer yes or no.\tNo\n")
    suffix = "\nAnswer the question using a single word or phrase."
    answers = [{"question_id": f"color/{s}.jpg", "prompt": q + suffix, "text": t} for s, q, t in
               [("001", "Is it red?", "Yes"), ("001", "Is it blue?", "No"), ("002", "Is it red?", "Yes"),
                ("002", "Is it blue?", "Yes")]]
    answers += [{"question_id": "artwork/images/001.jpg", "prompt": "Is it red?" + suffix, "text": "Yes"}]
    write_jsonl(tmp_path / "MME" / "answers" / "ck.jsonl", answers)
    run_main(convert_answer_to_mme, monkeypatch, "--experiment", "ck", "--mme-dir", str(tmp_path / "MME"))
    out_dir = tmp_path / "MME" / "eval_tool" / "answers" / "ck"
    assert (out_dir / "artwork.txt").read_text().splitlines() == [
        "001\tIs it blue?  Please answer yes or no.\tNo\t", "001\tIs it red? Please answer yes or no.\tYes\tYes",
        "002\tIs it blue?  Please answer yes or no.\tNo\t", "002\tIs it red? Please answer yes or no.\tYes\t"]
    assert "3 of 8 MME questions have no prediction" in capsys.readouterr().out
    scores = eval_mme.evaluate(str(out_dir))
    # color: acc 3/4, acc+ 1/2 -> 125; artwork: acc 1/4, acc+ 0 -> 25.
    assert scores["color"] == 125.0 and scores["artwork"] == 25.0 and scores["Perception"] == 150.0
    assert "no results for existence" in capsys.readouterr().out


def test_mme_convert_rejects_unknown_answer(tmp_path):
    truth = {("color", "001", "Is it red?"): ("Is it red? Please answer yes or no.", "Yes")}
    with pytest.raises(ValueError, match="matches no MME question"):
        convert_answer_to_mme.convert(truth, [{"question_id": "color/001.jpg", "prompt": "Is it green?", "text": "No"}])


# ---- MMBench --------------------------------------------------------------------------------------------------------

def mmbench_tsv(path: Path) -> Path:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
              "comment", "split"]
    rows = [[0, "Color?", "nan", "red", "blue", "green", "nan", "B", "color", "aW1n", "s", "l2", "nan", "dev"],
            [1, "Shape?", "Look.", "circle", "square", "nan", "nan", "A", "shape", "aW1n", "s", "l2", "nan", "dev"],
            [1000001, "Shape?", "Look.", "square", "circle", "nan", "nan", "B", "shape", "aW1n", "s", "l2", "nan",
             "dev"]]
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def xlsx_rows(path: Path):
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    def value(cell):
        text = cell.find("m:is/m:t", ns)
        return (text.text or "") if text is not None else cell.findtext("m:v", namespaces=ns)

    return [{c.get("r").rstrip("0123456789"): value(c) for c in row.findall("m:c", ns)}
            for row in sheet.find("m:sheetData", ns).findall("m:row", ns)]


def test_convert_mmbench_xlsx(tmp_path, monkeypatch, capsys):
    tsv = mmbench_tsv(tmp_path / "dev.tsv")
    write_jsonl(tmp_path / "res" / "ck.jsonl", [{"question_id": 0, "round_id": 0, "text": "B"},
                                                {"question_id": 0, "round_id": 1, "text": "A"},
                                                {"question_id": 1, "text": "A. circle"}])
    run_main(convert_mmbench_for_submission, monkeypatch, "--annotation-file", str(tsv), "--result-dir",
             str(tmp_path / "res"), "--upload-dir", str(tmp_path / "up"), "--experiment", "ck")
    rows = xlsx_rows(tmp_path / "up" / "ck.xlsx")
    assert rows[0] == {"A": "index", "B": "question", "C": "A", "D": "B", "E": "C", "F": "D", "G": "prediction",
                       "H": "answer", "I": "split"}
    assert rows[1] == {"A": "0", "B": "Color?", "C": "red", "D": "blue", "E": "green", "G": "B", "H": "B", "I": "dev"}
    assert rows[2]["G"] == "A. circle" and rows[3]["A"] == "1000001" and rows[3]["G"] == ""
    assert "1 of 3 MMBench rows have no prediction" in capsys.readouterr().out


def test_mmbench_circular_scoring(tmp_path):
    from llava.eval.mmbench_data import read_tsv

    rows = read_tsv(str(mmbench_tsv(tmp_path / "dev.tsv")))
    # Group 0 right; group 1: original row right, its circular copy (answer B) wrong -> circular 1/2, single 2/2.
    answers = {(0, 0): {"text": "B"}, (1, 0): {"text": "A"}, (1000001, 0): {"text": "A"}}
    s = eval_mmbench.score(rows, answers)
    assert (s["circular"], s["single"], s["per_category"]) == (0.5, 1.0, {"color": 1.0, "shape": 0.0})
    # --all-rounds: round r shows option (j + r) % n at letter j; row 0 (3 options, truth "blue") needs B, A, C.
    rounds = {(0, 0): {"text": "B"}, (0, 1): {"text": "A"}, (0, 2): {"text": "C"}, (1, 0): {"text": "A"},
              (1, 1): {"text": "B"}}
    s = eval_mmbench.score(rows, rounds)
    assert s["per_category"]["color"] == 1.0 and s["missing"] == [(1000001, 0), (1000001, 1)]


def test_mmbench_runner_items_rotate_options(tmp_path):
    from llava.eval.mmbench_data import read_tsv
    from llava.eval.model_vqa_mmbench import mmbench_items

    rows = read_tsv(str(mmbench_tsv(tmp_path / "dev.tsv")))
    items = mmbench_items(rows[:2], all_rounds=True, single_pred_prompt=True, lang="cn")
    assert [(it["question_id"], it["record"]["round_id"]) for it in items] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert items[1]["text"] == "Color?\nA. blue\nB. green\nC. red\n请直接回答选项字母。"
    assert items[1]["record"]["prompt"] == "Color?\nA. blue\nB. green\nC. red"
    assert items[3]["text"].startswith("Look.\nShape?\nA. circle\nB. square")


def test_science_runner_items():
    from llava.eval.model_vqa_science import science_items

    problems = [{"id": "7", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nQ?\nA. a"}]},
                {"id": "8", "conversations": [{"from": "human", "value": "T?\nA. a"}]}]
    items = science_items(problems, "imgs", True)
    assert items[0]["text"] == "Q?\nA. a\nAnswer with the option's letter from the given choices directly."
    assert items[0]["record"]["prompt"].startswith("<image>\nQ?") and callable(items[0]["image"])
    assert items[1]["image"] is None and items[1]["question_id"] == "8"


# ---- SEED-Bench -----------------------------------------------------------------------------------------------------

def test_convert_seed(tmp_path, monkeypatch, capsys):
    ann = tmp_path / "SEED-Bench.json"
    ann.write_text(json.dumps({"question_type": {"Scene": 1, "Count": 2}, "questions": [
        {"question_id": "101", "answer": "A", "data_type": "image", "question_type_id": 1},
        {"question_id": "102", "answer": "B", "data_type": "image", "question_type_id": 2},
        {"question_id": "103", "answer": "C", "data_type": "video", "question_type_id": 2},
        {"question_id": "104", "answer": "D", "data_type": "video", "question_type_id": 1}]}))
    res = write_jsonl(tmp_path / "merge.jsonl", [{"question_id": "101", "text": "A"},
                                                 {"question_id": "102", "text": "B."},
                                                 {"question_id": "103", "text": "maybe"}])
    up = tmp_path / "up" / "ck.jsonl"
    run_main(convert_seed_for_submission, monkeypatch, "--annotation-file", str(ann), "--result-file", str(res),
             "--result-upload-file", str(up))
    out = capsys.readouterr().out
    assert "Scene: 50.00%" in out and "Count: 50.00%" in out and "Total accuracy: 50.00%" in out
    assert "image accuracy: 100.00%" in out and "video accuracy: 0.00%" in out and "1 of 4 SEED-Bench" in out
    assert [json.loads(line) for line in up.read_text().splitlines()] == [
        {"question_id": "101", "prediction": "A"}, {"question_id": "102", "prediction": "B"},
        {"question_id": "103", "prediction": "maybe"}, {"question_id": "104", "prediction": ""}]


# ---- shell scripts --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["v1_5", "next"])
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_eval_script_reports_missing_data(variant, bench, tmp_path):
    env = {**os.environ, "EVAL_DIR": str(tmp_path), "PYTHON": "python-must-not-run"}
    r = subprocess.run(["bash", str(REPO / "scripts" / variant / "eval" / f"{bench}.sh"), "--pruning-ratio", "0.9"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert "missing: download" in r.stderr and str(tmp_path) in r.stderr
    assert "runner args: --pruning-ratio 0.9" in r.stdout  # extra arguments are passed on to the runner
