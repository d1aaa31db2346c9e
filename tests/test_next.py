"""LLaVA-NeXT (anyres) training and DualSpeed on packed NeXT sequences, on the tiny world's models.

Tiny CLIP: 64-px input, 8-px patches -> 8 x 8 = 64 tokens per view. Pinpoints (64,128), (128,64), (128,128) are
grids of 1x2, 2x1 and 2x2 tiles. Expected packed lengths (spatial_unpad), worked by hand from upstream's rules:
- wide 100x40 -> 2x1 grid (8 x 16 tokens); 2.5 > 16/8 so rows are cropped: int(40 * 16/100) = 6 rows kept
  (cut (8 - 6) // 2 = 1 at each end) -> 64 + 6 * (16 + 1) = 166
- tall 48x112 -> 1x2 grid (16 x 8); int(48 * 16/112) = 6 columns kept -> 64 + 16 * (6 + 1) = 176
- tall 50x112 -> 1x2 grid; int(50 * 16/112) = 7, cut (8 - 7) // 2 = 0: nothing cropped -> 64 + 16 * 9 = 208
- square 120x120 -> 2x2 grid (16 x 16), no crop -> 64 + 16 * 17 = 336
- a single view (the dummy image of a text-only sample) -> 64 + 1 newline = 65
"""
import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dualspeed_patch.patch as patch
from conftest import make_model_args
from dualspeed_patch import DualSpeedArguments, kept_tokens
from dualspeed_patch.isolator import get_isolator
from dualspeed_patch.pruners import divprune_select
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images
from dualspeed_patch.state import state_of
from dualspeed_patch import step as ds_step
from dualspeed_patch import inputs as ds_inputs

REPO = Path(__file__).resolve().parents[1]
PINPOINTS = "[(64,128),(128,64),(128,128)]"
N = 64  # tokens per view
from conftest import enable_dualspeed  # noqa: E402

L_ISO = 4
SIZES = {"wide": (100, 40), "tall": (48, 112), "tall_odd": (50, 112), "square": (120, 120)}
UNPAD_LEN = {"wide": 166, "tall": 176, "tall_odd": 208, "square": 336}
VIEWS = {"wide": 3, "tall": 3, "tall_odd": 3, "square": 5}


def noise_image(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def next_llava(llm_path, clip_path, merge="spatial_unpad"):
    """Tiny LLaVA-NeXT: anyres config as attach_vision records it, fp32, eval mode."""
    from llava.model import LlavaLlamaForCausalLM

    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM.from_pretrained(str(llm_path), attn_implementation="sdpa")
    model.get_model().initialize_vision_modules(make_model_args(clip_path, mm_patch_merge_type=merge))
    config = model.config
    config.image_aspect_ratio, config.image_grid_pinpoints = "anyres", PINPOINTS
    config.tokenizer_model_max_length, config.tokenizer_padding_side = 2048, "right"
    config.mm_use_im_patch_token = config.mm_use_im_start_end = False
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared machine, multi-threaded small ops mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def next_model(tiny_llm_path, tiny_clip_path):
    return next_llava(tiny_llm_path, tiny_clip_path)


def pixels(model, names):
    """(list of [V, 3, 64, 64] view tensors, image sizes) through the data pipeline's anyres preprocessing."""
    images = [noise_image(SIZES[name], seed) for seed, name in enumerate(names)]
    views = process_images(images, model.get_vision_tower().image_processor, model.config)
    return list(views), [image.size for image in images]


def next_batch(model, names=("wide", "tall", "square")):
    """One row per image (text, image, 3-token answer) plus a text-only row with its single-view dummy image."""
    views, sizes = pixels(model, names)
    rows = [[1, 5 + i, IMAGE_TOKEN_INDEX, 20, 21, 22, 23] for i in range(len(names))] + [[1, 30, 31, 32, 33, 0, 0]]
    ids = torch.tensor(rows)
    mask = (ids != 0).long()
    labels = torch.where(torch.arange(7) >= 4, ids, IGNORE_INDEX)
    labels[-1] = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 31, 32, 33, IGNORE_INDEX, IGNORE_INDEX])
    views.append(torch.zeros(1, 3, 64, 64))
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=views, image_sizes=sizes + [(64, 64)])


