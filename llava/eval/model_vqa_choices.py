"""Score a multiple-choice question file by the likelihood of each answer choice (teacher-forced).

    python -m llava.eval.model_vqa_choices --model-path RUN --model-base BASE --image-folder DIR \
        --question-file Q.jsonl --key-file K.jsonl --conv-mode tiny_world --out-dir OUT [--shuffled-images]

Each question is answered by the choice whose tokens (the short answer as written in training, then the turn's
separator) have the highest log-likelihood after the prompt; the answer NLL is the negative log-likelihood of the
correct choice. Unlike generated-answer accuracy, which is 0/1 per question, the NLL moves with every improvement
of the model, so it ranks training recipes that generation cannot tell apart.

`--shuffled-images` scores every question a second time with another question's image (a fixed derangement): the
*visual information gain* is NLL(shuffled) - NLL(true), how much the image tells the model about the answer; the
accuracy with shuffled images is the control that must stay near chance. Intervals are 95% bootstrap intervals
over questions. Writes `OUT/choices.jsonl` (one row per question) and `OUT/summary.json`; evaluation extensions add
their flags (`llava.eval.extensions`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Sequence

import torch
from tqdm import tqdm

from llava.eval.eval_io import read_jsonl
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.eval.generation import EvalSession, load_for_eval, load_image, pad_sequences, padding_side, vision_inputs
from llava.eval.intervals import bootstrap_ci
from llava.eval import extensions

STYLES = {"capitalized": lambda c: c[:1].upper() + c[1:], "as-is": lambda c: c}


def encode_choices(session: EvalSession, question: str, choices: Sequence[str], conv_mode: str
                   ) -> tuple[torch.Tensor, List[torch.Tensor]]:
    """(prompt ids, one answer-id tensor per choice), tokenized as training tokenizes the full conversation.

    The prompt is the part before the first supervised token; it must be the same for every choice.
    """
    from llava.train.data import preprocess

    prompt, answers = None, []
    for choice in choices:
        turns = [{"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\n{question}"}, {"from": "gpt", "value": choice}]
        encoded = preprocess([turns], session.tokenizer, conv_mode, has_image=True)
        ids, labels = encoded["input_ids"][0], encoded["labels"][0]
        supervised = torch.nonzero(labels != IGNORE_INDEX).flatten()
        if len(supervised) == 0:
            raise ValueError(f"choice {choice!r} of question {question!r} has no supervised tokens under "
                             f"--conv-mode {conv_mode}")
        start = int(supervised[0])
        if prompt is None:
            prompt = ids[:start]
        elif not torch.equal(prompt, ids[:start]):
            raise ValueError(f"the prompt of question {question!r} tokenizes differently with choice {choice!r}")
        answers.append(ids[start:])
    return prompt, answers


@torch.inference_mode()
def choice_logliks(session: EvalSession, prompts: List[torch.Tensor], answers: List[List[torch.Tensor]],
                   images, image_sizes) -> List[List[float]]:
    """Log-likelihood of every choice of every question: one forward over the prompts (with their images),
    then one over all choices' tokens continuing the prompts' KV cache."""
    model, tokenizer = session.model, session.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id  # masked anyway
    device = model.device
    n_choices = len(answers[0])
    if any(len(a) != n_choices for a in answers):
        raise ValueError("choice_logliks: every question of a batch needs the same number of choices")
    ids, mask = pad_sequences(prompts, pad)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with padding_side(model, "left"):
        _, positions, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
            ids.to(device), positions.to(device), mask.to(device), None, None, images, image_sizes)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    first = out.logits[:, -1].float().log_softmax(-1).repeat_interleave(n_choices, dim=0)
    cache = out.past_key_values
    cache.batch_repeat_interleave(n_choices)
    tokens, valid = pad_sequences([a for per_question in answers for a in per_question], pad, side="right")
    tokens, valid, longest = tokens.to(device), valid.to(device), tokens.shape[1]
    full_mask = torch.cat([mask.repeat_interleave(n_choices, dim=0).to(valid.dtype), valid], dim=1)
    next_positions = positions[:, -1:].repeat_interleave(n_choices, dim=0) + 1 + torch.arange(longest, device=device)
    logits = model(input_ids=tokens, attention_mask=full_mask, position_ids=next_positions,
                   past_key_values=cache, use_cache=True).logits.float().log_softmax(-1)
    per_token = torch.cat([first.gather(1, tokens[:, :1]), logits[:, :-1].gather(2, tokens[:, 1:, None])[..., 0]], 1)
    totals = (per_token * valid).sum(dim=1).view(len(answers), n_choices)
    return totals.tolist()


def derangement(n: int, seed: int) -> List[int]:
    """For each question, the index of the question whose image it gets: one random cycle through all
    questions, so no question keeps its own image."""
    if n < 2:
        raise ValueError("--shuffled-images needs at least 2 questions")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    source = [0] * n
    for k, question in enumerate(order):
        source[question] = order[(k + 1) % n]
    return source


def batches_by_choice_count(rows: List[Dict], size: int) -> List[List[int]]:
    """Question indices in batches of at most ``size`` whose questions have the same number of choices."""
    buckets: Dict[int, List[int]] = {}
    for i, r in enumerate(rows):
        buckets.setdefault(len(r["choices"]), []).append(i)
    return [b[k:k + size] for _, b in sorted(buckets.items()) for k in range(0, len(b), size)]


def score_file(args: argparse.Namespace) -> Dict:
    """Score every question with its own image (and, with --shuffled-images, another's); write rows + summary."""
    session = load_for_eval(args)
    questions = read_jsonl(os.path.expanduser(args.question_file), required=("question_id", "text", "image"))
    key = {str(r["question_id"]): r for r in read_jsonl(os.path.expanduser(args.key_file),
                                                        required=("question_id", "answer", "choices"))}
    missing = [q["question_id"] for q in questions if str(q["question_id"]) not in key]
    if missing:
        raise ValueError(f"{args.key_file}: no key row for question id(s) {missing[:5]}")
    style = STYLES[args.choice_style]
    sources = {"true": list(range(len(questions)))}
    if args.shuffled_images:
        sources["shuffled"] = derangement(len(questions), args.seed)
    rows = []
    for q in questions:
        k = key[str(q["question_id"])]
        rows.append({"question_id": q["question_id"], "category": k.get("category", "all"), "answer": k["answer"],
                     "choices": k["choices"]})
    encodings: Dict[tuple, tuple] = {}  # questions repeat their wording: tokenize each (text, choices) once
    for q, r in zip(questions, rows):
        wording = (q["text"], tuple(r["choices"]))
        if wording not in encodings:
            encodings[wording] = encode_choices(session, q["text"], [style(c) for c in r["choices"]], args.conv_mode)
    encoded = [encodings[(q["text"], tuple(r["choices"]))] for q, r in zip(questions, rows)]
    start = time.time()
    groups = batches_by_choice_count(rows, args.batch_size)
    model = session.model
    with tqdm(total=len(questions) * len(sources), desc="scoring choices") as progress, \
            extensions.context(model, args):
        for name, source in sources.items():
            for group in groups:
                pil = [load_image(args.image_folder, questions[source[i]]["image"], questions[i]["question_id"])
                       for i in group]
                pixels, sizes = vision_inputs(session, pil, [questions[i]["text"] for i in group])
                scores = choice_logliks(session, [encoded[i][0] for i in group], [encoded[i][1] for i in group],
                                        pixels, sizes)
                for i, s in zip(group, scores):
                    target = rows[i]["choices"].index(rows[i]["answer"])
                    best = max(range(len(s)), key=s.__getitem__)
                    rows[i][name] = {"logliks": [round(x, 4) for x in s], "prediction": rows[i]["choices"][best],
                                     "correct": best == target, "nll": -s[target]}
                progress.update(len(group))
    summary = {"per_category": summarize(rows, list(sources)), "seconds": round(time.time() - start, 1)}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "choices.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(format_summary(summary["per_category"]))
    return summary


def _stats(values: List[float]) -> Dict:
    low, high = bootstrap_ci(values)
    return {"mean": sum(values) / len(values), "ci95": [low, high]}


def summarize(rows: List[Dict], sources: Sequence[str]) -> Dict:
    """Per category and overall: accuracy, answer NLL (and, with shuffled images, their control values and the
    information gain), each with a 95% bootstrap interval over questions; chance = mean of 1/len(choices)."""
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(r["category"], []).append(r)
    groups = dict(sorted(groups.items()))
    groups["overall"] = rows
    out = {}
    for name, members in groups.items():
        entry = {"questions": len(members), "chance": sum(1 / len(r["choices"]) for r in members) / len(members)}
        for source in sources:
            entry[f"accuracy_{source}"] = _stats([float(r[source]["correct"]) for r in members])
            entry[f"nll_{source}"] = _stats([r[source]["nll"] for r in members])
        if "shuffled" in sources:
            entry["info_gain"] = _stats([r["shuffled"]["nll"] - r["true"]["nll"] for r in members])
        out[name] = entry
    return out


def format_summary(summary: Dict) -> str:
    """Plain-text table of ``summarize``'s result (percentages and NLL in nats, with 95% intervals)."""
    def pct(s: Dict) -> str:
        return f"{100 * s['mean']:5.1f} [{100 * s['ci95'][0]:4.1f},{100 * s['ci95'][1]:5.1f}]"

    def nats(s: Dict) -> str:
        return f"{s['mean']:6.3f} [{s['ci95'][0]:.3f},{s['ci95'][1]:.3f}]"

    shuffled = "accuracy_shuffled" in summary["overall"]
    head = f"{'category':<9} {'n':>5} {'chance':>6}  {'accuracy % [95% CI]':<21} {'answer NLL [95% CI]':<23}"
    if shuffled:
        head += f" {'shuffled-image acc %':<21} {'info gain (nats)':<23}"
    lines = [head]
    for name, e in summary.items():
        line = f"{name:<9} {e['questions']:>5} {100 * e['chance']:5.1f}%  {pct(e['accuracy_true']):<21} " \
               f"{nats(e['nll_true']):<23}"
        if shuffled:
            line += f" {pct(e['accuracy_shuffled']):<21} {nats(e['info_gain']):<23}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-folder", required=True)
    p.add_argument("--question-file", required=True)
    p.add_argument("--key-file", required=True, help="JSON lines {question_id, answer, choices[, category]}")
    p.add_argument("--conv-mode", default="llava_v1")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--choice-style", choices=sorted(STYLES), default="capitalized",
                   help="how a choice is written as an answer in training (VQA-style short answers are capitalized)")
    p.add_argument("--shuffled-images", action="store_true",
                   help="also score with another question's image: control accuracy and visual information gain")
    p.add_argument("--seed", type=int, default=0, help="seed of the image shuffle")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda", help="cuda (falls back to cpu when no GPU) or cpu")
    extensions.add_arguments(p)
    return p


def main(argv: List[str] | None = None) -> Dict:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        return score_file(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
