"""Conversation templates: how a multi-turn chat is rendered into the prompt string the LLM sees.

The rendered strings are byte-identical to upstream LLaVA's for every template key below, so prompts
built here match checkpoints trained with upstream code. Besides the plain string (`get_prompt`), a
conversation can render itself as tagged parts (`get_prompt_parts`), which the training pipeline uses to
decide which tokens are supervised: the tag marks each assistant answer together with the separator
that closes it.
"""
import dataclasses
from enum import Enum, auto
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from llava.constants import DEFAULT_IMAGE_TOKEN

# (text, is_answer): is_answer marks an assistant reply plus the separator that ends its turn.
PromptPart = Tuple[str, bool]


class SeparatorStyle(Enum):
    """How turns are joined: role/separator layout of each template family."""

    SINGLE = auto()  # "<sys>###Human: q###Assistant: a###"
    TWO = auto()  # "<sys> USER: q ASSISTANT: a</s>" (sep after user turns, sep2 after assistant turns)
    MPT = auto()  # ChatML-like: "<|im_start|>user\nq<|im_end|>..."
    PLAIN = auto()  # no roles, no system: "<image>\ncaption\n"
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>>\n\nq [/INST] a </s><s>[INST] ..."


@dataclasses.dataclass
class Conversation:
    """A chat history plus the template that renders it (system prompt, role names, separators)."""

    system: str
    roles: Sequence[str]
    messages: List[List[Any]]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: Optional[str] = None
    version: str = "Unknown"
    skip_next: bool = False

    def append_message(self, role: str, message: Any) -> None:
        """Add one turn; message None leaves the turn open (the prompt ends with that role's header)."""
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        """A copy whose message list can be changed without touching the template it came from."""
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def get_prompt(self) -> str:
        """The full prompt string, exactly as upstream LLaVA renders it."""
        return "".join(text for text, _ in self.get_prompt_parts())

    def get_prompt_parts(self) -> List[PromptPart]:
        """The prompt as consecutive (text, is_answer) parts whose concatenation is get_prompt().

        Answer parts hold each assistant reply with the separator closing its turn, starting at the
        whitespace that precedes the reply (SentencePiece attaches a leading space to the next word).
        """
        try:
            render = _RENDERERS[self.sep_style]
        except KeyError:
            raise ValueError(f"Invalid separator style: {self.sep_style!r}") from None
        return [part for part in render(self, _plain_messages(self)) if part[0]]


