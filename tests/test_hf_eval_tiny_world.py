"""scripts/hf/eval_tiny_world.py on a tiny HF Llava with an untrained LoRA adapter and isolator: full and fast mode
answer every asked question, write LLaVA's answer JSONL and score it."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# peft reads transformers' deprecated `is_gradient_checkpointing` (nothing this test can act on)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _eval_module():
    spec = importlib.util.spec_from_file_location("hf_eval_tiny_world", REPO / "scripts/hf/eval_tiny_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_and_adapter(tiny_world, tmp_path_factory) -> tuple:
    """(base dir, adapter dir): the tiny HF Llava, a fresh LoRA adapter + processor + isolator file beside it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dualspeed_patch import DualSpeedArguments
    from dualspeed_patch.hf import save_isolator
    from playground.world_hf import build_tiny_hf_llava

    root = tmp_path_factory.mktemp("hf_eval")
    models = tiny_world / "models"
    base = build_tiny_hf_llava(models / "tiny-llama", models / "tiny-clip", root / "base")
    model = get_peft_model(LlavaForConditionalGeneration.from_pretrained(str(base)),
                           LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["multi_modal_projector"]))
    model.save_pretrained(str(root / "adapter"))
    AutoProcessor.from_pretrained(str(base)).save_pretrained(str(root / "adapter"))
    save_isolator(torch.randn(4, 128) * 0.02, DualSpeedArguments(dualspeed=True, pruning_ratio=0.75),
                  str(root / "adapter"))
    return base, root / "adapter"


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_eval_answers_and_scores(model_and_adapter, tiny_world, tmp_path, mode):
    base, adapter = model_and_adapter
    answers = tmp_path / "answers.jsonl"
    result = _eval_module().main(["--model", str(base), "--adapter", str(adapter), "--world", str(tiny_world),
                                  "--mode", mode, "--limit", "6", "--batch-size", "4", "--answers-file", str(answers)])
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == list(range(6))
    assert all({"prompt", "text", "answer_id", "model_id"} <= set(r) for r in rows)
    assert result["overall"]["total"] == 6 and result["n_missing"] == 0
