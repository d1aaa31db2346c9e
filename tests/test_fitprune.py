"""FitPrune (--vtp_method fitprune): recipe file and FLOPs model, fitting under a budget, and layer-wise pruning in
DualSpeed's fast mode on the tiny LLaVA (lengths per layer, text never dropped, labels aligned, batches,
gradient checkpointing)."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import dualspeed_patch.patch as patch
from dualspeed_patch import fitprune
from dualspeed_patch.config import DualSpeedArguments
from dualspeed_patch.fitprune import FitPruneRecipe
from dualspeed_patch.fitprune_recipe import fit_recipe, main as fit_main
from dualspeed_patch.isolator import get_isolator
from dualspeed_patch.layer_pruning import compact_index, cumsum_in_group, map_tokens, rank_in_group
from dualspeed_patch.llm_flops import LlmShape, flops_ratio, layer_flops, stack_flops
from dualspeed_patch.visual_attention import head_max_attention
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dualspeed_patch.pruners import registry
from dualspeed_patch.state import attach, state_of
from dualspeed_patch import step as ds_step
from dualspeed_patch import inputs as ds_inputs

from conftest import enable_dualspeed  # noqa: E402

L_ISO = 4
REMAINING = (40, 40, 20, 20)  # tiny LLaMA: 4 layers, 64 visual tokens; prunes after layers 0 and 2


@pytest.fixture
def recipe_path(tmp_path):
    path = tmp_path / "recipe.json"
    FitPruneRecipe(visual_tokens=64, remaining=REMAINING, flops_budget=0.6, flops_ratio=0.55).save(str(path))
    return path


@pytest.fixture
def fp_model(tiny_llava, patched, recipe_path):
    """Tiny LLaVA in training mode, DualSpeed on with FitPrune, fast mode on every step (slow ratio 0)."""
    return enable_dualspeed(tiny_llava, L_ISO, slow_ratio=0.0, vtp_method="fitprune", fitprune_recipe=str(recipe_path))


def make_batch(model, text_lengths=(9, 6), answer=3, seed=0):
    """Rows `[bos, q.., <image>, q.., answer..]` of different lengths, right-padded; the last `answer` tokens of each
    row are supervised."""
    g = torch.Generator().manual_seed(seed)
    width = max(text_lengths)
    ids = torch.zeros(len(text_lengths), width, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(text_lengths):
        tokens = torch.randint(3, 1000, (n,), generator=g)
        tokens[0] = 1
        tokens[2] = IMAGE_TOKEN_INDEX
        ids[row, :n] = tokens
        mask[row, :n] = 1
        labels[row, n - answer:n] = tokens[n - answer:]
    size = model.get_vision_tower().config.image_size
    images = torch.randn(len(text_lengths), 3, size, size, generator=g)
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)


def layer_input_lengths(model):
    """Hooks recording the sequence length entering each decoder layer; returns (lengths list, remove())."""
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
               for layer in model.get_model().layers]
    return seen, lambda: [h.remove() for h in handles]


# ------------------------------------------------------------------------------------ recipe, FLOPs, helpers

def test_recipe_validation_round_trip_and_scaling(tmp_path):
    with pytest.raises(ValueError, match=r"non-increasing.*layer 2 keeps 30 > 20"):
        FitPruneRecipe(visual_tokens=64, remaining=(40, 20, 30))
    with pytest.raises(ValueError, match=r"remaining\[0\] must be an integer in \[0, 64\], got 65"):
        FitPruneRecipe(visual_tokens=64, remaining=(65,))
    with pytest.raises(ValueError, match=r"remaining\[1\].*got 2.5"):
        FitPruneRecipe(visual_tokens=64, remaining=(3, 2.5))
    recipe = FitPruneRecipe(visual_tokens=576, remaining=(576, 300, 300, 57), flops_budget=0.5, flops_ratio=0.49,
                            info={"alpha": 0.25})
    assert recipe.pruning_layers() == frozenset({1, 3})
    assert recipe.keep(576, 1) == 300 and recipe.keep(1152, 3) == 114 and recipe.keep(100, 3) == 10  # 9.9 -> 10
    path = tmp_path / "r.json"
    recipe.save(str(path))
    assert FitPruneRecipe.load(str(path)) == recipe
    data = json.loads(path.read_text())
    data["format"] = "something-else"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a FitPrune recipe"):
        FitPruneRecipe.load(str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        FitPruneRecipe.load(str(tmp_path / "missing.json"))


def test_flops_model_by_hand():
    shape = LlmShape(hidden_size=4, intermediate_size=8, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=2)
    # per token: 2 * (4*4 + 2*4*2 + 4*4 + 3*4*8) = 2 * 144; attention 4 * 4 * n^2
    assert layer_flops(shape, 3) == 288 * 3 + 16 * 9
    assert stack_flops(shape, 2, 5, [1, 0]) == layer_flops(shape, 7) + layer_flops(shape, 3)
    assert flops_ratio(shape, 2, 5, [5, 5]) == 1.0
    assert flops_ratio(shape, 2, 5, [1, 1]) < flops_ratio(shape, 2, 5, [3, 3]) < 1.0
    with pytest.raises(ValueError, match="remaining has 1 entries, the model has 2 layers"):
        stack_flops(shape, 2, 5, [1])


def test_group_helpers():
    values = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2]])
    group = torch.tensor([[0, 0, 0, -1, 1, 1]])
    assert rank_in_group(values, group)[0, [0, 1, 2, 4, 5]].tolist() == [1, 2, 0, 0, 1]
    cums = cumsum_in_group(values, group)  # ascending within each group
    torch.testing.assert_close(cums[0, [0, 1, 2, 4, 5]], torch.tensor([0.6, 0.1, 1.5, 0.9, 0.2]))
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert compact_index(keep, 3).tolist() == [[0, 2, 3], [1, 1, 1]]


def test_config_requires_a_recipe_and_no_layer_skip():
    with pytest.raises(ValueError, match="fitprune.*needs fitprune_recipe"):
        DualSpeedArguments(vtp_method="fitprune")
    with pytest.raises(ValueError, match="cannot be combined with layer_skip_ratio"):
        DualSpeedArguments(vtp_method="FitPrune", fitprune_recipe="r.json", layer_skip_ratio=0.25)
    args = DualSpeedArguments(vtp_method="fitprune", fitprune_recipe="r.json")
    assert DualSpeedArguments.from_config(args.to_config_dict()) == args


def test_recipe_depth_must_match_model(tiny_llava, tmp_path):
    path = tmp_path / "short.json"
    FitPruneRecipe(visual_tokens=64, remaining=(32, 16, 8)).save(str(path))
    args = DualSpeedArguments(dualspeed=True, vtp_method="fitprune", fitprune_recipe=str(path))
    with pytest.raises(ValueError, match="recipe has 3 layers but the model has 4 decoder layers"):
        attach(tiny_llava, args)


# ------------------------------------------------------------------------------------ attention statistics

def test_head_max_attention_equals_eager_attention(tiny_llava):
    """The recomputed probabilities match the layer's own eager attention (rotary embedding, causal + padding mask)."""
    from transformers.masking_utils import create_causal_mask

    llm = tiny_llava.get_model()
    b = make_batch(tiny_llava)
    with torch.no_grad():
        _, _, mask, embeds, _ = ds_inputs.build_llm_inputs(tiny_llava, b["input_ids"], None, b["attention_mask"], None,
                                                       tiny_llava.encode_images(b["images"]), torch.tensor([64, 64]))
        positions = torch.arange(embeds.shape[1]).unsqueeze(0)
        cos, sin = llm.rotary_emb(embeds, position_ids=positions)
        layer = llm.layers[1]
        normed = layer.input_layernorm(embeds)
        attention = layer.self_attn
        previous = llm.config._attn_implementation
        llm.config._attn_implementation = "eager"
        try:
            eager_mask = create_causal_mask(llm.config, embeds, mask.bool(),
                                            None, position_ids=positions)
            _, weights = attention(hidden_states=normed, position_embeddings=(cos, sin), attention_mask=eager_mask)
        finally:
            llm.config._attn_implementation = previous
        ours = head_max_attention(attention.q_proj(normed), attention.k_proj(normed), cos, sin, mask.bool(),
                                  attention.head_dim, attention.scaling)
    real = mask.bool()
    rows = real.unsqueeze(2) & real.unsqueeze(1)
    torch.testing.assert_close(ours[rows], weights.amax(dim=1)[rows], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ fitting

def fit_batch(model):
    return make_batch(model, text_lengths=(12, 9, 10), answer=3, seed=3)


@pytest.mark.parametrize("budget", [0.5, 0.7])
def test_fit_recipe_respects_budget(tiny_llava, budget):
    recipe = fit_recipe(tiny_llava, fit_batch(tiny_llava), budget, alpha_tolerance=0.05, progress=False)
    n = tiny_llava.get_vision_tower().num_patches
    assert recipe.visual_tokens == n and recipe.num_layers == tiny_llava.config.num_hidden_layers
    assert all(isinstance(c, int) and 0 <= c <= n for c in recipe.remaining)
    assert all(a >= b for a, b in zip(recipe.remaining, recipe.remaining[1:]))
    shape = LlmShape.from_config(tiny_llava.config)
    ratio = flops_ratio(shape, recipe.info["text_tokens"], n, recipe.remaining)
    assert ratio == pytest.approx(recipe.flops_ratio) and ratio <= budget
    assert recipe.flops_budget == budget and 0.0 <= recipe.info["alpha"] <= 1.0


def test_fit_recipe_full_budget_and_unreachable_budget(tiny_llava):
    batch = fit_batch(tiny_llava)
    full = fit_recipe(tiny_llava, batch, 1.0, alpha_tolerance=0.25, progress=False)
    assert full.remaining == (64,) * 4 and full.flops_ratio == 1.0
    with pytest.raises(ValueError, match="flops_budget 0.05 is unreachable"):
        fit_recipe(tiny_llava, batch, 0.05, alpha_tolerance=0.25, progress=False)
    with pytest.raises(ValueError, match=r"flops_budget must be in \(0, 1\], got 1.5"):
        fit_recipe(tiny_llava, batch, 1.5, progress=False)


def test_fit_cli_writes_recipe_json(tiny_llava, tiny_tokenizer, tiny_world, tmp_path, capsys):
    checkpoint = tmp_path / "llava-tiny"
    tiny_llava.config.image_aspect_ratio = "pad"
    tiny_llava.save_pretrained(checkpoint)
    tiny_tokenizer.save_pretrained(checkpoint)
    records = [r for r in json.loads((tiny_world / "sft.json").read_text()) if "image" in r][:3]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    output = tmp_path / "out" / "recipe.json"
    fit_main(["--model-path", str(checkpoint), "--data-path", str(data), "--image-folder", str(tiny_world / "images"),
              "--num-samples", "2", "--flops-budget", "0.8", "--output", str(output), "--device", "cpu",
              "--alpha-tolerance", "0.1", "--no-progress"])
    saved = json.loads(output.read_text())
    assert saved["visual_tokens"] == 64 and saved["num_layers"] == 4 and saved["num_samples"] == 2
    assert saved["flops_ratio"] <= saved["flops_budget"] == 0.8
    assert saved["llm"]["hidden_size"] == 128 and saved["model_path"] == str(checkpoint)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("FitPrune recipe: budget 0.800 -> estimated LLM FLOPs ratio") and str(output) in line


# ------------------------------------------------------------------------------------ layer-wise pruning at run time

def test_each_pruning_layer_shrinks_the_sequence_by_the_recipe(fp_model):
    b = make_batch(fp_model, text_lengths=(9,))
    seen, remove = layer_input_lengths(fp_model)
    try:
        out = fp_model(**b)
    finally:
        remove()
    full = 8 + L_ISO + 64  # text without the placeholder + isolator + visual tokens
    assert seen == [full, full - 24, full - 24, full - 44]
    assert out.loss is not None and torch.isfinite(out.loss)
    modules = [m for layer in fp_model.get_model().layers
               for m in (layer, layer.self_attn.q_proj, layer.self_attn.k_proj)]
    hooks = [h for m in modules for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    assert not any("LayerPruning" in getattr(h, "__qualname__", "") for h in hooks)  # all removed after the step


def test_batch_of_two_with_different_text_lengths(fp_model):
    b = make_batch(fp_model, text_lengths=(11, 6))
    visual, lengths, _ = ds_inputs.visual_sequences(fp_model, state_of(fp_model), b["images"])
    seen, remove = layer_input_lengths(fp_model)
    try:
        hidden, labels, run = fitprune.pruned_llm_forward(fp_model, state_of(fp_model), b["input_ids"], b["attention_mask"], b["labels"],
                                                          visual, lengths)
    finally:
        remove()
    full = 10 + L_ISO + 64
    assert seen == [full, full - 24, full - 24, full - 44] and hidden.shape[1] == full - 44
    # each row keeps exactly 20 visual tokens of its image, all its text, isolator and padding
    assert run.tokens.visual.sum(1).tolist() == [20, 20]
    assert run.tokens.real.sum(1).tolist() == [10 + L_ISO + 20, 5 + L_ISO + 20]
    assert (labels != IGNORE_INDEX).sum(1).tolist() == [3, 3]
    assert torch.equal(labels[labels != IGNORE_INDEX], b["labels"][b["labels"] != IGNORE_INDEX])


def test_text_isolator_and_padding_are_never_dropped(fp_model):
    b = make_batch(fp_model, text_lengths=(11, 6))
    visual, lengths, _ = ds_inputs.visual_sequences(fp_model, state_of(fp_model), b["images"])
    with torch.no_grad():
        hidden, _, run = fitprune.pruned_llm_forward(fp_model, state_of(fp_model), b["input_ids"], b["attention_mask"], b["labels"],
                                                     visual, lengths)
        iso = torch.cat([get_isolator(fp_model)().unsqueeze(0).expand(2, -1, -1), visual], dim=1)
        _, _, mask, embeds, spliced = ds_inputs.build_llm_inputs(fp_model, b["input_ids"], None, b["attention_mask"],
                                                             b["labels"], iso, lengths + L_ISO)
    tokens = map_tokens(b["input_ids"], b["attention_mask"], spliced, lengths + L_ISO, iso.shape[1], L_ISO)
    for row in range(2):
        final = set(run.index[row][run.slot[row]].tolist())
        non_visual = set((~tokens.visual[row]).nonzero().flatten().tolist())
        assert non_visual <= final  # text (incl. answers), isolator rows, padding
        # the kept sets shrink layer by layer and contain only original positions
        after0 = set(run.kept[0][row][run.kept[0][row] >= 0].tolist())
        after2 = set(run.kept[2][row][run.kept[2][row] >= 0].tolist())
        assert final == after2 <= after0 and non_visual <= after2
        assert len(after0 - non_visual) == 40 and len(after2 - non_visual) == 20
    # isolator vectors sit right after the text before the image, in every row
    assert tokens.visual[:, 2 + L_ISO].all() and not tokens.visual[:, 2:2 + L_ISO].any()


def manual_reduced_run(model, b, run):
    """Reference: the decoder layers run by hand on the reduced sequence — after each pruning layer keep exactly the
    positions the pruned run kept — with original position ids; loss of the standard shifted cross-entropy."""
    from transformers.masking_utils import create_causal_mask

    llm = model.get_model()
    visual, lengths, _ = ds_inputs.visual_sequences(model, state_of(model), b["images"])
    iso = torch.cat([get_isolator(model)().unsqueeze(0).expand(visual.shape[0], -1, -1), visual], dim=1)
    _, _, mask, hidden, labels = ds_inputs.build_llm_inputs(model, b["input_ids"], None, b["attention_mask"], b["labels"],
                                                        iso, lengths + L_ISO)
    batch, length = mask.shape
    current = torch.arange(length).expand(batch, length)  # original positions present
    for number, layer in enumerate(llm.layers):
        positions = current
        real = mask.bool().gather(1, current)
        layer_mask = create_causal_mask(llm.config, hidden, real,
                                        None, position_ids=positions)
        hidden = layer(hidden, attention_mask=layer_mask, position_embeddings=llm.rotary_emb(hidden, positions),
                       position_ids=positions)
        if number in run.kept:
            kept = run.kept[number]
            assert (kept >= 0).all()  # equal visual drops per row: no empty slots
            local = torch.searchsorted(current.contiguous(), kept.contiguous())
            assert torch.equal(current.gather(1, local), kept)
            hidden = hidden.gather(1, local.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            current = kept
    logits = model.lm_head(llm.norm(hidden)).float()
    targets = labels.gather(1, current)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("text_lengths", [(9,), (11, 6)])
def test_loss_equals_hand_reduced_sequence(fp_model, text_lengths, monkeypatch):
    model = fp_model.eval()
    b = make_batch(model, text_lengths=text_lengths, seed=5)
    captured = {}
    original = fitprune.pruned_llm_forward

    def keep_run(*args, **kwargs):
        out = original(*args, **kwargs)
        captured["run"] = out[2]
        return out

    entry = registry.get_method("fitprune")
    monkeypatch.setitem(registry._METHODS, "fitprune", dataclasses.replace(entry, fn=keep_run))
    with torch.no_grad():
        loss = ds_step.in_llm_fast_loss(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
        reference = manual_reduced_run(model, b, captured["run"])
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_rows_losing_different_numbers_of_tokens_match_their_single_row_runs(fp_model):
    """An image row and a text-only row (no placeholder: nothing to prune) in one batch: the image row ends in masked
    empty slots; each row's loss equals running that row alone."""
    model = fp_model.eval()
    image_row = make_batch(model, text_lengths=(9,), seed=6)
    g = torch.Generator().manual_seed(8)
    text_ids = torch.randint(3, 1000, (1, 12), generator=g)
    text_ids[0, 0] = 1
    text_labels = torch.full_like(text_ids, IGNORE_INDEX)
    text_labels[0, -4:] = text_ids[0, -4:]
    width = image_row["input_ids"].shape[1] + 64  # any width >= both rows
    ids = torch.zeros(2, width, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    ids[0, :9], labels[0, :9], mask[0, :9] = image_row["input_ids"][0], image_row["labels"][0], 1
    ids[1, :12], labels[1, :12], mask[1, :12] = text_ids[0], text_labels[0], 1
    images = torch.cat([image_row["images"], torch.zeros_like(image_row["images"])])
    seen, remove = layer_input_lengths(model)
    with torch.no_grad():
        try:
            both = ds_step.in_llm_fast_loss(model, state_of(model), ids, mask, labels, images)
        finally:
            remove()
        alone_image = ds_step.in_llm_fast_loss(model, state_of(model), image_row["input_ids"], image_row["attention_mask"],
                                         image_row["labels"], image_row["images"])
        alone_text = model(input_ids=text_ids, labels=text_labels).loss  # no image: plain LLaVA on text
    full = 8 + L_ISO + 64
    assert seen == [full] * 4  # the text-only row (12 tokens + padding) keeps the batch width
    torch.testing.assert_close(both, (3 * alone_image + 4 * alone_text) / 7, rtol=1e-5, atol=1e-5)  # 3 + 4 answers


def test_training_forward_uses_fitprune_and_gradients_reach_projector_and_isolator(fp_model):
    b = make_batch(fp_model, text_lengths=(11, 6))
    out = fp_model(**b)
    with torch.no_grad():
        direct = ds_step.in_llm_fast_loss(fp_model.eval(), state_of(fp_model.eval()), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    fp_model.train()
    torch.testing.assert_close(out.loss, direct)
    out.loss.backward()
    assert get_isolator(fp_model).weight.grad.abs().sum() > 0
    assert fp_model.get_model().mm_projector[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_same_loss_and_gradients(fp_model, reentrant):
    b = make_batch(fp_model, text_lengths=(11, 6), seed=9)
    projector = fp_model.get_model().mm_projector[0].weight

    def step():
        fp_model.zero_grad(set_to_none=True)
        loss = fp_model(**b).loss
        loss.backward()
        return loss.detach(), projector.grad.clone()

    plain_loss, plain_grad = step()
    if hasattr(fp_model, "activation_checkpointing_enable"):  # the newer name of gradient_checkpointing_enable
        fp_model.activation_checkpointing_enable({"use_reentrant": reentrant})
        disable = fp_model.activation_checkpointing_disable
    else:
        fp_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        disable = fp_model.gradient_checkpointing_disable
    try:
        assert all(layer.gradient_checkpointing for layer in fp_model.get_model().layers)
        ckpt_loss, ckpt_grad = step()
    finally:
        disable()
    torch.testing.assert_close(ckpt_loss, plain_loss)
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_slow_step_teacher_prunes_inside_the_llm(fp_model):
    b = make_batch(fp_model, text_lengths=(11, 6), seed=2)
    seen, remove = layer_input_lengths(fp_model)
    try:
        loss, metrics = ds_step.slow_step(fp_model, state_of(fp_model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
    finally:
        remove()
    full = 10 + 64
    teacher = [full + L_ISO, full + L_ISO - 24, full + L_ISO - 24, full + L_ISO - 44]
    assert seen == teacher + [full] * 4  # teacher (pruned, isolator) then student (full tokens, no isolator)
    assert torch.isfinite(loss) and metrics["kl"] >= 0
    loss.backward()


def test_plain_forward_unchanged_after_a_fitprune_step(fp_model):
    b = make_batch(fp_model, text_lengths=(11, 6), seed=4)
    model = fp_model.eval()
    with torch.no_grad():
        before = model(**b).logits
        ds_step.in_llm_fast_loss(model, state_of(model), b["input_ids"], b["attention_mask"], b["labels"], b["images"])
        after = model(**b).logits
    assert torch.equal(before, after)


def test_lora_training_run_with_fitprune_and_gradient_checkpointing(tiny_world, tmp_path, recipe_path):
    """Two LoRA steps through `dualspeed_patch.train.train` (seed 0: step 0 slow, step 1 fast), batches mixing image and
    text-only samples (rows losing different numbers of tokens), with gradient checkpointing."""
    from dualspeed_patch.train import train
    from test_train_e2e import lora_args

    args = lora_args(tiny_world, tmp_path / "run", adapter="", steps=2, save_steps=100)
    i = args.index("--pretrain_mm_mlp_adapter")
    del args[i: i + 2]
    args += ["--dualspeed", "True", "--vtp_method", "fitprune", "--fitprune_recipe", str(recipe_path),
             "--slow_mode_ratio", "0.5", "--per_device_train_batch_size", "2", "--gradient_checkpointing", "True"]
    try:
        trainer = train(argv=args)
    finally:
        patch.remove()
    history = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    assert {"dualspeed/fast_ce", "dualspeed/slow_ce", "dualspeed/kl"} <= set(history)
    assert all(v == v for k, v in history.items() if k.startswith("dualspeed/"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dualspeed_vtp_method"] == "fitprune" and saved["dualspeed_fitprune_recipe"] == str(recipe_path)
