"""Turn LLaVA MMBench / MMBench-CN answers into the .xlsx the MMBench evaluation server takes.

    python -m llava.eval.convert_mmbench_for_submission --annotation-file mmbench_dev_20230712.tsv \
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 --experiment CKPT

Reads `<result-dir>/<experiment>.jsonl`, writes `<upload-dir>/<experiment>.xlsx`: one row per .tsv row with its
columns except image, hint, category, source, l2-category and comment, and a "prediction" column (the model's text
for the row's original option order, round 0) after the last option column. Rows without an answer get an empty
prediction and are counted; empty cells ("nan") stay empty.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Tuple

from llava.eval.eval_io import report_missing
from llava.eval.mmbench_answers import read_mmbench_answers
from llava.eval.mmbench_data import OPTION_COLUMNS, is_blank, read_tsv
from llava.eval.xlsx_writer import write_xlsx

DROPPED_COLUMNS = ("image", "hint", "category", "source", "l2-category", "comment")


def submission_table(rows: List[dict], header: List[str], answers: Dict[Tuple[int, int], dict]):
    """(columns, table rows, indices without an answer) of the upload sheet."""
    columns = [c for c in header if c not in DROPPED_COLUMNS]
    last_option = max(i for i, c in enumerate(columns) if c in OPTION_COLUMNS)
    columns.insert(last_option + 1, "prediction")
    known = {int(float(r["index"])) for r in rows}
    unknown = {i for i, _ in answers} - known
    if unknown:
        raise ValueError(f"{len(unknown)} answers to indices not in the annotation file, e.g. {min(unknown)}")
    table, missing = [], []
    for r in rows:
        index = int(float(r["index"]))
        answer = answers.get((index, 0))
        if answer is None:
            missing.append(index)
        values = {k: None if is_blank(v) else v for k, v in r.items()}  # empty cell, as pandas writes NaN
        values.update(index=index, prediction="" if answer is None else answer["text"])
        table.append([values[c] for c in columns])
    return columns, table, missing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-dir", required=True)
    p.add_argument("--upload-dir", required=True)
    p.add_argument("--experiment", required=True)
    a = p.parse_args()
    rows = read_tsv(a.annotation_file)
    answers = read_mmbench_answers(os.path.join(a.result_dir, f"{a.experiment}.jsonl"))
    columns, table, missing = submission_table(rows, list(rows[0]), answers)
    report_missing("MMBench rows", missing, len(rows), consequence="uploaded with an empty prediction")
    os.makedirs(a.upload_dir, exist_ok=True)
    dst = os.path.join(a.upload_dir, f"{a.experiment}.xlsx")
    write_xlsx(dst, columns, table)
    print(f"{len(table)} rows written to {dst}")


if __name__ == "__main__":
    main()
