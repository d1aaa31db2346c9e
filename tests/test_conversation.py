"""Conversation templates render exactly the prompt strings of upstream LLaVA."""
import pytest
from PIL import Image

from llava import conversation as conversation_lib
from llava.conversation import SeparatorStyle, conv_templates

V1_SYSTEM_USER = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
V1_SYSTEM_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def chat(key, *turns):
    """A fresh copy of template key with (question, answer) rounds appended."""
    conv = conv_templates[key].copy()
    conv.messages = []
    for question, answer in turns:
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], answer)
    return conv


def test_registry_has_the_upstream_keys():
    required = {"default", "v0", "v1", "vicuna_v1", "llava_v1", "llama_2", "llava_llama_2",
                "mistral_instruct", "chatml_direct", "plain", "mpt"}
    assert required <= set(conv_templates)
    assert conversation_lib.default_conversation is conv_templates["vicuna_v1"]
    with pytest.raises(ValueError, match="Unknown conversation template 'nope'.*vicuna_v1"):
        conversation_lib.get_conv_template("nope")


def test_v1_two_rounds_and_open_turn():
    prompt = chat("v1", ("Hi?", "Hello."), ("Why?", None)).get_prompt()
    assert prompt == V1_SYSTEM_USER + " USER: Hi? ASSISTANT: Hello.</s>USER: Why? ASSISTANT:"


def test_llava_v1_uses_the_human_system_prompt():
    prompt = chat("llava_v1", ("<image>\nWhat is it?", "A cat.")).get_prompt()
    assert prompt == V1_SYSTEM_HUMAN + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"


def test_plain_inference_prompt():
    assert chat("plain", ("<image>\nDescribe.", None)).get_prompt() == "<image>\nDescribe.\n"


def test_llama_2_family():
    system = conv_templates["llava_llama_2"].system
    assert system.startswith("You are a helpful language and vision assistant.")
    prompt = chat("llava_llama_2", ("Q1", "A1"), ("Q2", None)).get_prompt()
    assert prompt == f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    prompt = chat("mistral_instruct", ("Q1", "A1"), ("Q2", None)).get_prompt()
    assert prompt == "[INST] Q1 [/INST] A1 </s>[INST] Q2 [/INST]"
    assert "safe.  Your answers" in conv_templates["llama_2"].system  # two spaces, as upstream
    conv = conv_templates["llama_2"].copy()
    conv.append_message(conv.roles[1], "answer first")
    with pytest.raises(ValueError, match="first message must be a non-empty user turn"):
        conv.get_prompt()


def test_chatml_and_mpt():
    prompt = chat("chatml_direct", ("Q", None)).get_prompt()
    assert prompt == ("<|im_start|>system\nAnswer the questions.<|im_end|>"
                      "<|im_start|>user\nQ<|im_end|><|im_start|>assistant\n")
    prompt = chat("mpt", ("Q", "A")).get_prompt()
    assert prompt == ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
                      "The assistant gives helpful and honest answers.<|im_end|>"
                      "<|im_start|>user\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>")


def test_v0_starts_at_the_system_prompt():
    conv = conv_templates["v0"].copy()
    conv.append_message("Human", "Q")
    conv.append_message("Assistant", None)
    assert conv.get_prompt() == V1_SYSTEM_HUMAN + "###Human: Q###Assistant:"
    assert conv_templates["default"].messages == [] and conv_templates["default"].offset == 0


def test_image_tuple_message_moves_the_image_first():
    image = Image.new("RGB", (4, 4))
    conv = chat("vicuna_v1")
    conv.append_message("USER", ("What is <image> this?", image, "Pad"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == V1_SYSTEM_USER + " USER: <image>\nWhat is  this? ASSISTANT:"
    conv = chat("v1_mmtag")
    conv.append_message("USER", ("<image>\nQ", image, "Pad"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt().endswith(" USER: <Image><image></Image> ASSISTANT: Received.</s>USER: Q ASSISTANT:")


def test_copy_is_independent_of_the_template():
    conv = conv_templates["v1"].copy()
    conv.append_message("USER", "x")
    assert conv_templates["v1"].messages == [] and conv.messages == [["USER", "x"]]
    assert conv.sep_style is SeparatorStyle.TWO and conv.sep2 == "</s>" and conv.version == "v1"


@pytest.mark.parametrize("key,answers", [
    ("v1", [" A1</s>", " A2</s>"]),
    ("llama_2", [" A1 </s>", " A2 </s>"]),
    ("chatml_direct", ["A1<|im_end|>", "A2<|im_end|>"]),
    ("v0", [" A1###", " A2###"]),
])
def test_prompt_parts_tag_answers_with_their_closing_separator(key, answers):
    conv = chat(key, ("Q1", "A1"), ("Q2", "A2"))
    parts = conv.get_prompt_parts()
    assert "".join(text for text, _ in parts) == conv.get_prompt()
    assert [text for text, is_answer in parts if is_answer] == answers


def test_tiny_world_template_is_vicuna_v1_with_a_short_system_prompt():
    conv = chat("tiny_world", ("<image>\nWhat color are the shapes?", "Red"), ("How many?", "3"))
    assert conv.get_prompt() == ("Answer questions about the picture. USER: <image>\nWhat color are the shapes? "
                                 "ASSISTANT: Red</s>USER: How many? ASSISTANT: 3</s>")
    assert conv.version == "v1"  # masked by the same routine as Vicuna v1
    assert [text for text, is_answer in conv.get_prompt_parts() if is_answer] == [" Red</s>", " 3</s>"]
