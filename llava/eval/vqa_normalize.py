"""The standard VQA answer normalisation, applied to predictions and human answers before they are compared.

Rules (those of the official VQA evaluation), in order:
1. lower case; newlines and tabs become spaces;
2. punctuation marks (not apostrophes or colons) are deleted when they touch a space or when the text holds a
   digit-comma-digit group ("1,000" -> "1000"), and become a space otherwise ("t-shirt" -> "t shirt");
3. a period is deleted unless a digit follows it, so decimals survive ("3.5") and sentence ends do not;
4. number words zero..ten (and "none") become digits, the articles a / an / the are dropped;
5. contractions written without their apostrophe get it back ("isnt" -> "isn't").
Shared by VQAv2, TextVQA and GQA so every scorer compares answers the same way.
"""
from __future__ import annotations

import itertools
import re
from typing import Dict

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
               "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# Contractions with their apostrophes. Forms whose apostrophe-less spelling is an ordinary word ("its", "were",
# "well", "ill", "id", "hell", "shell", "wed", "shed", "lets") are left out so real words are not rewritten.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've
needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't shouldn't've somebody'd somebody'd've
somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll that's
there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't
what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're
why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _contraction_table() -> Dict[str, str]:
    """Every spelling of each contraction with one or more of its apostrophes missing -> the full spelling."""
    table = {}
    for full in _CONTRACTIONS:
        parts = full.split("'")
        # Each gap between parts is either kept as an apostrophe or dropped; all-kept is the full form itself.
        for keep in itertools.product((True, False), repeat=len(parts) - 1):
            if all(keep):
                continue
            spelled = parts[0] + "".join(("'" if k else "") + p for k, p in zip(keep, parts[1:]))
            table[spelled] = full
    return table


CONTRACTIONS = _contraction_table()


def normalize_punctuation(text: str) -> str:
    """Steps 2-3: delete or space out punctuation marks, delete periods that do not start a decimal part."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_words(text: str) -> str:
    """Step 4-5: number words to digits, articles dropped, apostrophes restored; words joined by single spaces."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer: 'Two dogs.' -> '2 dogs', 'The T-Shirt' -> 't shirt', 'isnt' -> "isn't"."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip().lower()
    return normalize_words(normalize_punctuation(text))
