"""The tiny world as Hugging Face Llava models: `LlavaForConditionalGeneration` (and NeXT) + `LlavaProcessor`.

`hf_llava_from_llava` copies a LLaVA-repository model (tiny or not, with its projector and any NeXT newline) into
Hugging Face's classes, weight for weight; `build_tiny_hf_llava` builds one from the tiny world's LLaMA and CLIP
(and, when given, a stage-1 projector) with a processor whose chat template writes the tiny world's conversation
format. The image token is a new token appended to the vocabulary (`<image>`), as in llava-hf's checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

IMAGE_TOKEN = "<image>"
# The tiny world's conversation format (llava.conversation "tiny_world": Vicuna v1 with a short system prompt),
# with the assistant's replies marked for `return_assistant_tokens_mask`. The spaces are placed so that the tokens
# and the supervised ones equal LLaVA's `preprocess` of the same conversation (image runs collapsed; tested): a
# space after <s> and after the image (LLaVA tokenizes the text after the image on its own, with a leading "▁"),
# and the space after "ASSISTANT:" inside the reply (LLaVA supervises the "▁" before a reply's first digit).
CHAT_TEMPLATE = (
    "{{ bos_token }} Answer questions about the picture. "
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image> \n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% else %}ASSISTANT:{% generation %} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
    "{% endgeneration %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def text_config_of(llava_config):
    """A plain `LlamaConfig` with the language model's fields of a LLaVA-repository config."""
    from transformers import LlamaConfig

    fields = set(LlamaConfig().to_dict())
    return LlamaConfig(**{k: v for k, v in llava_config.to_dict().items() if k in fields and k != "model_type"})


def hf_config(text_config, vision_config, image_token_id: int, *, select_layer: int = -2,
              next_pinpoints: Optional[list] = None):
    """LlavaConfig (or LlavaNextConfig when `next_pinpoints`, LLaVA's (width, height) pairs) for the given parts."""
    from transformers import LlavaConfig, LlavaNextConfig

    common = dict(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), image_token_index=image_token_id,
                  projector_hidden_act="gelu", vision_feature_layer=select_layer,
                  vision_feature_select_strategy="default", tie_word_embeddings=False)
    if next_pinpoints is None:
        image_tokens = (vision_config.image_size // vision_config.patch_size) ** 2
        return LlavaConfig(image_seq_length=image_tokens, **common)
    return LlavaNextConfig(image_grid_pinpoints=[[h, w] for w, h in next_pinpoints], **common)


def hf_llava_from_llava(llava, image_token_id: int, attn_implementation: str = "sdpa"):
    """A Hugging Face Llava (NeXT when the model packs anyres images) holding `llava`'s weights (fp32 copy).

    `image_token_id` must be a row of the model's vocabulary (Hugging Face embeds the image tokens before replacing
    them); resize the LLaVA model first when the token is new. The mode isolator is not copied (it is DualSpeed's)."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    config = llava.config
    if image_token_id >= config.vocab_size:
        raise ValueError(f"image_token_id {image_token_id} is not a row of the {config.vocab_size}-token vocabulary")
    tower = llava.get_vision_tower()
    clip = getattr(tower.vision_tower, "vision_model", tower.vision_tower)  # our transformers-5 holder
    is_next = "anyres" in str(getattr(config, "image_aspect_ratio", ""))
    pinpoints = None
    if is_next:
        from dualspeed_patch.anyres import parse_pinpoints

        pinpoints = list(parse_pinpoints(config.image_grid_pinpoints))
        if getattr(config, "mm_patch_merge_type", "") != "spatial_unpad":
            raise ValueError("Hugging Face's LlavaNext packs as mm_patch_merge_type 'spatial_unpad' only")
    cfg = hf_config(text_config_of(config), clip.config, image_token_id, select_layer=config.mm_vision_select_layer,
                    next_pinpoints=pinpoints)
    cls = LlavaNextForConditionalGeneration if is_next else LlavaForConditionalGeneration
    hf = cls._from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    base = llava.get_model()
    skip = ("mm_projector.", "vision_tower.", "mode_isolator.", "image_newline")
    text = {k: v for k, v in base.state_dict().items() if not k.startswith(skip)}
    hf.model.language_model.load_state_dict(text, strict=True)
    hf.model.vision_tower.load_state_dict(clip.state_dict(), strict=True)
    projector = base.mm_projector
    hf.model.multi_modal_projector.linear_1.load_state_dict(projector[0].state_dict())
    hf.model.multi_modal_projector.linear_2.load_state_dict(projector[2].state_dict())
    hf.lm_head.load_state_dict(llava.lm_head.state_dict())
    if is_next:
        with torch.no_grad():
            hf.model.image_newline.copy_(base.image_newline)
    return hf.to(torch.float32)


def tiny_processor(llama_dir: Path, clip_dir: Path, patch_size: int):
    """LlavaProcessor: the tiny LLaMA's tokenizer with `<image>` added, the tiny CLIP's image processor, the chat
    template above."""
    from transformers import AutoTokenizer, LlavaProcessor

    from llava.model.multimodal_encoder.clip_encoder import image_processor_class

    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    images = image_processor_class().from_pretrained(str(clip_dir))
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          num_additional_image_tokens=1, image_token=IMAGE_TOKEN)


def build_tiny_hf_llava(llama_dir: Path, clip_dir: Path, out: Path, projector: Optional[Path] = None,
                        seed: int = 0) -> Path:
    """Save a tiny Hugging Face Llava (+ processor) at `out`: the tiny LLaMA and CLIP, a projector from
    `projector` (a LLaVA `mm_projector.bin`) or freshly initialised, and `<image>` as a new vocabulary row."""
    import torch
    from transformers import CLIPVisionConfig

    from llava.model import LlavaLlamaForCausalLM
    from llava.train.arguments import ModelArguments

    torch.manual_seed(seed)
    clip_cfg = CLIPVisionConfig.from_pretrained(str(clip_dir))
    processor = tiny_processor(llama_dir, clip_dir, clip_cfg.patch_size)
    llava = LlavaLlamaForCausalLM.from_pretrained(str(llama_dir), attn_implementation="sdpa", dtype=torch.float32)
    llava.get_model().initialize_vision_modules(ModelArguments(
        vision_tower=str(clip_dir), mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu",
        pretrain_mm_mlp_adapter=None if projector is None else str(projector), mm_use_im_start_end=False,
        mm_use_im_patch_token=False, mm_vision_select_feature="patch", mm_patch_merge_type="flat"))
    llava.resize_token_embeddings(len(processor.tokenizer))
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    hf = hf_llava_from_llava(llava, image_token_id)
    hf.config.pad_token_id = processor.tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def main(argv: Optional[list] = None) -> None:
    """`python -m playground.world_hf --out DIR [--projector mm_projector.bin]`: the tiny Hugging Face Llava."""
    import argparse

    from playground.build_tiny_world import ensure_built

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="Directory to save the model and processor in.")
    parser.add_argument("--projector", type=Path, default=None,
                        help="A LLaVA stage-1 mm_projector.bin to start from (default: a fresh projector).")
    args = parser.parse_args(argv)
    world = Path(ensure_built())
    out = build_tiny_hf_llava(world / "models/tiny-llama", world / "models/tiny-clip", args.out, args.projector)
    print(f"tiny Hugging Face Llava (+ processor) saved at {out}")


if __name__ == "__main__":
    main()