def prepare(model, b, mode=None):
    args = (b["input_ids"], None, b["attention_mask"], None, b["labels"], b["images"], b["image_sizes"])
    if mode is None:
        return model.prepare_inputs_labels_for_multimodal(*args)
    with patch.visual_mode(model, mode):
        return model.prepare_inputs_labels_for_multimodal(*args)


# ---------------------------------------------------------------- packing


def test_visual_token_count_matches_closed_form(next_model):
    """Both packings (llava's reshapes, the patch's index map) give the closed-form lengths and the same tokens."""
    from dualspeed_patch.anyres import gather_packed, packed_index, packing_settings
    from llava.model.anyres import merge_image_views

    model = next_model
    names = list(SIZES)
    views, sizes = pixels(model, names)
    assert [v.shape[0] for v in views] == [VIEWS[n] for n in names]
    views.append(torch.zeros(1, 3, 64, 64))
    sizes.append((64, 64))
    with torch.no_grad():
        features = model.encode_images(torch.cat(views))
    per_image = features.split([v.shape[0] for v in views])
    newline = model.get_model().image_newline.detach()
    for merge in ("flat", "spatial", "spatial_unpad"):
        model.config.mm_patch_merge_type = merge
        expected = [UNPAD_LEN[n] if merge == "spatial_unpad" else VIEWS[n] * N for n in names]
        expected.append(N + 1 if merge == "spatial_unpad" else N)
        ours = [merge_image_views(f, size, merge, "anyres", PINPOINTS, 8, 64, newline) for f, size in zip(per_image, sizes)]
        assert [o.shape[0] for o in ours] == expected, merge
        packing = packed_index([v.shape[0] for v in views], N, sizes, packing_settings(model))
        assert packing.lengths.tolist() == expected, merge
        packed = gather_packed(features.flatten(0, 1), packing, newline)
        for i, o in enumerate(ours):
            assert torch.equal(packed[i, : expected[i]], o), (merge, names[i] if i < len(names) else "dummy")


def test_full_mode_patched_output_equals_llava(next_model):
    model = next_model
    b = next_batch(model, names=("wide", "square"))
    for merge in ("flat", "spatial", "spatial_unpad"):
        model.config.mm_patch_merge_type = merge
        with torch.no_grad():
            expected = prepare(model, b)
            patch.apply()
            try:
                got = prepare(model, b, patch.FULL)
            finally:
                patch.remove()
        assert got[0] is None and expected[0] is None
        assert torch.equal(got[4], expected[4]), merge
        assert torch.equal(got[5], expected[5]) and torch.equal(got[2], expected[2]), merge
    # spatial_unpad: text + packed length per row; the text-only row keeps its 5 tokens
    assert got[2].sum(1).tolist() == [6 + 166, 6 + 336, 5]


def test_unpad_keeps_upstream_row_and_column_order(next_model):
    """Packed tokens sit where upstream puts them: base view, then the cropped grid row by row, newline last."""
    model = next_model
    views, sizes = pixels(model, ["wide"])
    with torch.no_grad():
        feats = model.encode_images(views[0])  # [3, 64, H]: base, left tile, right tile
        state_of(model).args = DualSpeedArguments()
        packed, _, _ = ds_inputs.visual_sequences(model, state_of(model), views, image_sizes=sizes)
    packed = packed[0]
    newline = model.get_model().image_newline
    torch.testing.assert_close(packed[:N], feats[0], rtol=0, atol=0)
    # grid row 1 (row 0 is cropped): left tile row 1, right tile row 1, newline
    row = torch.cat([feats[1, 8:16], feats[2, 8:16], newline[None]])
    torch.testing.assert_close(packed[N:N + 17], row, rtol=0, atol=0)
    torch.testing.assert_close(packed[N + 5 * 17:N + 6 * 17 - 1], torch.cat([feats[1, 48:56], feats[2, 48:56]]), rtol=0, atol=0)


