"""LLaVATrainer: modality-grouped sampler, optimizer groups, trainable-state extraction, checkpoint files, resume."""
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn

from llava.train import checkpoint as ckpt
from llava.train.arguments import TrainingArguments
from llava.train.llava_trainer import (
    LengthGroupedSampler,
    LLaVATrainer,
    get_length_grouped_indices,
    modality_length_grouped_megabatches,
)

H = 8
PROJECTOR_KEYS = {f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


# ---------------------------------------------------------------- toy LLaVA-like model

class ToyInner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(5, H)
        self.mm_projector = nn.Sequential(nn.Linear(4, H), nn.GELU(), nn.Linear(H, H))
        self.mode_isolator = nn.Parameter(torch.randn(2, H))
        self.q_proj = nn.Linear(H, H)
        self.norm = nn.LayerNorm(H)


class ToyLlava(nn.Module):
    """Loss-returning model whose parameter names mimic LlavaLlamaForCausalLM's."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.config = transformers.PretrainedConfig(hidden_size=H)
        self.model = ToyInner()
        self.lm_head = nn.Linear(H, 1)

    def forward(self, feats, labels):
        h = self.model.mm_projector(feats) + self.model.mode_isolator.mean(0)
        h = self.model.norm(self.model.q_proj(h))
        return {"loss": ((self.lm_head(h).squeeze(-1) - labels) ** 2).mean()}


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(123)
        self.feats = torch.randn(n, 3, 4, generator=g)
        self.labels = torch.randn(n, 3, generator=g)
        self.modality_lengths = [5, -3, 7, -2, 4, 6, -8, 9][:n]

    def __len__(self):
        return len(self.feats)

    def __getitem__(self, i):
        return {"feats": self.feats[i], "labels": self.labels[i]}


def scramble_trainables(model: nn.Module, seed: int) -> nn.Module:
    """Same frozen base, different trainable weights: what a resume must overwrite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def lora_model(trainable_seed: int) -> nn.Module:
    model = get_peft_model(ToyLlava(0), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj"]))
    for name, p in model.named_parameters():
        if "mm_projector" in name or "mode_isolator" in name:
            p.requires_grad_(True)
    return scramble_trainables(model, trainable_seed)


def make_args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=2,
                learning_rate=1e-2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=100)
    base.update(kw)
    return TrainingArguments(**base)


def trainable(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.fixture
def isolator_file(monkeypatch):
    monkeypatch.setitem(ckpt.EXTRA_TRAINABLE_FILES, "mode_isolator.bin", ["mode_isolator"])


# ---------------------------------------------------------------- sampler

MIXED = [3, -4, 7, 1, -2, 9, 5, -6, 2, 8, -1, 4, 6, -3, 10, 11, -5, 12, 13, -7, 14, 15, 16]  # 16 image, 7 text


def test_megabatches_cover_every_index_once_and_never_mix_modalities():
    mbs = modality_length_grouped_megabatches(MIXED, batch_size=2, world_size=3, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(mbs).tolist()) == list(range(len(MIXED)))
    # 16 image -> 2 full + 4 left; 7 text -> 1 full + 1 left; leftovers last, image first
    assert [len(m) for m in mbs] == [6, 6, 6, 4, 1]
    signs = [{MIXED[i] > 0 for i in m.tolist()} for m in mbs]
    assert all(len(s) == 1 for s in signs)
    assert signs[-2:] == [{True}, {False}]


def test_megabatch_sorted_longest_first_and_balanced_across_ranks():
    # one megabatch of lengths 1..6, 3 ranks x 2: snake deal gives rank chunks (6,1) (5,2) (4,3) whatever the shuffle
    for seed in range(3):
        order = get_length_grouped_indices([1, 2, 3, 4, 5, 6], 2, 3, generator=torch.Generator().manual_seed(seed))
        assert order == [5, 0, 4, 1, 3, 2]


@pytest.mark.parametrize("lengths", [[5, 3, 9, 1, 2, 7, 4], [-5, -3, -9, -1, -2, -7, -4]])
def test_sampler_single_modality_dataset(lengths):
    order = list(LengthGroupedSampler(2, 2, lengths, group_by_modality=True, seed=1))
    assert sorted(order) == list(range(7))
    x = [abs(lengths[i]) for i in order]
    # full megabatch sorted a>=b>=c>=d is dealt to ranks as (a, d), (b, c); the 3 leftovers stay longest first
    assert x[0] >= x[2] >= x[3] >= x[1] and x[4] >= x[5] >= x[6]


def test_sampler_is_deterministic_per_seed_and_epoch_and_flat_chunks_are_single_modality():
    s = LengthGroupedSampler(2, 3, MIXED, group_by_modality=True, seed=7)
    a, b = list(s), list(s)
    assert a == b and len(s) == 23
    s.set_epoch(1)
    c = list(s)
    assert c != a and sorted(c) == list(range(23))
    for order in (a, c):
        for start in range(0, 18, 6):
            assert len({MIXED[i] > 0 for i in order[start:start + 6]}) == 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert list(LengthGroupedSampler(2, 3, MIXED, g1, True)) == list(LengthGroupedSampler(2, 3, MIXED, g2, True))


def test_zero_length_is_rejected():
    with pytest.raises(ValueError, match="sample 2 has length 0"):
        LengthGroupedSampler(1, 1, [3, -1, 0], group_by_modality=True)


def test_trainer_uses_modality_sampler(tmp_path):
    args = make_args(tmp_path, group_by_modality_length=True, gradient_accumulation_steps=3)
    trainer = LLaVATrainer(model=ToyLlava(0), args=args, train_dataset=ToyData())
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert (sampler.batch_size, sampler.world_size, sampler.group_by_modality) == (2, 3, True)
    assert sampler.lengths.tolist() == ToyData().modality_lengths


# ---------------------------------------------------------------- optimizer groups

def _group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_param_groups_split_multimodal_lr_and_weight_decay(tmp_path, monkeypatch):
    """The projector and every module registered as an extra trainable file (here a method's isolator) train at
    --mm_projector_lr; an unregistered module does not."""
    from llava.train import checkpoint

    for name in list(checkpoint.EXTRA_TRAINABLE_FILES):  # what other tests registered (restored afterwards)
        monkeypatch.delitem(checkpoint.EXTRA_TRAINABLE_FILES, name)
    model = ToyLlava(0)
    opt = LLaVATrainer(model=model, args=make_args(tmp_path, weight_decay=0.1, learning_rate=1e-3,
                                                   mm_projector_lr=2e-5), train_dataset=ToyData()).create_optimizer()
    assert "model.mode_isolator" in _group_names(model, opt)[0][0]  # not registered: the LLM's learning rate
    monkeypatch.setitem(checkpoint.EXTRA_TRAINABLE_FILES, "mode_isolator.bin", ["mode_isolator"])
    model = ToyLlava(0)
    model.model.image_newline = nn.Parameter(torch.zeros(H))
    model.lm_head.requires_grad_(False)
    args = make_args(tmp_path, weight_decay=0.1, learning_rate=1e-3, mm_projector_lr=2e-5)
    opt = LLaVATrainer(model=model, args=args, train_dataset=ToyData()).create_optimizer()
    assert _group_names(model, opt) == [
        (["model.embed_tokens.weight", "model.q_proj.weight"], 1e-3, 0.1),
        (["model.image_newline", "model.norm.bias", "model.norm.weight", "model.q_proj.bias"], 1e-3, 0.0),
        (["model.mm_projector.0.weight", "model.mm_projector.2.weight", "model.mode_isolator"], 2e-5, 0.1),
        (["model.mm_projector.0.bias", "model.mm_projector.2.bias"], 2e-5, 0.0),
    ]


def test_param_groups_drop_empty_and_default_without_mm_lr(tmp_path):
    model = ToyLlava(0)
    for n, p in model.named_parameters():
        p.requires_grad_("mm_projector" in n)
    opt = LLaVATrainer(model=model, args=make_args(tmp_path, weight_decay=0.1, mm_projector_lr=2e-5)).create_optimizer()
    assert _group_names(model, opt) == [
        (["model.mm_projector.0.weight", "model.mm_projector.2.weight"], 2e-5, 0.1),
        (["model.mm_projector.0.bias", "model.mm_projector.2.bias"], 2e-5, 0.0),
    ]
    model = ToyLlava(0)
    opt = LLaVATrainer(model=model, args=make_args(tmp_path, learning_rate=1e-3)).create_optimizer()
    assert [lr for _, lr, _ in _group_names(model, opt)] == [1e-3, 1e-3]
    assert sum(len(n) for n, _, _ in _group_names(model, opt)) == len(list(model.parameters()))


# ---------------------------------------------------------------- state extractors

PFX = "base_model.model.model."
FAKE = [
    (PFX + "layers.0.q_proj.base_layer.weight", False),
    (PFX + "layers.0.q_proj.base_layer.bias", False),
    (PFX + "layers.0.q_proj.lora_A.default.weight", True),
    (PFX + "layers.0.q_proj.lora_B.default.weight", True),
    (PFX + "layers.0.k_proj.bias", False),
    (PFX + "mm_projector.0.weight", True),
    (PFX + "mm_projector.0.bias", True),
    (PFX + "embed_tokens.weight", False),
]


def fake_params():
    return [(n, nn.Parameter(torch.full((2,), float(i)), requires_grad=g)) for i, (n, g) in enumerate(FAKE)]


def test_peft_state_by_bias_mode():
    lora = {PFX + "layers.0.q_proj.lora_A.default.weight", PFX + "layers.0.q_proj.lora_B.default.weight"}
    assert set(ckpt.get_peft_state_maybe_zero_3(fake_params(), "none")) == lora
    assert set(ckpt.get_peft_state_maybe_zero_3(fake_params(), "lora_only")) == lora | {PFX + "layers.0.q_proj.base_layer.bias"}
    assert set(ckpt.get_peft_state_maybe_zero_3(fake_params(), "all")) == lora | {
        PFX + "layers.0.q_proj.base_layer.bias", PFX + "layers.0.k_proj.bias", PFX + "mm_projector.0.bias"}
    with pytest.raises(ValueError, match="lora_bias"):
        ckpt.get_peft_state_maybe_zero_3(fake_params(), "some")


def test_non_lora_and_adapter_state_are_cpu_clones():
    params = fake_params()
    state = ckpt.get_peft_state_non_lora_maybe_zero_3(params)
    assert set(state) == {PFX + "mm_projector.0.weight", PFX + "mm_projector.0.bias"}
    assert torch.equal(state[PFX + "mm_projector.0.weight"], torch.tensor([5.0, 5.0]))
    with torch.no_grad():
        params[5][1].add_(1)
    assert torch.equal(state[PFX + "mm_projector.0.weight"], torch.tensor([5.0, 5.0]))
    everything = ckpt.get_peft_state_non_lora_maybe_zero_3(fake_params(), require_grad_only=False)
    assert len(everything) == 6 and not any("lora_" in k for k in everything)
    mm = ckpt.get_mm_adapter_state_maybe_zero_3(fake_params(), ["mm_projector"])
    assert set(ckpt.strip_peft_prefix(mm)) == {"model.mm_projector.0.weight", "model.mm_projector.0.bias"}


# ---------------------------------------------------------------- files

def test_save_mm_adapter_keys_and_safe_loading(tmp_path, isolator_file):
    model = ToyLlava(0)
    args = make_args(tmp_path)
    args.use_im_start_end = False
    ckpt.save_mm_adapter(model, tmp_path / "a", args)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "mm_projector.bin", "mode_isolator.bin"]
    state = torch.load(tmp_path / "a" / "mm_projector.bin", weights_only=True)
    assert set(state) == PROJECTOR_KEYS
    assert torch.equal(state["model.mm_projector.2.weight"], model.model.mm_projector[2].weight)
    assert set(ckpt.load_state_file(tmp_path / "a" / "mode_isolator.bin")) == {"model.mode_isolator"}
    args.use_im_start_end = True
    ckpt.save_mm_adapter(lora_model(0), tmp_path / "b", args)  # peft prefix stripped
    assert set(ckpt.load_state_file(tmp_path / "b" / "mm_projector.bin")) == PROJECTOR_KEYS | {"model.embed_tokens.weight"}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_state_file_formats_and_refusals(tmp_path):
    t = {"model.mm_projector.0.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(t, str(tmp_path / "w.safetensors"))
    torch.save(t, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.bin"):
        assert torch.equal(ckpt.load_state_file(tmp_path / name)["model.mm_projector.0.weight"], t["model.mm_projector.0.weight"])
    torch.save([torch.zeros(1)], tmp_path / "list.bin")
    with pytest.raises(ValueError, match="list.bin: expected a dict of tensors"):
        ckpt.load_state_file(tmp_path / "list.bin")
    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(pickle.UnpicklingError, match="evil.bin: refused by weights-only loading"):
        ckpt.load_state_file(tmp_path / "evil.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        ckpt.load_state_file(tmp_path / "missing.bin")
    with pytest.raises(KeyError, match="w.bin.*'nope'"):
        ckpt.load_trainables(ToyLlava(0), {"nope": torch.zeros(1)}, source=str(tmp_path / "w.bin"))


# ---------------------------------------------------------------- real trainer runs

def test_lora_run_checkpoints_and_resume(tmp_path, isolator_file):
    full = tmp_path / "full"
    model_a = lora_model(0)
    args = make_args(full, lora_enable=True, mm_projector_lr=5e-3, group_by_modality_length=True)
    LLaVATrainer(model=model_a, args=args, train_dataset=ToyData()).train()
    final_a = trainable(model_a)

    c2 = full / "checkpoint-2"
    files = {p.name for p in c2.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.bin", "config.json",
            "mode_isolator.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files
    assert json.loads((c2 / "trainer_state.json").read_text())["global_step"] == 2
    non_lora = ckpt.load_state_file(c2 / "non_lora_trainables.bin")
    assert set(non_lora) == {"base_model." + "model." + k for k in PROJECTOR_KEYS | {"model.mode_isolator"}}
    assert set(ckpt.load_state_file(c2 / "mode_isolator.bin")) == {"model.mode_isolator"}

    # loading the checkpoint into a differently initialised model restores projector and LoRA exactly
    model_b = lora_model(1)
    trainer_b = LLaVATrainer(model=model_b, args=make_args(tmp_path / "b", lora_enable=True), train_dataset=ToyData())
    trainer_b._load_from_checkpoint(str(c2))
    params_b = dict(model_b.named_parameters())
    for k, v in non_lora.items():
        assert torch.equal(params_b[k], v)
    assert params_b["base_model.model.model.mm_projector.0.weight"].requires_grad

    # resuming from step 2 ends exactly where the uninterrupted run ended
    model_c = lora_model(2)
    args_c = make_args(tmp_path / "c", lora_enable=True, mm_projector_lr=5e-3, group_by_modality_length=True)
    LLaVATrainer(model=model_c, args=args_c, train_dataset=ToyData()).train(resume_from_checkpoint=str(c2))
    final_c = trainable(model_c)
    assert set(final_c) == set(final_a)
    for k in final_a:
        assert torch.equal(final_c[k], final_a[k]), k


def test_pretraining_run_writes_projector_only_and_resumes(tmp_path, isolator_file):
    def pretrain_model(trainable_seed):
        model = ToyLlava(0)
        for n, p in model.named_parameters():
            p.requires_grad_("mm_projector" in n or "mode_isolator" in n)
        return scramble_trainables(model, trainable_seed)

    def pretrain_args(out):
        args = make_args(out, max_steps=2, save_steps=1, learning_rate=1e-2)
        args.tune_mm_mlp_adapter = True
        return args

    model_a = pretrain_model(0)
    trainer = LLaVATrainer(model=model_a, args=pretrain_args(tmp_path / "a"), train_dataset=ToyData())
    trainer.train()
    c1 = tmp_path / "a" / "checkpoint-1"
    files = {p.name for p in c1.iterdir()}
    assert {"mm_projector.bin", "mode_isolator.bin", "config.json", "optimizer.pt", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "training_args.bin"}
    assert set(torch.load(c1 / "mm_projector.bin", weights_only=True)) == PROJECTOR_KEYS

    trainer.save_model(str(tmp_path / "final"))
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["config.json", "mm_projector.bin", "mode_isolator.bin"]
    saved = ckpt.load_state_file(tmp_path / "final" / "mm_projector.bin")
    assert torch.equal(saved["model.mm_projector.0.weight"], model_a.model.mm_projector[0].weight)

    model_b = pretrain_model(5)
    LLaVATrainer(model=model_b, args=pretrain_args(tmp_path / "b"), train_dataset=ToyData()).train(
        resume_from_checkpoint=str(c1))
    final_a, final_b = trainable(model_a), trainable(model_b)
    assert set(final_a) == PROJECTOR_KEYS | {"model.mode_isolator"}
    for k in final_a:
        assert torch.equal(final_b[k], final_a[k]), k


DS_SCRIPT = r"""
import json, pathlib, sys
sys.path.insert(0, "tests")
import test_trainer as T
from llava.train import checkpoint as ckpt
out = pathlib.Path(sys.argv[1])
model = T.lora_model(0)
args = T.make_args(out, lora_enable=True, mm_projector_lr=5e-3, deepspeed="scripts/zero3.json", ddp_backend="gloo")
T.LLaVATrainer(model=model, args=args, train_dataset=T.ToyData()).train()
proj = dict(model.named_parameters())["base_model.model.model.mm_projector.0.weight"]
ckpt.save_lora_checkpoint(model, out / "final", args)
print("RESULT" + json.dumps({"partitioned": hasattr(proj, "ds_id") and proj.data.numel() == 0}))
"""


def test_zero3_cpu_run_gathers_partitioned_trainables(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
               WORLD_SIZE="1", LOCAL_RANK="0", PYTHONPATH=str(repo))
    run = subprocess.run([sys.executable, "-c", DS_SCRIPT, str(tmp_path)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT")[-1])
    assert result == {"partitioned": True}
    c2 = tmp_path / "checkpoint-2"
    assert {"non_lora_trainables.bin", "config.json", "adapter_model.safetensors", "global_step2"} <= {p.name for p in c2.iterdir()}
    shapes = {k: tuple(v.shape) for k, v in ckpt.load_state_file(c2 / "non_lora_trainables.bin").items()}
    assert shapes == {"base_model.model.model.mode_isolator": (2, H), "base_model.model.model.mm_projector.0.weight": (H, 4),
                      "base_model.model.model.mm_projector.0.bias": (H,), "base_model.model.model.mm_projector.2.weight": (H, H),
                      "base_model.model.model.mm_projector.2.bias": (H,)}
    final = ckpt.load_state_file(tmp_path / "final" / "non_lora_trainables.bin")
    last = ckpt.load_state_file(tmp_path / "checkpoint-4" / "non_lora_trainables.bin")
    assert set(final) == set(shapes) and all(torch.equal(final[k], last[k]) for k in final)
    assert not torch.equal(final["base_model.model.model.mm_projector.0.weight"],
                           ckpt.load_state_file(c2 / "non_lora_trainables.bin")["base_model.model.model.mm_projector.0.weight"])
