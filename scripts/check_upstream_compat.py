"""Check that `dualspeed_patch.apply()` works on the public upstream LLaVA package, on upstream's own stack.

Run inside an environment that has upstream's pinned libraries (transformers 4.37.x) and NOT this repo's
`llava/` installed, pointing at an exported upstream tree:

    python scripts/check_upstream_compat.py --llava-root /tmp/upstream-llava --world playground/tiny

One way to make such an environment (torch first, from the local CPU wheel):

    python -m venv /tmp/venv437
    /tmp/venv437/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/venv437/bin/pip install transformers==4.37.2 tokenizers==0.15.1 accelerate==0.21.0 einops==0.6.1 \
        "numpy<2" sentencepiece protobuf pillow safetensors

The repo root is put on sys.path only after upstream `llava` has been imported, so `dualspeed_patch` comes from
this repo and `llava` from --llava-root (checked). The model is the tiny world's LLaMA + CLIP, built through
upstream's own `initialize_vision_modules`. Each check prints PASS/FAIL; the exit status is 1 if any failed.
"""
import argparse
import inspect
import math
import os
import sys
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
ISOLATOR_LEN = 4
PRUNING_RATIO = 0.9


def import_upstream(llava_root: Path):
    """Import upstream `llava` (model classes + arch module) from `llava_root`, then make `dualspeed_patch`
    importable from this repo without letting this repo's own `llava/` shadow upstream's."""
    if not (llava_root / "llava" / "model" / "llava_arch.py").is_file():
        raise SystemExit(f"--llava-root {llava_root}: no llava/model/llava_arch.py there")
    sys.path.insert(0, str(llava_root))
    import llava.model.llava_arch as arch
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    found = Path(arch.__file__).resolve()
    if llava_root.resolve() not in found.parents:
        raise SystemExit(f"imported llava from {found}, not from --llava-root {llava_root}")
    sys.path.append(str(REPO_ROOT))
    import dualspeed_patch  # noqa: F401

    return arch, LlavaLlamaForCausalLM


def build_model(cls, world: Path, max_length: int = 2048):
    """Tiny upstream LlavaLlamaForCausalLM: tiny LLaMA + tiny CLIP + fresh mlp2x_gelu projector, fp32, eval."""
    import torch

    torch.manual_seed(0)
    model = cls.from_pretrained(str(world / "models" / "tiny-llama"), attn_implementation="sdpa")
    model_args = SimpleNamespace(
        vision_tower=str(world / "models" / "tiny-clip"),
        mm_vision_select_layer=-2,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        pretrain_mm_mlp_adapter=None,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
    )
    model.get_model().initialize_vision_modules(model_args)
    model.config.tokenizer_model_max_length = max_length
    return model.eval()


def mixed_batch(model) -> Dict[str, "object"]:
    """Row 0: text + image + 3 answer tokens; row 1: text-only (dummy image), right padded by 2."""
    import torch
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    size = model.get_vision_tower().config.image_size
    ignore = IGNORE_INDEX
    return dict(
        input_ids=torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, 10, 11, 12, 13, 0, 0]]),
        attention_mask=torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
        labels=torch.tensor([[ignore, ignore, ignore, ignore, 7, 8, 9], [ignore, ignore, 11, 12, 13, ignore, ignore]]),
        images=torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7)),
    )


def prepare(model, b, with_positions: bool = False):
    """Call the model's `prepare_inputs_labels_for_multimodal` on batch `b` (no gradient)."""
    import torch

    positions = None
    if with_positions:
        positions = torch.arange(b["input_ids"].shape[1]).unsqueeze(0).expand_as(b["input_ids"]).contiguous()
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(
            b["input_ids"], positions, b["attention_mask"], None, b["labels"], b["images"])


