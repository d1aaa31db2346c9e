"""The tiny LLaMA: its language-pretraining corpus of scene texts and its build.

Scene texts put one scene word per visual token where the image will sit, then a caption or a chat about the
scene, tokenized exactly as LLaVA's training data is. Like a real base LLM that already reads and answers, the
pretrained model leaves stage 1 to map visual tokens onto what it reads.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from playground.tiny_scenes import (
    CATEGORIES, IMAGE_TOKEN, SHORT_ANSWER_PROMPT, Scene, ask, caption, sample_scene, scene_words, short_form,
    slot_words,
)
from playground.world_data import CONV_MODE, sft_text_record
from playground.world_params import WorldParams
from playground.world_training import pad_batch, torch_threads, train_loop

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def lm_chat(scene: Scene, params: WorldParams, rng: random.Random) -> list[dict]:
    """A chat asking every question type once (random order) about ``scene``, image first."""
    turns = []
    for t, category in enumerate(rng.sample(CATEGORIES, len(CATEGORIES))):
        question, answer, long = ask(scene, category, rng)
        if rng.random() < params.short_answer_ratio:
            question, reply = f"{question}\n{SHORT_ANSWER_PROMPT}", short_form(answer)
        else:
            reply = long
        turns += [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if t == 0 else question},
                  {"from": "gpt", "value": reply}]
    return turns


def scene_text(turns: list[dict], template: str, slots: torch.Tensor,
               tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of a conversation tokenized exactly as LLaVA's training data is (answers supervised),
    with its image placeholder replaced by ``slots``, the scene's word ids (one per visual token, unsupervised)."""
    import torch

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.train.data import preprocess

    encoded = preprocess([turns], tokenizer, template, has_image=True)
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    at = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    return (torch.cat([ids[:at], slots, ids[at + 1:]]),
            torch.cat([labels[:at], torch.full_like(slots, IGNORE_INDEX), labels[at + 1:]]))


def scene_documents(params: WorldParams,
                    tokenizer: PreTrainedTokenizerBase) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) of the LM corpus: for each of ``lm_scenes`` scenes of its own, a caption in the
    'plain' template and a chat in the tiny-world template, tokenized exactly as LLaVA's training data is
    (answers supervised), with the image placeholder replaced by the scene's words, one per visual token;
    plus the text-only chats of the SFT mix."""
    import torch

    from llava.train.data import preprocess

    ids_of = {word: tokenizer.convert_tokens_to_ids(word) for word in scene_words()}
    rng = random.Random(f"lm-{params.seed}")
    docs = []
    for i in range(params.lm_scenes):
        scene = sample_scene(rng)
        slots = torch.tensor([ids_of[w] for w in slot_words(scene, params.image_size, params.patch_size)])
        plain = [{"from": "human", "value": IMAGE_TOKEN}, {"from": "gpt", "value": caption(scene)}]
        docs.append(scene_text(plain, "plain", slots, tokenizer))
        docs.append(scene_text(lm_chat(scene, params, rng), CONV_MODE, slots, tokenizer))
    n_text = round(params.lm_scenes * params.text_only_ratio)
    for i in range(n_text):
        encoded = preprocess([sft_text_record(i, params, rng)["conversations"]], tokenizer, CONV_MODE)
        docs.append((encoded["input_ids"][0], encoded["labels"][0]))
    return docs


def build_llama(out: Path, params: WorldParams) -> dict:
    """Create the tiny LLaMA, LM-train it on the world's text and save it next to its tokenizer."""
    import torch
    import transformers

    model_dir = out / "models" / "tiny-llama"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=params.llm_hidden,
        intermediate_size=params.llm_intermediate, num_hidden_layers=params.llm_layers,
        num_attention_heads=params.llm_heads, num_key_value_heads=params.llm_heads,
        max_position_embeddings=2048, rms_norm_eps=1e-5, initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
        tie_word_embeddings=False, use_cache=True,
    )
    torch.manual_seed(params.seed)
    model = transformers.LlamaForCausalLM(config)
    docs = scene_documents(params, transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=False))
    generator = torch.Generator().manual_seed(params.seed)

    def batches() -> Iterator[dict]:
        while True:
            picks = torch.randint(len(docs), (params.lm_batch,), generator=generator).tolist()
            yield pad_batch([docs[i] for i in picks], pad_id=0)

    losses = train_loop(model, batches(), params.lm_steps, params.lm_lr, "tiny-llama LM pretraining")
    model.generation_config.pad_token_id = 0
    model.save_pretrained(str(model_dir))
    return {"parameters": sum(p.numel() for p in model.parameters()), "lm_documents": len(docs),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4) if losses else None}


def build_llama_one_thread(out: Path, params: WorldParams) -> dict:
    """``build_llama`` with one intra-op thread (the entry point of the LLaMA build process)."""
    with torch_threads(1):
        return build_llama(out, params)
