"""Answer a LLaVA question file with a trained model (upstream flags); one JSON answer per line."""
import argparse
import json
import math
import os
import uuid
from typing import List

import torch
from PIL import Image
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import disable_torch_init


def split_list(items: list, n: int) -> List[list]:
    size = math.ceil(len(items) / n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def get_chunk(items: list, n: int, k: int) -> list:
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


def read_questions(path: str) -> List[dict]:
    questions = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e})") from None
            missing = [k for k in ("question_id", "text") if k not in q]
            if missing:
                raise ValueError(f"{path}:{line_no}: question lacks field(s) {missing}")
            questions.append(q)
    return questions


def build_prompt(question: str, conv_mode: str, use_im_start_end: bool, has_image: bool) -> str:
    if has_image:
        image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if use_im_start_end else DEFAULT_IMAGE_TOKEN
        question = image + "\n" + question
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def eval_model(args: argparse.Namespace) -> None:
    disable_torch_init()
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(model_path, args.model_base, model_name, device=args.device)
    questions = get_chunk(read_questions(os.path.expanduser(args.question_file)), args.num_chunks, args.chunk_idx)
    answers_file = os.path.expanduser(args.answers_file)
    os.makedirs(os.path.dirname(answers_file) or ".", exist_ok=True)
    use_im_start_end = getattr(model.config, "mm_use_im_start_end", False)
    device, dtype = model.device, model.dtype

    with open(answers_file, "w") as out:
        for q in tqdm(questions, desc="answering"):
            image_file = q.get("image")
            prompt = build_prompt(q["text"], args.conv_mode, use_im_start_end, has_image=image_file is not None)
            input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
            images, image_sizes = None, None
            if image_file is not None:
                path = os.path.join(args.image_folder, image_file)
                try:
                    image = Image.open(path).convert("RGB")
                except (OSError, ValueError) as e:
                    raise ValueError(f"question {q['question_id']}: cannot read image {path}: {e}") from None
                images = process_images([image], image_processor, model.config).to(device=device, dtype=dtype)
                image_sizes = [image.size]
            with torch.inference_mode():
                output_ids = model.generate(
                    input_ids.to(device),
                    images=images,
                    image_sizes=image_sizes,
                    do_sample=args.temperature > 0,
                    temperature=args.temperature if args.temperature > 0 else None,
                    top_p=args.top_p,
                    num_beams=args.num_beams,
                    max_new_tokens=args.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                )
            text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
            record = {"question_id": q["question_id"], "prompt": q["text"], "text": text,
                      "answer_id": uuid.uuid4().hex, "model_id": model_name, "metadata": {}}
            out.write(json.dumps(record) + "\n")
            out.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-folder", type=str, default="")
    p.add_argument("--question-file", type=str, default="tables/question.jsonl")
    p.add_argument("--answers-file", type=str, default="answer.jsonl")
    p.add_argument("--conv-mode", type=str, default="llava_v1")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--device", type=str, default="cuda", help="cuda (falls back to cpu when no GPU) or cpu")
    return p


if __name__ == "__main__":
    eval_model(build_parser().parse_args())