# ---------------------------------------------------------------- checkpoints and image_newline


def test_next_checkpoint_round_trip_and_newline_gradient(next_model, tiny_tokenizer, tmp_path):
    from safetensors import safe_open

    from llava.model.builder import load_pretrained_model

    model = next_model
    b = next_batch(model, names=("wide",))
    with torch.no_grad():
        model.get_model().image_newline.normal_()  # a "trained" value, distinct from any fresh init
        expected = model(**b).logits
    model.save_pretrained(tmp_path / "llava-next-tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "llava-next-tiny")
    with safe_open(str(tmp_path / "llava-next-tiny" / "model.safetensors"), "pt") as f:
        assert "model.image_newline" in set(f.keys())
    config = json.loads((tmp_path / "llava-next-tiny" / "config.json").read_text())
    assert (config["image_aspect_ratio"], config["image_grid_pinpoints"], config["mm_patch_merge_type"]) == (
        "anyres", PINPOINTS, "spatial_unpad")
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "llava-next-tiny"), None, "llava-next-tiny", device="cpu")
    with torch.no_grad():
        got = loaded(**b).logits
    assert torch.equal(got, expected)

    model.train()
    model(**b).loss.backward()
    grad = model.get_model().image_newline.grad
    assert grad is not None and grad.abs().sum() > 0


# ---------------------------------------------------------------- DualSpeed on NeXT


@pytest.fixture
def ds_next(next_model, patched):
    model = next_model
    return enable_dualspeed(model, L_ISO)


def step_of_mode(schedule, slow):
    return next(s for s in range(100) if schedule.at(s).is_slow() == slow)


def test_fast_mode_on_next_layout(ds_next):
    model = ds_next
    b = next_batch(model)
    packed_len = [166, 176, 336]
    k = [kept_tokens(n, 0.9) for n in packed_len]
    assert k == [17, 18, 34]
    with torch.no_grad():
        _, _, mask, _, embeds, labels = prepare(model, b, patch.FAST)
        visual, lengths, _ = ds_inputs.visual_sequences(model, state_of(model), b["images"][:3], image_sizes=b["image_sizes"][:3])
    assert lengths.tolist() == packed_len
    # LLM input per row = 6 text tokens + K_i + l; the text-only row is untouched
    assert mask.sum(1).tolist() == [6 + k[0] + L_ISO, 6 + k[1] + L_ISO, 6 + k[2] + L_ISO, 5]
    valid = torch.arange(visual.shape[1]) < lengths.unsqueeze(1)
    chosen = divprune_select(visual, torch.tensor(k), valid)
    newline = model.get_model().image_newline
    for i in range(3):
        idx = chosen[i, : k[i]]
        assert bool((idx[1:] > idx[:-1]).all())  # original order
        torch.testing.assert_close(embeds[i, 2:2 + L_ISO], get_isolator(model).weight, rtol=0, atol=0)
        torch.testing.assert_close(embeds[i, 2 + L_ISO:2 + L_ISO + k[i]], visual[i, idx], rtol=0, atol=0)
        assert (labels[i, : 2 + L_ISO + k[i]] == IGNORE_INDEX).all()
        assert labels[i, 2 + L_ISO + k[i]:6 + L_ISO + k[i]].tolist() == [IGNORE_INDEX, 21, 22, 23]
        # DivPrune sees the newlines as duplicates of each other: exactly one survives per image here
        assert int((visual[i, idx] == newline).all(dim=1).sum()) == 1


def test_fast_step_on_next_trains_projector_newline_and_isolator(ds_next):
    model = ds_next
    state_of(model).schedule.at(step_of_mode(state_of(model).schedule, slow=False))
    model(**next_batch(model)).loss.backward()
    assert get_isolator(model).weight.grad.abs().sum() > 0
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    assert model.get_model().image_newline.grad.abs().sum() > 0


