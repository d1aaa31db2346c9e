"""Score ScienceQA answers: accuracy on the test split and on its image questions (ScienceQA-IMG).

    python -m llava.eval.eval_science_qa --base-dir scienceqa --result-file answers/CKPT.jsonl \
        --output-file answers/CKPT_output.jsonl --output-result answers/CKPT_result.json

`--base-dir` holds ScienceQA's `problems.json` and `pid_splits.json`. An answer is read as an option letter
(`choice_parse.parse_choice`); an answer that names no valid option, and a problem without an answer, count as
wrong (upstream instead guessed a random option) and are counted in the printout. `--output-file` gets one line per
problem, `--output-result` the summary.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List

from llava.eval.choice_parse import parse_choice
from llava.eval.eval_io import index_by, read_json, read_jsonl, report_missing, write_json, write_jsonl

LETTERS = "ABCDE"


def score_problems(problems: Dict[str, dict], pids: List[str], answers: Dict[str, dict]) -> List[dict]:
    """One record per problem id: prediction text, parsed letter, correct letter, correct?, has an image?"""
    records = []
    for pid in pids:
        if pid not in problems:
            raise ValueError(f"problem {pid!r} is in the split list but not in problems.json")
        prob = problems[pid]
        letters = LETTERS[: len(prob["choices"])]
        text = answers[pid]["text"] if pid in answers else None
        parsed = parse_choice(text, letters) if text is not None else None
        truth = LETTERS[int(prob["answer"])]
        records.append({"question_id": pid, "prediction": text, "parsed": parsed, "answer": truth,
                        "correct": parsed == truth, "is_multimodal": bool(prob.get("image"))})
    return records


def summarize(records: List[dict]) -> dict:
    """Counts and accuracies (in %) overall and over the image questions."""
    img = [r for r in records if r["is_multimodal"]]
    def pct(rows: List[dict]) -> float:
        return 100.0 * sum(r["correct"] for r in rows) / len(rows) if rows else 0.0

    return {"total": len(records), "correct": sum(r["correct"] for r in records), "accuracy": pct(records),
            "img_total": len(img), "img_correct": sum(r["correct"] for r in img), "img_accuracy": pct(img),
            "missing": sum(r["prediction"] is None for r in records),
            "unparsed": sum(r["prediction"] is not None and r["parsed"] is None for r in records)}


def evaluate(base_dir: str, result_file: str, split: str = "test") -> List[dict]:
    """Per-problem records for `split`; prints the summary line."""
    problems = read_json(os.path.join(base_dir, "problems.json"))
    splits = read_json(os.path.join(base_dir, "pid_splits.json"))
    if split not in splits:
        raise ValueError(f"{base_dir}/pid_splits.json has no split {split!r} (has {sorted(splits)})")
    pids = [str(p) for p in splits[split]]
    answers = index_by(read_jsonl(result_file, required=("question_id", "text")), "question_id", result_file)
    extra = set(answers) - set(pids)
    if extra:
        raise ValueError(f"{result_file}: {len(extra)} answers to problems outside the {split} split, "
                         f"e.g. {min(extra)}")
    records = score_problems(problems, pids, answers)
    report_missing(f"{split} problems", [r["question_id"] for r in records if r["prediction"] is None], len(records))
    s = summarize(records)
    print(f"Total: {s['total']}, Correct: {s['correct']}, Accuracy: {s['accuracy']:.2f}%, "
          f"IMG-Accuracy: {s['img_accuracy']:.2f}% ({s['img_correct']}/{s['img_total']}), "
          f"unparsed answers: {s['unparsed']}, missing: {s['missing']}")
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-dir", required=True)
    p.add_argument("--result-file", required=True)
    p.add_argument("--output-file", default=None, help="JSON lines, one scored record per problem")
    p.add_argument("--output-result", default=None, help="JSON summary")
    p.add_argument("--split", default="test")
    a = p.parse_args()
    records = evaluate(a.base_dir, a.result_file, a.split)
    if a.output_file:
        write_jsonl(a.output_file, records)
    if a.output_result:
        write_json(a.output_result, summarize(records))


if __name__ == "__main__":
    main()
