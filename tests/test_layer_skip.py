"""Fast-mode layer skipping (`dualspeed_patch.layer_skip`) and the `avgpool` token compressor."""
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import dualspeed_patch.patch as patch
from dualspeed_patch import DualSpeedArguments, kept_tokens
from dualspeed_patch.callback import DualSpeedMetrics
from dualspeed_patch.isolator import get_isolator
from dualspeed_patch.layer_skip import decoder_layers, num_skipped_layers, skip_layers, skipped_layers
from dualspeed_patch.modes import is_slow_step
from dualspeed_patch.pruners import (
    available_compressors,
    available_pruners,
    avgpool_compress,
    gather_kept,
    prune_indices,
    reduce_tokens,
    register_compressor,
)
from dualspeed_patch.pruners.avgpool import nearest_square_side
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dualspeed_patch.state import state_of

from conftest import enable_dualspeed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the skipped set (pure function)


@pytest.mark.parametrize("layers,ratio,expected", [
    (32, 0.0, 0), (32, 0.1, 3), (32, 0.25, 8), (32, 0.3, 10), (32, 0.5, 16), (10, 0.15, 2), (10, 0.25, 3),
    (4, 0.25, 1), (4, 0.5, 2), (4, 0.1, 0), (4, 0.125, 1),
])
def test_count_is_ratio_times_layers_rounded_half_up(layers, ratio, expected):
    assert num_skipped_layers(layers, ratio) == expected == math.floor(ratio * layers + 0.5)
    for schedule in ("random", "uniform"):
        assert len(skipped_layers(3, 5, 1, layers, ratio, schedule)) == expected


def test_too_large_ratio_and_bad_values_raise_naming_them():
    with pytest.raises(ValueError, match=r"layer_skip_ratio=0\.75 skips 3 of 4 .*\(at most 2\)"):
        num_skipped_layers(4, 0.75)
    with pytest.raises(ValueError, match="layer_skip_ratio"):
        DualSpeedArguments(layer_skip_ratio=1.0)
    with pytest.raises(ValueError, match="layer_skip_schedule"):
        DualSpeedArguments(layer_skip_schedule="sometimes")
    assert DualSpeedArguments(layer_skip_ratio=0.25, layer_skip_schedule="Uniform").layer_skip_ratio == 0.25


def test_random_schedule_is_pure_rank_stable_and_varies_with_the_step():
    sets = {(s, m): skipped_layers(0, s, m, 32, 0.25) for s in range(40) for m in range(2)}
    assert all(len(v) == 8 and 0 not in v and 31 not in v and list(v) == sorted(set(v)) for v in sets.values())
    assert len(set(sets.values())) == len(sets)  # a fresh subset per (step, micro-step)
    assert skipped_layers(1, 0, 0, 32, 0.25) != sets[(0, 0)]  # and per seed
    # Two simulated ranks: separate processes with different global RNG states compute the same sets.
    code = ("import random, torch; random.seed({r}); torch.manual_seed({r});"
            "from dualspeed_patch.layer_skip import skipped_layers;"
            "print([skipped_layers(0, s, m, 32, 0.25) for s in range(40) for m in range(2)])")
    outs = {subprocess.run([sys.executable, "-c", code.format(r=rank)], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout for rank in (0, 1)}
    assert outs == {f"{[sets[(s, m)] for s in range(40) for m in range(2)]}\n"}


def test_random_schedule_skips_every_interior_layer_equally_often():
    counts = torch.zeros(10)
    draws = 4000
    for s in range(draws):
        counts[list(skipped_layers(7, s, 0, 10, 0.2))] += 1  # 2 of the 8 interior layers per step
    assert counts[0] == counts[9] == 0
    p = 2 / 8
    sd = math.sqrt(draws * p * (1 - p))
    assert ((counts[1:9] - draws * p).abs() < 5 * sd).all(), counts


def test_uniform_schedule_is_fixed_and_evenly_spread():
    expected = (2, 6, 10, 14, 17, 21, 25, 29)  # 1 + floor((2i + 1) * 30 / 16)
    assert {skipped_layers(0, s, m, 32, 0.25, "uniform") for s in range(5) for m in range(2)} == {expected}
    assert skipped_layers(0, 0, 0, 4, 0.5, "uniform") == (1, 2)


# ------------------------------------------------------------------ skipping inside the tiny LLaVA


def batch(model):
    size = model.get_vision_tower().config.image_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7, 8, 9], [1, 10, 11, 12, 13, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2], dtype=torch.long)
    labels = torch.tensor([[IGNORE_INDEX] * 4 + [7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX,
                                                           IGNORE_INDEX]])
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)


