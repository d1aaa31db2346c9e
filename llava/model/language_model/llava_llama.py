"""LLaVA on a LLaMA LLM: `LlavaConfig` (model_type "llava_llama") and `LlavaLlamaForCausalLM`."""
import inspect
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


# Inputs `generate` must hand to every `forward` call besides the text: the images behind the placeholders.
VISION_GENERATION_INPUTS = ("images", "image_sizes")

# The keyword LlamaForCausalLM.forward takes the KV cache under: `cache` in newer transformers 5 releases (which
# deprecate `past_key_values`), `past_key_values` before.
_LLM_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super(LlamaForCausalLM, self).__init__(config)
        config.model_type = "llava_llama"
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        images: Optional[torch.FloatTensor] = None,
        image_sizes: Optional[list] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        """LlamaForCausalLM.forward with `images`; extra keywords (num_items_in_batch, ...) pass through.

        The KV cache may arrive as `past_key_values` (LLaVA's name) or as `cache` (what newer transformers'
        `generate` passes); either way it reaches the LLM under the name its forward declares.
        """
        cache = kwargs.pop("cache", None)
        if past_key_values is None:
            past_key_values = cache
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
                )
            )
        optional = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states,
                    "return_dict": return_dict, _LLM_CACHE_ARG: past_key_values}
        kwargs.update({name: value for name, value in optional.items() if value is not None})
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    def _prompt_embeddings(self, input_ids, images, image_sizes, position_ids, attention_mask) -> dict:
        """The prompt as LLM input embeddings: images spliced in where the ids hold IMAGE_TOKEN_INDEX.

        Returns the keyword arguments for `GenerationMixin.generate` (`inputs_embeds`, `attention_mask`,
        `position_ids`). Text-only prompts are a plain embedding lookup; otherwise the splicing goes through
        `self.prepare_inputs_labels_for_multimodal` (which a method built on LLaVA may have replaced).
        """
        if images is None:
            embeds = self.get_model().embed_tokens(input_ids)
        else:
            _, position_ids, attention_mask, _, embeds, _ = self.prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, None, None, images, image_sizes=image_sizes
            )
        return {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids}

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, images=None, image_sizes=None, **kwargs):
        """Greedy/sampled decoding from token ids that may hold image placeholders, with `images` to fill them.

        Decoding always starts from embeddings, so (as for any `inputs_embeds` call of transformers) the result
        holds only the new tokens, not the prompt. Passing `inputs_embeds` yourself is refused: the prompt's
        embeddings are this method's job.
        """
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported; pass token ids (inputs) and images")
        if inputs is None:
            raise ValueError("generate needs the prompt's token ids as `inputs`")
        prompt = self._prompt_embeddings(
            inputs, images, image_sizes, kwargs.pop("position_ids", None), kwargs.pop("attention_mask", None)
        )
        return super().generate(**prompt, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        """transformers' per-step inputs, with `images` / `image_sizes` carried on to `forward`.

        `inputs_embeds` is named in the signature because `generate` checks for it before accepting embeddings.
        Everything else (the cache under whichever name this transformers version uses, masks) is left to the
        base implementation untouched, so no deprecated keyword is introduced here.
        """
        vision = {key: value for key in VISION_GENERATION_INPUTS if (value := kwargs.pop(key, None)) is not None}
        step_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        step_inputs.update(vision)
        return step_inputs


AutoConfig.register("llava_llama", LlavaConfig)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM)
