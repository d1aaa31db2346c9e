"""Shared fixtures: the embedded tiny world (built once, cached under playground/tiny)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a 2-core machine: one intra-op thread is several times faster than two (thread sync dominates).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world() -> Path:
    """Root of the built tiny world (models/, images/, pretrain.json, sft.json, eval/).

    `TINY_WORLD=/path` uses an already built world instead of the cached default.
    """
    if os.environ.get("TINY_WORLD"):
        return Path(os.environ["TINY_WORLD"])
    from playground.build_tiny_world import ensure_built

    return ensure_built()


@pytest.fixture(scope="session")
def tiny_llm_path(tiny_world) -> Path:
    return tiny_world / "models" / "tiny-llama"


@pytest.fixture(scope="session")
def tiny_clip_path(tiny_world) -> Path:
    return tiny_world / "models" / "tiny-clip"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llm_path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(tiny_llm_path), use_fast=False)


def make_model_args(clip_path, **overrides):
    """ModelArguments as the v1_5 scripts set them, pointing at the tiny CLIP."""
    from llava.train.arguments import ModelArguments

    args = dict(
        vision_tower=str(clip_path),
        mm_vision_select_layer=-2,
        mm_projector_type="mlp2x_gelu",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
    )
    args.update(overrides)
    return ModelArguments(**args)


@pytest.fixture
def tiny_llava(tiny_llm_path, tiny_clip_path):
    """A fresh LlavaLlamaForCausalLM (tiny LLaMA + tiny CLIP + random mlp2x_gelu projector), fp32, eval mode."""
    import torch
    from llava.model import LlavaLlamaForCausalLM

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(str(tiny_llm_path), attn_implementation="sdpa")
    model.get_model().initialize_vision_modules(make_model_args(tiny_clip_path))
    model.config.tokenizer_model_max_length = 2048
    return model.eval()


def enable_dualspeed(model, isolator_len: int = 4, slow_ratio: float = 0.5, **settings):
    """Turn DualSpeed on for a patched model (p = 0.9, fresh isolator, seed-0 schedule that tests steer by hand with
    `state_of(model).schedule.at(step)`), through the public `attach`."""
    import warnings

    from dualspeed_patch import DualSpeedArguments, attach

    args = DualSpeedArguments(dualspeed=True, pruning_ratio=0.9, slow_mode_ratio=slow_ratio,
                              mode_isolator_len=isolator_len, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attach(model, args, seed=0)
    return model.train()


@pytest.fixture
def patched():
    """DualSpeed's monkey-patch applied for the duration of one test, removed afterwards."""
    from dualspeed_patch import patch

    patch.apply()
    yield
    patch.remove()