def _plain_messages(conv: Conversation) -> List[Tuple[str, Optional[str]]]:
    """Turns as (role, text) pairs: unpacks (text, image, mode) tuples and puts an image turn's <image> first."""
    messages = [(role, message) for role, message in conv.messages]
    if messages and isinstance(messages[0][1], tuple):
        role, packed = messages[0]
        text = packed[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in conv.version:
            messages[0] = (role, text)
            messages[0:0] = [(conv.roles[0], "<Image><image></Image>"), (conv.roles[1], "Received.")]
        else:
            messages[0] = (role, DEFAULT_IMAGE_TOKEN + "\n" + text)
    return [(role, message[0] if isinstance(message, tuple) else message) for role, message in messages]


def _render_role_colon(conv: Conversation, messages, seps: Sequence[str]) -> List[PromptPart]:
    """SINGLE / TWO: "Role: text" + separator, the separator alternating over seps."""
    parts: List[PromptPart] = [(conv.system + seps[0], False)]
    for i, (role, message) in enumerate(messages):
        sep = seps[i % len(seps)]
        if not message:
            parts.append((role + ":", False))
        elif i % 2 == 1:
            parts += [(role + ":", False), (" " + message + sep, True)]
        else:
            parts.append((role + ": " + message + sep, False))
    return parts


def _render_single(conv: Conversation, messages) -> List[PromptPart]:
    return _render_role_colon(conv, messages, [conv.sep])


def _render_two(conv: Conversation, messages) -> List[PromptPart]:
    return _render_role_colon(conv, messages, [conv.sep, conv.sep2])


def _render_mpt(conv: Conversation, messages) -> List[PromptPart]:
    """MPT / ChatML: the role string already carries its header; every turn ends with sep."""
    parts: List[PromptPart] = [(conv.system + conv.sep, False)]
    for i, (role, message) in enumerate(messages):
        if not message:
            parts.append((role, False))
        elif i % 2 == 1:
            parts += [(role, False), (message + conv.sep, True)]
        else:
            parts.append((role + message + conv.sep, False))
    return parts


def _render_llama_2(conv: Conversation, messages) -> List[PromptPart]:
    """Llama-2 chat: user turns wrapped in [INST] ... [/INST], the system prompt inside the first one."""
    parts: List[PromptPart] = []
    for i, (role, message) in enumerate(messages):
        if i == 0 and (not message or role != conv.roles[0]):
            raise ValueError(f"{conv.version} template: the first message must be a non-empty user turn, "
                             f"got {role!r}: {message!r}")
        if not message:
            continue
        if i % 2 == 1:
            parts.append((" " + message + " " + conv.sep2, True))
            continue
        if i == 0 and conv.system:
            message = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" + message
        # Upstream strips the leading sep off the whole prompt, i.e. the first turn has none.
        parts.append(((conv.sep if i > 0 else "") + f"[INST] {message} [/INST]", False))
    return parts


def _render_plain(conv: Conversation, messages) -> List[PromptPart]:
    """No roles: each message followed by its separator (sep2 falls back to sep when unset)."""
    seps = [conv.sep, conv.sep2 if conv.sep2 is not None else conv.sep]
    parts: List[PromptPart] = [(conv.system, False)]
    for i, (_, message) in enumerate(messages):
        if message:
            parts.append((message + seps[i % 2], i % 2 == 1))
    return parts


_RENDERERS: Dict[SeparatorStyle, Callable[[Conversation, Any], List[PromptPart]]] = {
    SeparatorStyle.SINGLE: _render_single,
    SeparatorStyle.TWO: _render_two,
    SeparatorStyle.MPT: _render_mpt,
    SeparatorStyle.LLAMA_2: _render_llama_2,
    SeparatorStyle.PLAIN: _render_plain,
}


# ---------------------------------------------------------------------------------------------------------
# Templates. System prompts are part of the prompt format the released checkpoints were trained with, so
# they are reproduced exactly. Upstream's "default"/"v0" template also carries a long few-shot example
# exchange (text-only Vicuna-v0 era); it is not reproduced here, so "v0" prompts start at the system prompt.

_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
    "  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content."
    " Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
def _template(system: str, roles: Sequence[str], style: SeparatorStyle, sep: str, sep2: Optional[str] = None,
              version: str = "Unknown", messages: Optional[List[List[Any]]] = None, offset: int = 0) -> Conversation:
    return Conversation(system=system, roles=tuple(roles), messages=list(messages or []), offset=offset,
                        sep_style=style, sep=sep, sep2=sep2, version=version)


_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

conv_vicuna_v0 = _template(_HUMAN_SYSTEM, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###")
conv_vicuna_v1 = _template(_USER_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", version="v1")
conv_llama_2 = _template(_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>",
                         version="llama_v2")
conv_llava_llama_2 = _template(_LLAVA_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "<s>", "</s>",
                               version="llama_v2")
conv_mpt = _template(
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    _CHATML_ROLES, SeparatorStyle.MPT, "<|im_end|>", version="mpt",
)
conv_llava_plain = _template("", ("", ""), SeparatorStyle.PLAIN, "\n")
# The embedded tiny world's chat (playground/build_tiny_world.py): Vicuna v1's format with a short system prompt,
# so that the image, always first in the first turn, sits a few tokens from the start of every sample.
conv_tiny_world = _template("Answer questions about the picture.", ("USER", "ASSISTANT"), SeparatorStyle.TWO,
                            " ", "</s>", version="v1")
conv_llava_v0 = _template(_HUMAN_SYSTEM, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###")
conv_llava_v0_mmtag = _template(_MMTAG_SYSTEM, ("Human", "Assistant"), SeparatorStyle.SINGLE, "###",
                                version="v0_mmtag")
conv_llava_v1 = _template(_HUMAN_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>", version="v1")
conv_llava_v1_mmtag = _template(_MMTAG_SYSTEM, ("USER", "ASSISTANT"), SeparatorStyle.TWO, " ", "</s>",
                                version="v1_mmtag")
conv_mistral_instruct = _template("", ("USER", "ASSISTANT"), SeparatorStyle.LLAMA_2, "", "</s>", version="llama_v2")
conv_chatml_direct = _template("<|im_start|>system\nAnswer the questions.", _CHATML_ROLES, SeparatorStyle.MPT,
                               "<|im_end|>", version="mpt")

default_conversation = conv_vicuna_v1
conv_templates: Dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "tiny_world": conv_tiny_world,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template registered under name; ValueError listing the known names otherwise."""
    if name not in conv_templates:
        raise ValueError(f"Unknown conversation template {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()