def compare_prepared(expected, got, what: str) -> str:
    """Assert two LLaVA return tuples match (embeds exactly, labels, mask and its dtype; position ids on real
    tokens). Returns a note on padded position ids, where upstream writes 0 and the patch may not."""
    import torch

    assert got[0] is None and expected[0] is None, f"{what}: input_ids should be None"
    assert got[3] is None and expected[3] is None, f"{what}: past_key_values should pass through as None"
    assert got[4].shape == expected[4].shape, f"{what}: embeds shape {tuple(got[4].shape)} != {tuple(expected[4].shape)}"
    diff = (got[4] - expected[4]).abs().max().item()
    assert diff <= 1e-6, f"{what}: embeds differ by {diff:.3g}"
    assert torch.equal(got[5], expected[5]), f"{what}: labels differ\n{got[5]}\n{expected[5]}"
    assert got[2].dtype == expected[2].dtype, f"{what}: mask dtype {got[2].dtype} != {expected[2].dtype}"
    assert torch.equal(got[2], expected[2]), f"{what}: attention masks differ\n{got[2]}\n{expected[2]}"
    if expected[1] is None:
        assert got[1] is None, f"{what}: position_ids should be None"
        return f"embeds max |diff| {diff:.1e}"
    real = expected[2].bool()
    assert got[1].dtype == expected[1].dtype, f"{what}: position dtype {got[1].dtype} != {expected[1].dtype}"
    assert torch.equal(got[1][real], expected[1][real]), f"{what}: position ids differ on real tokens"
    pads = int((got[1][~real] != expected[1][~real]).sum())
    return f"embeds max |diff| {diff:.1e}; position ids equal on real tokens ({pads} padded positions differ, masked)"


def fast_and_slow_steps(schedule) -> Tuple[int, int]:
    """First global steps at which the schedule picks fast and slow mode."""
    fast = next(s for s in range(1000) if not schedule.at(s).is_slow())
    slow = next(s for s in range(1000) if schedule.at(s).is_slow())
    return fast, slow