def first_step(schedule, slow: bool) -> int:
    return next(s for s in range(100) if schedule.at(s).is_slow() == slow)


class CallLog:
    """Records which decoder layers run (forward pre-hooks) during a test."""

    def __init__(self, layers):
        self.calls = []
        self.handles = [layer.register_forward_pre_hook(lambda m, a, i=i: self.calls.append(i))
                        for i, layer in enumerate(layers)]

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def skip_model(tiny_llava, patched):
    model = enable_dualspeed(tiny_llava, isolator_len=4, slow_ratio=0.5)
    state_of(model).args.layer_skip_ratio = 0.5  # 4 layers -> skip 2 (both interior ones)
    state_of(model).metrics = DualSpeedMetrics()
    return model


def layer_grads(model):
    return [[p.grad for p in layer.parameters()] for layer in decoder_layers(model.get_model())]


def test_fast_step_skips_layers_and_they_get_no_gradient(skip_model):
    model = skip_model
    schedule = state_of(model).schedule
    schedule.at(first_step(schedule, slow=False))
    skipped = skipped_layers(schedule.seed, schedule.global_step, 0, 4, 0.5)
    assert skipped == (1, 2)
    log = CallLog(decoder_layers(model.get_model()))
    try:
        out = model(**batch(model))
    finally:
        log.close()
    assert log.calls == [0, 3]
    assert "layers" not in model.get_model().__dict__  # the shadow list is gone after the forward
    out.loss.backward()
    grads = layer_grads(model)
    assert all(g is None for i in skipped for g in grads[i])
    assert all(g is not None and g.abs().sum() > 0 for i in (0, 3) for g in grads[i])
    assert state_of(model).metrics.pop()["dualspeed/skipped_layers"] == 2.0


def test_random_single_layer_skip_follows_the_schedule(skip_model):
    model = skip_model
    state_of(model).args.layer_skip_ratio = 0.25  # skip 1 of the interior layers {1, 2}
    schedule, seen = state_of(model).schedule, set()
    fast_steps = [s for s in range(60) if not schedule.at(s).is_slow()][:10]
    for step in fast_steps:
        schedule.at(step)
        log = CallLog(decoder_layers(model.get_model()))
        try:
            with torch.no_grad():
                model(**batch(model))
        finally:
            log.close()
        (skip,) = skipped_layers(0, step, 0, 4, 0.25)
        assert log.calls == [i for i in range(4) if i != skip]
        seen.add(skip)
    assert seen == {1, 2}
    assert state_of(model).metrics.pop()["dualspeed/skipped_layers"] == 1.0


def test_slow_step_skips_nothing(skip_model):
    model = skip_model
    schedule = state_of(model).schedule
    schedule.at(first_step(schedule, slow=True))
    log = CallLog(decoder_layers(model.get_model()))
    try:
        out = model(**batch(model))
    finally:
        log.close()
    assert log.calls == [0, 1, 2, 3] * 2  # teacher, then student: all layers each
    out.loss.backward()
    assert all(g is not None for layer in layer_grads(model) for g in layer)
    assert "dualspeed/skipped_layers" not in state_of(model).metrics.pop()


def test_inference_never_skips(skip_model):
    model = skip_model.eval()
    log = CallLog(decoder_layers(model.get_model()))
    try:
        with torch.no_grad(), patch.visual_mode(model, patch.PRUNED):
            model(**batch(model))
    finally:
        log.close()
    assert log.calls == [0, 1, 2, 3]


def test_ratio_zero_is_bit_identical_to_no_skipping(skip_model):
    model = skip_model
    state_of(model).args.layer_skip_ratio = 0.0
    schedule = state_of(model).schedule
    schedule.at(first_step(schedule, slow=False))
    b = batch(model)
    with torch.no_grad():
        got = model(**b)
        with patch.visual_mode(model, patch.FAST):
            expected = type(model).forward.__wrapped__(model, **b)  # LLaVA's own forward on the fast-mode input
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.loss, expected.loss)
    assert "dualspeed/skipped_layers" not in state_of(model).metrics.pop()


class PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def test_skipped_layer_passes_hidden_states_unchanged(tiny_llava):
    backbone = tiny_llava.get_model()
    embeds = torch.randn(2, 9, tiny_llava.config.hidden_size, generator=torch.Generator().manual_seed(1))
    keys = list(tiny_llava.state_dict())
    with torch.no_grad():
        with skip_layers(backbone, (1, 2)):
            assert list(tiny_llava.state_dict()) == keys  # registered modules untouched
            got = backbone(inputs_embeds=embeds).last_hidden_state
        original = backbone.layers
        backbone.layers = nn.ModuleList([original[0], PassThrough(), PassThrough(), original[3]])
        try:
            expected = backbone(inputs_embeds=embeds).last_hidden_state
        finally:
            backbone.layers = original
        with pytest.raises(RuntimeError, match="boom"), skip_layers(backbone, (2,)):
            raise RuntimeError("boom")
    assert torch.equal(got, expected)
    assert "layers" not in backbone.__dict__ and len(backbone.layers) == 4
    with pytest.raises(ValueError, match=r"\[7\] out of range for 4"), skip_layers(backbone, (7,)):
        pass


def test_lora_with_gradient_checkpointing(skip_model):
    from peft import LoraConfig, get_peft_model

    model = skip_model
    model.activation_checkpointing_enable()
    model.enable_input_require_grads()
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model.get_model()))
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    lora.train()
    schedule = state_of(model).schedule
    schedule.at(first_step(schedule, slow=False))
    out = lora(**batch(model))
    out.loss.backward()
    for i, layer in enumerate(decoder_layers(model.get_model())):
        grads = {n: p.grad for n, p in layer.named_parameters() if "lora_" in n}
        assert len(grads) == 4
        if i in (1, 2):
            assert all(g is None for g in grads.values()), i
        else:  # lora_B starts at zero, so only B's gradient is non-zero after one step
            assert all(g is not None for g in grads.values()), i
            assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n), i


# ------------------------------------------------------------------ DeepSpeed ZeRO-3: skipped params get zeros

_ZERO3_SCRIPT = textwrap.dedent("""
    import json, os, torch, deepspeed
    from torch import nn
    from dualspeed_patch.layer_skip import clear_zero3_grad_buffer, skip_layers

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        def forward(self, x):
            for layer in self.layers:
                x = x + layer(x)
            return x.pow(2).mean()

    deepspeed.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    result = {}
    for clear in (False, True):
        model = Stack()
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                          config=config)
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        engine.backward(engine(x)); engine.step()                 # step 1: every layer has a gradient
        with deepspeed.zero.GatheredParameters(list(model.layers[1].parameters())):
            before = model.layers[1].weight.detach().clone()
        if clear:
            clear_zero3_grad_buffer(engine.optimizer)
        with skip_layers(model, [1]):
            loss = engine(x)
        engine.backward(loss); engine.step()                      # step 2: layer 1 skipped
        with deepspeed.zero.GatheredParameters(list(model.layers[1].parameters())):
            result[str(clear)] = (model.layers[1].weight.detach() - before).abs().max().item()
    print("RESULT " + json.dumps(result))
""")


def test_zero3_skipped_layer_gets_zero_gradient_after_clearing(tmp_path):
    """Single-process ZeRO-3 with plain SGD: after `clear_zero3_grad_buffer` a skipped layer does not move."""
    pytest.importorskip("deepspeed")
    script = tmp_path / "zero3_skip.py"
    script.write_text(_ZERO3_SCRIPT)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["True"] == 0.0  # zero gradient, plain SGD: unchanged
    # Without clearing, DeepSpeed 0.19 reuses layer 1's stale step-1 gradient (documented in docs/plugins.md).
    print("ZeRO-3 without clearing moved the skipped layer by", result["False"])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_lora_two_processes_with_layer_skipping(tiny_world, tmp_path):
    from test_distributed import DUALSPEED, torchrun
    from test_train_e2e import lora_args

    assert not all(is_slow_step(0, s, 0, 0.5) for s in range(3))  # seed 0: at least one fast step runs
    args = lora_args(tiny_world, tmp_path / "out", "unused", steps=3, save_steps=100)
    at = args.index("--pretrain_mm_mlp_adapter")
    del args[at: at + 2]  # a fresh projector is enough here
    proc = torchrun(args + DUALSPEED + ["--slow_mode_ratio", "0.5", "--layer_skip_ratio", "0.25",
                                        "--gradient_checkpointing", "True",
                                        "--deepspeed", str(REPO / "scripts/zero3.json")],
                    entry="dualspeed_patch/train_mem.py")
    log = proc.stdout + proc.stderr
    assert "fast steps skip 1 of 4 decoder layers (random)" in log
    assert re.search(r"'dualspeed/skipped_layers': '?1(\.0+)?'?[,}]", log), [l for l in log.splitlines() if "dualspeed/" in l]
    assert (tmp_path / "out" / "adapter_config.json").is_file()


