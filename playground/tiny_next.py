"""A LLaVA-NeXT (anyres) subset of the tiny world: non-square images made of two square scenes.

Wide images put two scenes side by side, tall ones stack them, so anyres picks different pinpoints and unpadding
crops different sides. Built from an existing tiny world into `<world>/next/`:

    python -m playground.tiny_next [--world playground/tiny] [--n 400]
"""
import argparse
import json
import random
from pathlib import Path

from PIL import Image

from playground.build_tiny_world import DEFAULT_ROOT, ensure_built

# Pinpoints that are multiples of the tiny CLIP's 64-px input, as NeXT's are of 336.
GRID_PINPOINTS = "[(64,128),(128,64),(128,128),(192,64),(64,192)]"


def _caption(record: dict) -> str:
    return record["conversations"][1]["value"]


def build(world: Path = DEFAULT_ROOT, n: int = 400, seed: int = 0, out: Path = None) -> Path:
    """Write `<out or world/next>/{images/, pretrain.json, sft.json}`; returns the folder. Deterministic for (n, seed)."""
    out = Path(out) if out is not None else world / "next"
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == {"n": n, "seed": seed}:
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes = json.loads((world / "pretrain.json").read_text())
    rng = random.Random(seed)
    pretrain, sft = [], []
    for i in range(n):
        a, b = rng.sample(scenes, 2)
        wide = i % 2 == 0
        first, second = (Image.open(world / "images" / r["image"]).convert("RGB") for r in (a, b))
        w, h = first.size
        canvas = Image.new("RGB", (2 * w, h) if wide else (w, 2 * h))
        canvas.paste(first, (0, 0))
        canvas.paste(second, (w, 0) if wide else (0, h))
        name = f"images/{i:05d}.png"  # relative to --image_folder <world>/next
        canvas.save(out / "images" / f"{i:05d}.png")
        where = ("left", "right") if wide else ("top", "bottom")
        text = f"{where[0]}: {_caption(a)} {where[1]}: {_caption(b)}"
        pretrain.append({"id": f"next-pretrain-{i:05d}", "image": name,
                         "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": text}]})
        part = rng.randrange(2)
        sft.append({"id": f"next-sft-{i:05d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in the {where[part]} half of the image?"},
            {"from": "gpt", "value": _caption((a, b)[part]).capitalize()}]})
    (out / "pretrain.json").write_text(json.dumps(pretrain))
    (out / "sft.json").write_text(json.dumps(sft))
    manifest.write_text(json.dumps({"n": n, "seed": seed}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--n", type=int, default=400)
    a = p.parse_args()
    print(build(ensure_built(a.world), n=a.n))


if __name__ == "__main__":
    main()