def test_slow_step_on_next(ds_next):
    model = ds_next.eval()
    b = next_batch(model, names=("tall",))
    state_of(model).args.distill_alpha = 0.0  # then the loss is exactly the student's CE on full packed tokens
    args = (b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    loss, _ = ds_step.slow_step(model, state_of(model), *args, image_sizes=b["image_sizes"])
    with patch.visual_mode(model, patch.FULL):
        plain = model(**b).loss
    torch.testing.assert_close(loss, plain)
    state_of(model).args.distill_alpha = 1.0
    model.train()
    state_of(model).schedule.at(step_of_mode(state_of(model).schedule, slow=True))
    out = model(**b)
    assert torch.isfinite(out.loss) and out.loss > plain.detach()  # CE + a positive KL
    out.loss.backward()
    assert model.get_model().image_newline.grad.abs().sum() > 0


def test_context_pruners_get_packed_context(ds_next, tiny_clip_path):
    """FasterVLM's [CLS] attention and CDPruner's relevance are carried onto the packed sequence; newlines get 0."""
    from dualspeed_patch.vision_context import ClipTextScorer

    model = ds_next
    b = next_batch(model, names=("wide", "square"))
    views, sizes = b["images"][:2], b["image_sizes"][:2]
    state_of(model).text_scorer = ClipTextScorer(tiny_clip_path)
    state_of(model).instructions = ["a red square", None]
    newline = model.get_model().image_newline
    for method, key in (("fastervlm", "cls_attention"), ("cdpruner", "relevance")):
        state_of(model).args.vtp_method = method
        with torch.no_grad():
            visual, lengths, context = ds_inputs.visual_sequences(model, state_of(model), views, pruning=True, image_sizes=sizes)
            pruned, kept = ds_inputs.prune_visual(state_of(model), visual, lengths, with_isolator=False, **context)
        score = context[key]
        assert score.shape == visual.shape[:2]
        is_newline = (visual == newline).all(dim=-1)
        image_token = (torch.arange(visual.shape[1]) < lengths.unsqueeze(1)) & ~is_newline
        assert is_newline.sum(1).tolist() == [6, 16] and image_token.sum(1).tolist() == [160, 320]
        assert (score[~image_token] == 0).all()  # newlines and padding
        if key == "cls_attention":
            assert (score[image_token] > 0).all()
        else:  # min-max normalised over the image's own tokens
            assert score[0][image_token[0]].min() == 0 and score[0][image_token[0]].max() == 1
        assert kept.tolist() == [17, 34]
        assert not (pruned[0, :17] == newline).all(dim=-1).any()  # ranked last, never kept at p = 0.9
    no_text = context["relevance"][1][image_token[1]]
    assert no_text.eq(1).all()  # no instruction: q = 1 on image tokens


# ---------------------------------------------------------------- distributed run


def write_anyres_data(root: Path) -> Path:
    """A small LLaVA JSON (v1 conversations) over non-square images, plus text-only samples."""
    (root / "images").mkdir(parents=True)
    records = []
    for i, (name, size) in enumerate(list(SIZES.items()) * 3):
        noise_image(size, i).save(root / "images" / f"{name}_{i}.png")
        records.append({"id": f"next-{i}", "image": f"{name}_{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat shape is image {i}?"},
            {"from": "gpt", "value": f"It is {name} number {i}."}]})
    for i in range(4):
        records.append({"id": f"text-{i}", "conversations": [
            {"from": "human", "value": f"What is {i} plus one?"}, {"from": "gpt", "value": f"{i} plus one is {i + 1}."}]})
    path = root / "next.json"
    path.write_text(json.dumps(records))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pretrain_dir(path: Path) -> None:
    """A stage-1 output as pretrain_dualspeed.sh writes it: mm_projector.bin + mode_isolator.bin (random values)."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    projector = {"model.mm_projector.0.weight": torch.randn(128, 128, generator=g) * 0.02,
                 "model.mm_projector.0.bias": torch.zeros(128),
                 "model.mm_projector.2.weight": torch.randn(128, 128, generator=g) * 0.02,
                 "model.mm_projector.2.bias": torch.zeros(128)}
    torch.save(projector, path / "mm_projector.bin")
    torch.save({"model.mode_isolator.weight": torch.randn(4, 128, generator=g) * 0.02}, path / "mode_isolator.bin")


def test_next_dualspeed_script_zero3_lora_two_processes(tiny_world, tmp_path):
    """scripts/next/finetune_lora_dualspeed.sh itself, on anyres data: 2 CPU processes, ZeRO-3, LoRA, mixed modes."""
    data = write_anyres_data(tmp_path / "data")
    write_pretrain_dir(tmp_path / "pretrain")
    out = tmp_path / "run"
    env = dict(
        os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MASTER_PORT=str(free_port()),
        MODEL=str(tiny_world / "models/tiny-llama"), VISION_TOWER=str(tiny_world / "models/tiny-clip"),
        DATA_PATH=str(data), IMAGE_FOLDER=str(tmp_path / "data" / "images"), PRETRAIN_DIR=str(tmp_path / "pretrain"),
        OUTPUT_DIR=str(out), NUM_GPUS="2", GLOBAL_BATCH="4", PER_DEVICE_BATCH="2", GRID_PINPOINTS=PINPOINTS,
        SLOW_MODE_RATIO="0.5", MODEL_MAX_LENGTH="512", BF16="False", TF32="False", GRADIENT_CHECKPOINTING="False",
        NUM_WORKERS="0", REPORT_TO="none",
    )
    env.pop("LAUNCHER", None)
    extra = ["--max_steps", "4", "--save_strategy", "no", "--lora_r", "8", "--lora_alpha", "16",
             "--learning_rate", "1e-3", "--mm_projector_lr", "1e-4", "--seed", "0", "--data_seed", "0"]
    proc = subprocess.run(["bash", "scripts/next/finetune_lora_dualspeed.sh", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=420)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"mode isolator loaded from {tmp_path / 'pretrain' / 'mode_isolator.bin'}" in log
    assert "dualspeed/slow_ce" in log and "dualspeed/fast_ce" in log  # both modes ran
    weights = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert weights["base_model.model.model.image_newline"].shape == (128,)  # trained and gathered whole
    config = json.loads((out / "config.json").read_text())
    assert (config["image_aspect_ratio"], config["mm_patch_merge_type"], config["image_grid_pinpoints"]) == (
        "anyres", "spatial_unpad", PINPOINTS)
    assert config["tokenizer_model_max_length"] == 512


def test_next_scripts_keep_the_global_batch():
    """The NeXT flags win over the v1_5 ones they extend, and batch x accumulation x GPUs stays the recipe's."""
    env = dict(os.environ, LAUNCHER="echo", NUM_GPUS="8", SKIP_PREFLIGHT="1")  # print the command only
    expected = {"pretrain": (8, 4, "llava/"), "pretrain_dualspeed": (32, 1, "dualspeed_patch/"),
                "finetune_lora": (4, 4, "llava/"), "finetune_lora_dualspeed": (4, 4, "dualspeed_patch/")}
    for script, (per_device, accum, entry) in expected.items():
        out = subprocess.run(["bash", f"scripts/next/{script}.sh"], cwd=REPO, env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        last = {flag: out[i + 1] for i, flag in enumerate(out[:-1]) if flag.startswith("--")}  # later flags win
        assert out[0].startswith(entry), script
        assert (last["--image_aspect_ratio"], last["--mm_patch_merge_type"]) == ("anyres", "spatial_unpad"), script
        assert last["--image_grid_pinpoints"] == "[(336,672),(672,336),(672,672),(1008,336),(336,1008)]"
        assert last["--model_max_length"] == "4096"
        assert (int(last["--per_device_train_batch_size"]), int(last["--gradient_accumulation_steps"])) == (per_device, accum)
        assert per_device * accum * 8 == (256 if "pretrain" in script else 128)
        assert ("--dualspeed" in last) == ("dualspeed" in script)