# ------------------------------------------------------------------ avgpool compressor


def test_nearest_square_side():
    k = torch.arange(1, 2001)
    brute = torch.tensor([min(range(1, 46), key=lambda g: abs(g * g - int(v))) for v in k])
    assert torch.equal(nearest_square_side(k), brute)
    assert nearest_square_side(torch.tensor([58, 6, 2, 3, 12, 13])).tolist() == [8, 2, 1, 2, 3, 4]


def _bands(s: int, g: int):
    return [(i * s // g, (i + 1) * s // g) for i in range(g)]


@pytest.mark.parametrize("side,keep,g", [(24, 58, 8), (8, 6, 2), (5, 4, 2), (7, 10, 3), (6, 36, 6)])
def test_avgpool_grid_windows_are_hand_computed_means(side, keep, g):
    x = torch.randn(2, side * side, 5, generator=torch.Generator().manual_seed(side), requires_grad=True)
    tokens, mask = avgpool_compress(x, keep, grid_side=side)
    assert tokens.shape == (2, g * g, 5) and mask.all()
    grid = x.detach().view(2, side, side, 5)
    expected = torch.stack([grid[:, r0:r1, c0:c1].mean(dim=(1, 2))
                            for r0, r1 in _bands(side, g) for c0, c1 in _bands(side, g)], dim=1)
    torch.testing.assert_close(tokens, expected)
    tokens.sum().backward()
    assert (x.grad != 0).all()  # every token feeds exactly one window


def test_avgpool_1d_on_ragged_rows():
    x = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(2))
    valid = torch.arange(10).unsqueeze(0) < torch.tensor([[10], [7]])
    tokens, mask = avgpool_compress(x, torch.tensor([4, 3]), valid)
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]
    runs = [[(0, 2), (2, 5), (5, 7), (7, 10)], [(0, 2), (2, 4), (4, 7)]]  # floor(j * n / K)
    for b, row in enumerate(runs):
        for j, (lo, hi) in enumerate(row):
            torch.testing.assert_close(tokens[b, j], x[b, lo:hi].mean(0))


def test_avgpool_registry_and_dispatch():
    assert "avgpool" in available_compressors() and "avgpool" not in available_pruners()
    assert DualSpeedArguments(vtp_method="avgpool").vtp_method == "avgpool"
    with pytest.raises(ValueError, match="already a registered pruner"):
        register_compressor("divprune", avgpool_compress)
    x = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(3))
    tokens, mask = reduce_tokens("divprune", x, 3)
    indices, expected_mask = prune_indices("divprune", x, 3)
    assert torch.equal(tokens, gather_kept(x, indices)) and torch.equal(mask, expected_mask)
    tokens, mask = reduce_tokens("avgpool", x, 4, grid_side=4)
    torch.testing.assert_close(tokens[:, 0], x.view(2, 4, 4, 4)[:, :2, :2].mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="grid_side=5 does not match 16"):
        avgpool_compress(x, 4, grid_side=5)


def test_avgpool_fast_mode_input(tiny_llava, patched):
    model = enable_dualspeed(tiny_llava, isolator_len=4)
    state_of(model).args.vtp_method = "avgpool"
    b = batch(model)
    n = model.get_vision_tower().num_patches  # 8 x 8 grid in the tiny world
    k = kept_tokens(n, 0.9)
    g = nearest_square_side(torch.tensor(k)).item()
    assert (n, k, g) == (64, 6, 2)
    with torch.no_grad(), patch.visual_mode(model, patch.FAST):
        _, _, mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
            b["input_ids"], None, b["attention_mask"], None, b["labels"], b["images"])
        features = model.encode_images(b["images"][:1])
    assert mask.sum(1).tolist() == [6 + 4 + g * g, 5]
    torch.testing.assert_close(embeds[0, 2:6], get_isolator(model).weight)
    pooled = features.view(1, 8, 8, -1).unflatten(1, (2, 4)).unflatten(3, (2, 4)).mean(dim=(2, 4)).flatten(1, 2)
    torch.testing.assert_close(embeds[0, 6:6 + g * g], pooled[0])
    schedule = state_of(model).schedule
    schedule.at(first_step(schedule, slow=False))
    out = model(**b)
    out.loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
