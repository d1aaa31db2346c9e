"""The NeXT subset of the tiny world: non-square images that anyres tiles with different pinpoints."""
import json

from PIL import Image

from llava.mm_utils import get_anyres_image_grid_shape
from playground.tiny_next import GRID_PINPOINTS, build


def test_next_subset_has_wide_and_tall_images_with_distinct_grids(tiny_world, tmp_path):
    out = build(tiny_world, n=4, seed=1, out=tmp_path / "next")
    records = json.loads((out / "sft.json").read_text())
    sizes = [Image.open(out / r["image"]).size for r in records]
    assert sizes == [(128, 64), (64, 128), (128, 64), (64, 128)]
    grids = {get_anyres_image_grid_shape(size, GRID_PINPOINTS, 64) for size in sizes}
    assert grids == {(2, 1), (1, 2)}
    pretrain = json.loads((out / "pretrain.json").read_text())
    assert pretrain[0]["conversations"][1]["value"].startswith("left: ")
    assert pretrain[1]["conversations"][1]["value"].startswith("top: ")
