"""The tiny world's scenes: what an image shows, how it is drawn, described and asked about.

A scene is 1-4 *identical* objects (one colour, one shape) on distinct cells of a 4x4 grid. With 8-pixel patches
on a 64-pixel image every cell is exactly 2x2 patches, so an object always covers the same number of visual
tokens. The three question types are global properties of the image, which a 4-layer LLM learns to read from
its visual tokens in the build budget (earlier worlds asked for the colour at one cell or the cell of one object:
lookups the tiny LLM never learned):

- ``count`` (1-4): the share of object tokens among the visual tokens. Pruning hurts it: DivPrune keeps the most
  diverse tokens, and 4 identical objects look like 1 once only a few of their tokens remain.
- ``color`` (6) and ``shape`` (3): what every object token says; a few kept tokens still carry it.

Each patch also has a *scene word* (``slot_words``): the object's word when the patch lies in an occupied cell,
the background word otherwise. The tiny LLaMA is language-pretrained on texts whose image block is these words,
one per visual token, so stage 1 only has to map visual tokens onto embeddings the LLM already reads.
"""
from __future__ import annotations

import random
from typing import Any

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
GRID = 4  # cells per side; cell index = row * GRID + col
MAX_OBJECTS = 4
CATEGORIES: tuple[str, ...] = ("color", "count", "shape")
ANSWER_CHOICES: dict[str, list[str]] = {
    "color": list(COLORS),
    "count": [str(n) for n in range(1, MAX_OBJECTS + 1)],
    "shape": list(SHAPES),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
IMAGE_TOKEN = "<image>"
BACKGROUND_WORD = "<scene:bg>"

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color are the shapes?",
        "What is the color of the objects?",
        "Which color do the shapes have?",
    ),
    "count": (
        "How many shapes are there in the image?",
        "How many objects are in the picture?",
        "Count the shapes in the image.",
    ),
    "shape": (
        "What shape are the objects?",
        "Which shape do you see in the picture?",
        "What kind of shape is in the image?",
    ),
}

Scene = list[dict[str, Any]]  # [{"shape": str, "color": str, "cell": int}], sorted by cell


def sample_scene(rng: random.Random) -> Scene:
    """1-4 objects of one colour and shape on distinct cells."""
    n = rng.randint(1, MAX_OBJECTS)
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    return [{"shape": shape, "color": color, "cell": cell} for cell in sorted(rng.sample(range(GRID * GRID), n))]


def cell_box(cell: int, size: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of the object drawn in ``cell`` (a small margin inside the cell)."""
    step = size / GRID
    row, col = divmod(cell, GRID)
    margin = 0.1 * step
    return (col * step + margin, row * step + margin, (col + 1) * step - margin, (row + 1) * step - margin)


def render_scene(scene: Scene, size: int):
    """RGB PIL image of the scene (no anti-aliasing, so object pixels have the exact colour)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene:
        x0, y0, x1, y1 = cell_box(item["cell"], size)
        fill = COLORS[item["color"]]
        if item["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif item["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif item["shape"] == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {item['shape']!r} in scene {scene}")
    return image


def object_word(color: str, shape: str) -> str:
    """The scene word of a patch covered by a ``color`` ``shape``."""
    return f"<scene:{color}-{shape}>"


def scene_words() -> list[str]:
    """Every scene word: the background's first, then one per (colour, shape)."""
    return [BACKGROUND_WORD] + [object_word(c, s) for c in COLORS for s in SHAPES]


def slot_words(scene: Scene, image_size: int, patch_size: int) -> list[str]:
    """One scene word per visual token (patches in row-major order, as the vision tower emits them)."""
    side = image_size // patch_size
    occupied = {item["cell"]: object_word(item["color"], item["shape"]) for item in scene}
    words = []
    for py in range(side):
        for px in range(side):
            row = (py * patch_size + patch_size // 2) * GRID // image_size
            col = (px * patch_size + patch_size // 2) * GRID // image_size
            words.append(occupied.get(row * GRID + col, BACKGROUND_WORD))
    return words


def caption(scene: Scene) -> str:
    """'Three red circles.' / 'One blue square.'"""
    n, first = len(scene), scene[0]
    noun = first["shape"] if n == 1 else PLURALS[first["shape"]]
    return f"{NUMBER_WORDS[n].capitalize()} {first['color']} {noun}."


def ask(scene: Scene, category: str, rng: random.Random) -> tuple[str, str, str]:
    """A question of ``category`` about ``scene``: (question, short answer, sentence answer).

    The short answer is lower-case and is exactly what the eval key stores.
    """
    question = rng.choice(QUESTION_TEMPLATES[category])
    n, first = len(scene), scene[0]
    if category == "color":
        return question, first["color"], f"The shapes are {first['color']}."
    if category == "count":
        return question, str(n), "There is 1 shape." if n == 1 else f"There are {n} shapes."
    if category == "shape":
        noun = f"a {first['shape']}" if n == 1 else PLURALS[first["shape"]]
        return question, first["shape"], f"{'It is' if n == 1 else 'They are'} {noun}."
    raise ValueError(f"unknown question category {category!r}; expected one of {CATEGORIES}")


def short_form(answer: str) -> str:
    """Short answer as written in SFT data: capitalised like VQAv2-style answers ('Red', 'Circle')."""
    return answer[:1].upper() + answer[1:]