def greedy(model, input_ids, images, max_new_tokens: int = 6):
    """Upstream `generate` (greedy) on one prompt with its image: (token ids, [1, steps, vocab] scores)."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids, images=images, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             use_cache=True, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores, dim=1)


def make_checks(arch, cls, world: Path) -> List[Tuple[str, Callable[[], str]]]:
    """The ordered checks; each returns a short detail string or raises AssertionError."""
    import torch
    import transformers

    import dualspeed_patch.patch as patch
    from dualspeed_patch import DualSpeedArguments, kept_tokens
    from dualspeed_patch.isolator import attach_isolator, get_isolator
    from dualspeed_patch.modes import ModeSchedule
    from dualspeed_patch.pruners import divprune_select

    state: Dict[str, object] = {}

    def build() -> str:
        from safetensors.torch import load_file

        model = build_model(cls, world)
        keys = set(model.state_dict())
        for key in ("model.mm_projector.0.weight", "model.mm_projector.2.weight",
                    "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"):
            assert key in keys, f"state dict lacks {key}"
        clip = load_file(str(world / "models" / "tiny-clip" / "model.safetensors"))
        name = "vision_model.embeddings.patch_embedding.weight"
        loaded = model.get_vision_tower().vision_tower.state_dict()[name]
        assert torch.equal(loaded, clip[name]), "tiny CLIP weights were not loaded (random init?)"
        state["model"], state["batch"] = model, mixed_batch(model)
        state["original"] = arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal
        state["forwards"] = {c: c.__dict__["forward"] for c in patch._subclasses(arch.LlavaMetaForCausalLM)
                             if "forward" in c.__dict__}
        tower = model.get_vision_tower()
        return f"N = {tower.num_patches} visual tokens, hidden {model.config.hidden_size}"

    def originals() -> str:
        model, b = state["model"], state["batch"]
        state["expected"] = prepare(model, b)
        state["expected_pos"] = prepare(model, b, with_positions=True)
        model.config.tokenizer_padding_side = "left"
        state["expected_left"] = prepare(model, b)
        model.config.tokenizer_padding_side = "right"
        model.config.tokenizer_model_max_length = 20
        state["expected_trunc"] = prepare(model, b)
        model.config.tokenizer_model_max_length = 2048
        lengths = state["expected"][2].sum(1).tolist()
        return f"upstream LLM input lengths {lengths}"

    def apply() -> str:
        patch.apply(arch)
        meta = arch.LlavaMetaForCausalLM
        first = meta.prepare_inputs_labels_for_multimodal
        assert first is not state["original"], "prepare_inputs_labels_for_multimodal was not replaced"
        wrapped = [c.__name__ for c, f in state["forwards"].items() if c.__dict__["forward"] is not f]
        assert cls.__name__ in wrapped, f"{cls.__name__}.forward was not wrapped"
        forwards = {c: c.__dict__["forward"] for c in state["forwards"]}
        patch.apply(arch)
        patch.apply()  # the default arch module must resolve to the imported (upstream) llava
        assert meta.prepare_inputs_labels_for_multimodal is first, "apply() is not idempotent (prepare)"
        assert all(c.__dict__["forward"] is f for c, f in forwards.items()), "apply() is not idempotent (forward)"
        for forward in (cls.forward, state["model"].forward):  # the Trainer inspects the bound method
            params = inspect.signature(forward).parameters
            assert {"images", "image_sizes", "labels"} <= set(params), f"forward signature lost images: {list(params)}"
        return f"wrapped forward of {sorted(wrapped)}; signature keeps images"

    def full_mode() -> str:
        model, b = state["model"], state["batch"]
        notes = [compare_prepared(state["expected"], prepare(model, b), "right padding")]
        notes.append(compare_prepared(state["expected_pos"], prepare(model, b, with_positions=True), "with position_ids"))
        model.config.tokenizer_padding_side = "left"
        try:
            notes.append(compare_prepared(state["expected_left"], prepare(model, b), "left padding"))
        finally:
            model.config.tokenizer_padding_side = "right"
        model.config.tokenizer_model_max_length = 20
        try:
            notes.append(compare_prepared(state["expected_trunc"], prepare(model, b), "truncated to 20"))
        finally:
            model.config.tokenizer_model_max_length = 2048
        return " | ".join(notes)

    def fast_mode() -> str:
        model, b = state["model"], state["batch"]
        model._dualspeed_args = DualSpeedArguments(dualspeed=True, pruning_ratio=PRUNING_RATIO, slow_mode_ratio=0.5,
                                                   mode_isolator_len=ISOLATOR_LEN)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attach_isolator(model, ISOLATOR_LEN)
        n = model.get_vision_tower().num_patches
        k = kept_tokens(n, PRUNING_RATIO)
        with patch.visual_mode(model, patch.FAST):
            _, _, mask, _, embeds, labels = prepare(model, b)
        text = int(b["attention_mask"][0].sum()) - 1
        lengths = mask.sum(1).tolist()
        assert lengths == [text + k + ISOLATOR_LEN, 5], f"fast lengths {lengths}, expected [{text + k + ISOLATOR_LEN}, 5]"
        iso = get_isolator(model).weight
        assert torch.equal(embeds[0, 2:2 + ISOLATOR_LEN], iso.detach()), "isolator is not right after the text prefix"
        with torch.no_grad():
            features = model.encode_images(b["images"][:1])
        kept = divprune_select(features, k)[0]
        assert torch.equal(embeds[0, 2 + ISOLATOR_LEN:2 + ISOLATOR_LEN + k], features[0, kept]), "kept tokens differ"
        assert labels[0, -3:].tolist() == [7, 8, 9], f"answer labels moved: {labels[0].tolist()}"
        with patch.visual_mode(model, patch.PRUNED):
            pruned = prepare(model, b)[2].sum(1).tolist()
        assert pruned == [text + k, 5], f"pruned-mode lengths {pruned}, expected [{text + k}, 5]"
        return f"K = kept_tokens({n}, {PRUNING_RATIO}) = {k}; fast lengths {lengths}; pruned lengths {pruned}"

    def train_fast() -> str:
        model, b = state["model"], state["batch"]
        model._dualspeed_schedule = ModeSchedule(seed=0, slow_ratio=0.5)
        fast, slow = fast_and_slow_steps(model._dualspeed_schedule)
        state["slow_step"] = slow
        model.train()
        model.zero_grad(set_to_none=True)
        model._dualspeed_schedule.at(fast)
        out = model(**b)
        assert torch.isfinite(out.loss), f"fast loss {out.loss}"
        out.loss.backward()
        iso_grad = get_isolator(model).weight.grad
        assert iso_grad is not None and iso_grad.abs().sum() > 0, "isolator got no gradient in fast mode"
        proj_grad = model.get_model().mm_projector[0].weight.grad
        assert proj_grad is not None and proj_grad.abs().sum() > 0, "projector got no gradient in fast mode"
        return f"step {fast}: loss {out.loss.item():.4f}, |grad isolator| {iso_grad.abs().sum().item():.3g}"

    def train_slow() -> str:
        model, b = state["model"], state["batch"]
        model.train()
        model.zero_grad(set_to_none=True)
        model._dualspeed_schedule.at(state["slow_step"])
        seen = []
        hook = model.get_model().register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state.requires_grad))
        try:
            out = model(**b)
        finally:
            hook.remove()
        assert torch.isfinite(out.loss), f"slow loss {out.loss}"
        assert sorted(seen) == [False, True], f"expected a no-grad teacher and a student pass, saw {seen}"
        out.loss.backward()
        proj_grad = model.get_model().mm_projector[0].weight.grad
        assert proj_grad is not None and proj_grad.abs().sum() > 0, "projector got no gradient in slow mode"
        assert get_isolator(model).weight.grad is None, "isolator got a gradient in slow mode (teacher has no graph)"
        return f"step {state['slow_step']}: loss {out.loss.item():.4f} (teacher no-grad, student with grad)"

    def slow_student_matches_upstream() -> str:
        model, b = state["model"].eval(), state["batch"]
        args = model._dualspeed_args
        alpha = args.distill_alpha
        args.distill_alpha = 0.0
        try:
            loss, metrics = patch.slow_step(model, b["input_ids"], b["attention_mask"], b["labels"], b["images"])
        finally:
            args.distill_alpha = alpha
        patch.remove(arch)
        try:
            with torch.no_grad():
                plain = model(**b).loss  # upstream's own forward and input builder
        finally:
            patch.apply(arch)
        assert torch.allclose(loss.detach(), plain, rtol=1e-5, atol=1e-6), f"slow CE {loss.item()} != upstream {plain.item()}"
        assert metrics["kl"].item() >= 0, f"negative KL {metrics['kl']}"
        return f"alpha=0 slow loss {loss.item():.6f} == upstream CE {plain.item():.6f}; KL {metrics['kl'].item():.3g}"

    def inference_passthrough() -> str:
        model, b = state["model"].eval(), state["batch"]
        with torch.no_grad():
            got = model(**b).logits
            patch.remove(arch)
            try:
                assert arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal is state["original"], \
                    "remove() did not restore upstream's prepare_inputs_labels_for_multimodal"
                assert all(c.__dict__["forward"] is f for c, f in state["forwards"].items()), \
                    "remove() did not restore upstream's forward"
                expected = model(**b).logits
            finally:
                patch.apply(arch)
        diff = (got - expected).abs().max().item()
        assert got.shape == expected.shape and diff <= 1e-5, f"eval logits differ by {diff:.3g}"
        return f"eval logits equal upstream's (max |diff| {diff:.1e}); remove() restores upstream"

    def generate() -> str:
        from llava.constants import IMAGE_TOKEN_INDEX

        model, b = state["model"].eval(), state["batch"]
        prompt = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7]])
        image = b["images"][:1]
        patched, patched_scores = greedy(model, prompt, image)
        with patch.visual_mode(model, patch.PRUNED):
            pruned, _ = greedy(model, prompt, image)
        patch.remove(arch)
        try:
            plain, plain_scores = greedy(model, prompt, image)
        finally:
            patch.apply(arch)
        assert torch.equal(patched, plain), f"patched generate {patched.tolist()} != upstream {plain.tolist()}"
        diff = (patched_scores - plain_scores).abs().max().item()
        assert diff <= 1e-5, f"generate scores differ from upstream's by {diff:.3g}"
        assert pruned.shape[0] == 1 and pruned.shape[1] >= 1, f"pruned generate returned {pruned.shape}"
        return (f"full-mode tokens {patched[0].tolist()} == upstream's (scores max |diff| {diff:.1e}); "
                f"pruned inference {pruned[0].tolist()}")

    def trainer_steps() -> str:
        import tempfile

        from dualspeed_patch.callback import DualSpeedCallback, DualSpeedMetrics

        model, b = state["model"].train(), state["batch"]
        schedule, metrics = ModeSchedule(seed=3, slow_ratio=0.5), DualSpeedMetrics()
        model._dualspeed_schedule, model._dualspeed_metrics = schedule, metrics
        seen = []
        hook = model.register_forward_pre_hook(lambda m, a: seen.append((schedule.global_step, schedule.micro_step)))
        rows = [{k: v[i] for k, v in b.items()} for i in range(2)]
        with tempfile.TemporaryDirectory() as out:
            args = transformers.TrainingArguments(
                output_dir=out, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                use_cpu=True, dataloader_num_workers=0, seed=0)
            collate = lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]}  # noqa: E731
            trainer = transformers.Trainer(model=model, args=args, train_dataset=rows * 4, data_collator=collate,
                                           callbacks=[DualSpeedCallback(schedule, metrics)])
            try:
                result = trainer.train()
            finally:
                hook.remove()
        expected = [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert seen == expected, f"schedule positions per micro-step {seen}, expected {expected}"
        slow = sum(ModeSchedule(3, 0.5).at(g, m).is_slow() for g, m in expected)
        assert (metrics.fast_steps, metrics.slow_steps) == (4 - slow, slow), \
            f"recorded fast/slow {metrics.fast_steps}/{metrics.slow_steps}, schedule says {4 - slow}/{slow}"
        assert math.isfinite(result.training_loss), f"training loss {result.training_loss}"
        return f"micro-steps {seen}, {slow} slow; training loss {result.training_loss:.4f}"

    return [
        ("build upstream model via initialize_vision_modules", build),
        ("upstream original prepare_inputs_labels_for_multimodal", originals),
        ("apply(upstream arch): patched, idempotent, signature keeps images", apply),
        ("full mode == upstream (right/left padding, position_ids, truncation)", full_mode),
        ("fast mode: text + K + 4 for the image sample", fast_mode),
        ("train forward, fast step: finite loss, isolator gradient", train_fast),
        ("train forward, slow step: finite loss, teacher without graph", train_slow),
        ("slow student CE (alpha=0) == upstream forward loss", slow_student_matches_upstream),
        ("eval forward passes through to upstream; remove() restores", inference_passthrough),
        ("upstream generate with the patch (full mode, and pruned inference)", generate),
        ("transformers Trainer: 2 steps x 2 micro-steps with DualSpeedCallback", trainer_steps),
    ]


def run_checks(checks: List[Tuple[str, Callable[[], str]]]) -> int:
    """Run checks in order (a failure skips nothing but its own check); print PASS/FAIL; return failures."""
    failures = 0
    for name, check in checks:
        try:
            detail = check()
            print(f"PASS  {name}: {detail}", flush=True)
        except Exception as err:  # noqa: BLE001  (report every failure, keep going)
            failures += 1
            frame = traceback.extract_tb(err.__traceback__)[-1]
            print(f"FAIL  {name}: {type(err).__name__}: {err}\n      at {frame.filename}:{frame.lineno}", flush=True)
            if os.environ.get("CHECK_VERBOSE"):
                traceback.print_exc()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava-root", type=Path, required=True, help="exported upstream LLaVA tree (holds llava/)")
    parser.add_argument("--world", type=Path, default=REPO_ROOT / "playground" / "tiny", help="built tiny world")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    world = args.world if args.world.is_absolute() else Path.cwd() / args.world
    for sub in ("models/tiny-llama/config.json", "models/tiny-clip/model.safetensors"):
        if not (world / sub).is_file():
            raise SystemExit(f"--world {world}: missing {sub} (build it with playground/build_tiny_world.py)")
    arch, cls = import_upstream(args.llava_root)

    import torch
    import transformers

    print(f"llava from {Path(arch.__file__).parents[2]}; dualspeed_patch from {REPO_ROOT}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    failures = run_checks(make_checks(arch, cls, world))
    print(f"FAIL: {failures} check(s) failed" if failures else "PASS: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
