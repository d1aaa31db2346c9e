"""Turn LLaVA MME answers into MME's per-subtask result files (input of `llava.eval.eval_mme` and of MME's own
calculation.py).

    python -m llava.eval.convert_answer_to_mme --experiment CKPT [--mme-dir ./playground/data/eval/MME]

Reads the ground truth from `<mme-dir>/MME_Benchmark_release_version/<subtask>/` (`<image>.txt` files of
"question<TAB>Yes|No" lines, beside the images or in `questions_answers_YN/`) and the answers from
`<mme-dir>/answers/<experiment>.jsonl` (question_id "<subtask>/.../<image>"); writes
`<mme-dir>/eval_tool/answers/<experiment>/<subtask>.txt` with lines "image stem<TAB>question<TAB>truth<TAB>prediction",
the two questions of an image adjacent. Questions without an answer are written with an empty prediction (scored
wrong) and counted.
"""
from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from typing import Dict, List, Tuple

from llava.eval.eval_io import read_jsonl, read_tsv, report_missing

BENCHMARK_DIR = "MME_Benchmark_release_version"
_SUFFIXES = ("Answer the question using a single word or phrase.", "Please answer yes or no.")
Key = Tuple[str, str, str]  # (subtask, image stem, normalised question)


def question_key(question: str) -> str:
    """A question without LLaVA's / MME's answer instructions and with single spaces, for matching."""
    for suffix in _SUFFIXES:
        question = question.replace(suffix, " ")
    return re.sub(r"\s+", " ", question).strip()


def read_ground_truth(benchmark_dir: str) -> Dict[Key, Tuple[str, str]]:
    """{(subtask, image stem, question key): (question as MME writes it, "Yes"/"No")} over all subtasks."""
    truth: Dict[Key, Tuple[str, str]] = {}
    for subtask in sorted(os.listdir(benchmark_dir)):
        folder = os.path.join(benchmark_dir, subtask)
        if not os.path.isdir(folder):
            continue
        qa_dir = os.path.join(folder, "questions_answers_YN")
        qa_dir = qa_dir if os.path.isdir(qa_dir) else folder
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            for question, answer in read_tsv(os.path.join(qa_dir, name), 2, "'question<TAB>answer'"):
                truth[(subtask, name[:-4], question_key(question))] = (question, answer.strip())
    if not truth:
        raise FileNotFoundError(f"{benchmark_dir}: no MME question files found")
    return truth


def convert(truth: Dict[Key, Tuple[str, str]], answers: List[dict]) -> Dict[str, List[Tuple[str, ...]]]:
    """{subtask: [(image stem, question, truth, prediction), ...]} sorted by image; unknown answers raise ValueError."""
    predicted: Dict[Key, str] = {}
    for a in answers:
        qid = str(a["question_id"])
        key = (qid.split("/")[0], os.path.splitext(qid.split("/")[-1])[0], question_key(a["prompt"]))
        if key not in truth:
            raise ValueError(f"answer {qid!r} ({a['prompt']!r}) matches no MME question")
        if key in predicted:
            raise ValueError(f"answer {qid!r} ({a['prompt']!r}) appears more than once")
        predicted[key] = " ".join(str(a["text"]).split())  # one line: no tabs or newlines
    report_missing("MME questions", [f"{k[0]}/{k[1]}: {k[2]}" for k in truth if k not in predicted], len(truth),
                   consequence="written with an empty prediction, scored wrong")
    rows = defaultdict(list)
    for key, (question, answer) in sorted(truth.items()):
        rows[key[0]].append((key[1], question, answer, predicted.get(key, "")))
    return dict(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True)
    p.add_argument("--mme-dir", default="./playground/data/eval/MME")
    a = p.parse_args()
    truth = read_ground_truth(os.path.join(a.mme_dir, BENCHMARK_DIR))
    answers = read_jsonl(os.path.join(a.mme_dir, "answers", f"{a.experiment}.jsonl"),
                         required=("question_id", "prompt", "text"))
    out_dir = os.path.join(a.mme_dir, "eval_tool", "answers", a.experiment)
    os.makedirs(out_dir, exist_ok=True)
    for subtask, rows in convert(truth, answers).items():
        with open(os.path.join(out_dir, f"{subtask}.txt"), "w", encoding="utf-8") as f:
            f.writelines("\t".join(r) + "\n" for r in rows)
    print(f"{len(answers)} answers written to {out_dir}")


if __name__ == "__main__":
    main()
